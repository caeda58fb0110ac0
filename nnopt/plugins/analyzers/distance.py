"""How far training moved the weights: ‖θ − θ₀‖ and ‖θ − θ₀‖/‖θ₀‖, overall and per layer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core import figure_style as fs


class DistanceParams(Params):
    to: WeightRef | None = Field(None, description="the reference θ₀: STAGE, STAGE@N or STAGE@init; None: the "
                                 "initialization of the analyzed stage (`from`@0, which that stage must keep)")
    include: Literal["parameters", "all"] = Field(
        "parameters", description="`parameters`: the trainable parameters; `all`: every floating tensor of the "
        "state dict (BatchNorm running statistics too)")


class Distance(Analyzer):
    """‖θ − θ₀‖₂ and the relative distance ‖θ − θ₀‖₂ / ‖θ₀‖₂ between the analyzed weights θ and
    a reference θ₀ (``to``), over all weights and per layer.

    How far training moves the weights from their initialization is the quantity behind the
    lazy / kernel regime (Jacot et al. 2018; Chizat, Oyallon & Bach 2019: in wide networks the
    relative change ‖θ_T − θ₀‖/‖θ₀‖ vanishes as the width grows) and behind distance-based
    generalization bounds (Nagarajan & Kolter 2019). Reported: ``distance`` and ``relative``
    over everything, ``norm`` ‖θ‖ and ``ref_norm`` ‖θ₀‖; ``layers``: the same per module
    (the tensors sharing a name prefix, e.g. ``linear1.weight`` and ``linear1.bias``), and
    ``tensors`` per tensor. All in float64. A relative distance to a zero reference is inf
    (or NaN when the distance is 0 too); it is reported as such.
    """

    Params: ClassVar[type[DistanceParams]] = DistanceParams
    cache_version: ClassVar[int] = 1

    params: DistanceParams

    @staticmethod
    def _init_of_source(ctx: AnalysisContext) -> str:
        if ctx.source is None:
            raise StageError("distance: give `to` (the reference weights): the analyzed model was not loaded from a "
                             "stage, so it has no initialization to default to")
        stage = ctx.source.split("@", 1)[0]
        if ctx.kept_steps is None or 0 not in ctx.kept_steps(stage):
            raise StageError(f"distance: `to` defaults to {stage}@0, and stage '{stage}' does not keep step 0; add 0 to "
                             f"stages.{stage}.keep, or give `to`")
        return f"{stage}@0"

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        from .weight_paths import check_same_tensors, float_state

        p = self.params
        if ctx.load_model is None:
            raise StageError("distance: this context cannot load the weights of `to` (use the analyzer in an analyze "
                             "stage or in a train stage's track)")
        to = str(p.to) if p.to is not None else self._init_of_source(ctx)
        names = set(dict(ctx.model.named_parameters())) if p.include == "parameters" else None
        theta = {k: v for k, v in float_state(ctx.model).items() if names is None or k in names}
        ref = {k: v for k, v in float_state(ctx.load_model(to)).items() if names is None or k in names}
        check_same_tensors(theta, ref, "the analyzed model", to, "distance")

        def stats(keys: list[str]) -> dict[str, float]:
            d = sum(float((theta[k].double() - ref[k].double()).pow(2).sum()) for k in keys)
            n = sum(float(theta[k].double().pow(2).sum()) for k in keys)
            r = sum(float(ref[k].double().pow(2).sum()) for k in keys)
            d, n, r = math.sqrt(d), math.sqrt(n), math.sqrt(r)
            return {"distance": d, "relative": _ratio(d, r), "norm": n, "ref_norm": r}

        keys = list(theta)
        layers: dict[str, list[str]] = {}
        for k in keys:
            layers.setdefault(k.rsplit(".", 1)[0] if "." in k else k, []).append(k)
        return {
            "to": to,
            "include": p.include,
            **stats(keys),
            "layers": {layer: stats(ks) for layer, ks in layers.items()},
            "tensors": {k: stats([k]) for k in keys},
        }

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        layers = results.get("layers") or {}
        names = [n for n, s in layers.items() if isinstance(s.get("relative"), (int, float)) and math.isfinite(s["relative"])]
        if not names:
            return []
        fig, ax = new_figure(max(4.0, 0.5 * len(names) + 2.0), 4.0)
        ax.bar(range(len(names)), [layers[n]["relative"] for n in names], color=fs.BLUE)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(r"$\|\theta - \theta_0\| / \|\theta_0\|$")
        rel = results.get("relative")
        ax.set_title(f"distance to {results.get('to')}: overall {rel:.3g}" if isinstance(rel, (int, float))
                     else f"distance to {results.get('to')}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        return [save(fig, Path(out_dir) / "distance.png")]

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save

        steps = [s for s, _ in series]
        xs, ys = finite_pairs(steps, [r.get("relative") for _, r in series])
        if not ys:
            return []
        fig, ax = new_figure(6.4, 4.0)
        ax.plot(xs, ys, marker="o", markersize=3, label="overall")
        layer_names = list((series[-1][1].get("layers") or {}))
        for name in layer_names:
            lx, ly = finite_pairs(steps, [(r.get("layers") or {}).get(name, {}).get("relative") for _, r in series])
            if ly:
                ax.plot(lx, ly, linewidth=0.8, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(r"$\|\theta - \theta_0\| / \|\theta_0\|$")
        ax.set_title(f"distance to {series[-1][1].get('to')}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "distance.png")]


def _ratio(d: float, r: float) -> float:
    if r > 0:
        return d / r
    return math.nan if d == 0 else math.inf
