"""The ``diagnose`` stage: why a train stage's network will not train, with evidence, and the
fixes tried.

``{kind: diagnose, of: train}`` examines what the train stage ``of`` would do, without
training it: the stage is a block whose expansion copies ``of``'s configuration (its own
keys, and its ``from``/``seed``/``data``/``model``/``loss``) into the generated stage, so the
diagnosis is keyed by exactly that configuration and reruns only when it changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any, ClassVar

from pydantic import Field

from nnopt.core.component import DatasetRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext
from nnopt.core.loop import BackwardStep, LoopCallback
from nnopt.core.model_spec import ModelSpec
from nnopt.core.rebuild import resolved, written
from nnopt.core.spec import ExpansionError
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec, json_safe

from ..analyzers.hvp import analysis_mode
from ..diagnosis import findings as vocabulary
from ..diagnosis.findings import Change, Finding, Setup
from ._common import derived_generator, seed_everything
from .train import Train, TrainSpec

_STREAM = 7  # the diagnosis's own random stream (subsets, probe vectors), apart from training's
#: keys of the train stage that the diagnosis's key inherits through `from`/the pipeline
_INHERITED = ("from", "seed", "data", "model", "loss")


class DiagnoseSpec(StageSpec):
    """``kind: diagnose``: which train stage to examine, and how long each probe runs."""

    of: str = Field(..., description="id of the train stage to diagnose (its configuration is copied into this stage)")
    probe_steps: int = Field(200, ge=10, le=100_000, description="optimizer steps of the short training probe (at most "
                             "the train stage's own length), with the stage's own schedule as it runs in those steps")
    examples: int = Field(512, ge=16, le=65_536, description="examples of the train split used by the curvature and "
                          "initialization measurements")
    lr_range: bool = Field(True, description="run Smith's learning-rate range test (an exponential sweep of the rate)")
    lr_range_steps: int = Field(100, ge=10, le=10_000, description="steps of the range test")
    fixes: int = Field(3, ge=0, le=10, description="how many recommendations (most severe first) are tried: the patched "
                       "configuration gets the same probe, and the fix is `verified` only when it measurably helped")
    train: TrainSpec | None = Field(None, description="set by the expansion: the configuration of `of` (do not write it)")
    locations: dict[str, list[str]] | None = Field(
        None, json_schema_extra={"affects_results": False},
        description="set by the expansion: where `of`'s model, data and own keys are written in the file (for patches)")


class Diagnose(Stage):
    """A diagnosis of one train stage, in the manner of a physician's examination (Cockpit,
    Schneider et al. 2021, shows such instruments; this stage reads them).

    1. **At initialization** (``diagnosis.at_init``): per-layer forward second moments against
       the mean-field length map and the phase χ₁ = σ_w² E[φ'(h)²] (Poole et al. 2016,
       Schoenholz et al. 2017; survey §4.2), per-layer gradient norms (survey §4.1), the
       input–output Jacobian's singular values (Pennington et al. 2017), dead ReLUs and
       saturated tanh/sigmoid units, and the initial loss against that of a uniform prediction.
    2. **Curvature against the step** (``diagnosis.curvature``): the top Hessian eigenvalue λ by
       Lanczos at initialization, and after the probe, against the optimizer's quadratic
       stability bound (2/η for GD, 2(1+β)/η with momentum, (2+2β₁)/((1−β₁)η) on the
       preconditioned Hessian for Adam: Cohen et al. 2021, 2022).
    3. **A short training probe**: the train stage itself (``train``'s code, with its schedule
       as it runs), stopped after ``probe_steps``, watching the loss, the update-to-weight
       ratio per layer and the normalization statistics (``diagnosis.probe_callbacks``), and
       the gradient-noise scale B_simple = tr Σ/|G|² (McCandlish et al. 2018).
    4. **A learning-rate range test** (Smith 2017; ``diagnosis.lr_range``).

    The measurements are read by the checks of ``diagnosis.findings`` (a documented vocabulary
    of ids, docs/diagnose.md) into findings ranked by severity, each with its evidence, the
    field's explanation, a recommendation and a patch. The ``fixes`` most severe patches are
    tried: the patched configuration is measured by the same probe, and ``before``/``after``
    give the probe's final train loss, whether it diverged and the flagging instrument;
    ``verified`` is true only when the fix measurably helped (``helped``: no divergence where
    there was one, or the final loss lower by 5% and by 1% of the first loss, without
    diverging).

    Results: ``findings`` (each ``id, severity, title, evidence, explanation,
    recommendation, patch, verified, before, after``; ``patch`` as ``{path, value}`` in the
    pipeline file, value null = delete the key), ``healthy`` (no critical or warning
    finding), ``setup``, ``evidence``, ``timings``. Plots: ``init_signals.png``,
    ``lr_range.png``, ``probe_loss.png`` (the probe and every tried fix).
    """

    Params: ClassVar[type[DiagnoseSpec]] = DiagnoseSpec
    cache_version: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model", "loss"})

    params: DiagnoseSpec

    # ---------------------------------------------------------------- expansion
    @classmethod
    def expand(cls, stage_id: str, raw_spec: dict[str, Any], all_stages: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
        for key in ("train", "locations"):
            if key in raw_spec:
                raise ExpansionError(f"'{key}' is filled in from stage '{raw_spec.get('of')}'; do not write it", (key,))
        target_id = raw_spec["of"]
        target = all_stages.get(target_id)
        if target is None:
            known = ", ".join(sorted(s for s, v in all_stages.items() if isinstance(v, dict) and v.get("kind") == "train"))
            raise ExpansionError(f"no stage '{target_id}' to diagnose (train stages: {known or 'none'})", ("of",))
        if not isinstance(target, dict) or target.get("kind") != "train":
            kind = target.get("kind") if isinstance(target, dict) else None
            raise ExpansionError(f"stage '{target_id}' is a {kind or 'malformed'} stage; diagnose examines a train stage",
                                 ("of",))
        out = {k: v for k, v in raw_spec.items()}
        for key in _INHERITED:
            if key in target and key not in raw_spec:
                out[key] = target[key]
        out["train"] = {k: v for k, v in target.items() if k not in _INHERITED}
        out["locations"] = {"train": ["stages", target_id], **{part: _written_at(part, target_id, all_stages)
                                                               for part in ("model", "data", "loss")}}
        return {stage_id: out}

    @classmethod
    def origin(cls, stage_id: str, raw_spec: dict[str, Any], generated_id: str, key: str) -> tuple[Any, ...]:
        if key == "train" or (key in _INHERITED and key not in raw_spec):
            return ("stages", raw_spec["of"]) + (() if key == "train" else (key,))
        return super().origin(stage_id, raw_spec, generated_id, key)

    # ---------------------------------------------------------------- report
    @classmethod
    def report_blocks(cls, result: dict[str, Any], stage_dir: Any, pipeline_file: str | None) -> list[Any] | None:
        """The diagnosis in ``nnopt report``: the findings table (severity, id, verified,
        probe loss before → after), then each finding's explanation, fix and the diff of the
        pipeline file it makes (when the file is still readable; else the patch's keys)."""
        from pathlib import Path

        from nnopt.core.report_render import Details, Heading, KeyValues, Para, Table

        from ..diagnosis.patch_diff import diffs_of

        res = result.get("results") or {}
        rows = res.get("findings") or []
        text = None
        if pipeline_file and Path(pipeline_file).is_file():
            text = Path(pipeline_file).read_text(encoding="utf-8", errors="replace")
        diffs = diffs_of(text, pipeline_file, rows) if text is not None else {}
        verdict = ("healthy: no critical or warning finding" if res.get("healthy") else
                   f"{sum(r.get('severity') in vocabulary.SEVERE for r in rows)} problem(s) found")
        out: list[Any] = [Heading(4, f"diagnosis of stage {res.get('of')}"), Para(verdict)]
        if rows:
            out.append(Table(["#", "severity", "finding", "what", "fix tried", "verified", "probe loss before → after"],
                             [[i, r.get("severity"), r.get("id"), r.get("title"), "yes" if r.get("tried") else "no",
                               "yes" if r.get("verified") else "no", _before_after(r)] for i, r in enumerate(rows, 1)]))
        for r in rows:
            out.append(Heading(4, f"{r.get('id')} ({r.get('severity')})"))
            out.append(Para(str(r.get("explanation", ""))))
            out.append(Para("Fix: " + str(r.get("recommendation", ""))))
            numbers = {k: v for k, v in (r.get("evidence") or {}).items() if isinstance(v, (int, float, str)) and k != "plot"}
            if numbers:
                out.append(KeyValues(numbers))
            if r.get("id") in diffs:
                out.append(Details(f"the fix as a change of {Path(pipeline_file).name}", diffs[r["id"]]))
            elif r.get("patch"):
                out.append(Details("the fix as keys of the pipeline file",
                                   "\n".join(f"{c['path']}: {c['value']}" for c in r["patch"])))
        timings = res.get("timings") or {}
        if timings:
            out.append(Details("time per instrument (s)", "\n".join(f"{k}: {v:.2f}" for k, v in timings.items()
                                                                   if isinstance(v, (int, float)))))
        return out

    # ---------------------------------------------------------------- run
    def run(self, ctx: StageContext) -> StageOutcome:
        spec = self.params
        if spec.train is None:
            raise StageError("diagnose: the stage was not expanded (write it as {kind: diagnose, of: STAGE})")
        started = time.perf_counter()
        examination = Examination(ctx, spec)
        before = examination.measure(spec.train, ctx.model_spec, ctx.data_ref, "probe", full=True)
        found = vocabulary.diagnose(before.evidence, before.setup, on_error=examination.note_error)
        tried = examination.try_fixes(found, before)
        examination.plot(before, tried)
        rows = [examination.row(f, tried.get(f.id)) for f in found]
        locations = spec.locations or {}
        results = {
            "findings": rows,
            "healthy": vocabulary.healthy(found),
            "of": spec.of,
            "setup": asdict(before.setup),
            "evidence": before.evidence,
            "locations": locations,
            "errors": examination.errors,
            "timings": {**before.timings, "total": time.perf_counter() - started},
        }
        top = rows[0] if rows else None
        message = (f"healthy: no critical or warning finding for '{spec.of}'" if results["healthy"] else
                   f"{sum(r['severity'] in vocabulary.SEVERE for r in rows)} finding(s); top: {top['id']} ({top['severity']})")
        return StageOutcome(results=json_safe(results), message=message)


def _written_at(part: str, stage_id: str, stages: dict[str, Any]) -> list[str]:
    """Where ``part`` (model/data/loss) of ``stage_id`` is written: its own key, that of the
    stage its ``from`` names (recursively), else the pipeline's top-level key."""
    seen: set[str] = set()
    sid: str | None = stage_id
    while sid is not None and sid not in seen and isinstance(stages.get(sid), dict):
        seen.add(sid)
        raw = stages[sid]
        if part in raw:
            return ["stages", sid, part]
        parent = raw.get("from")
        sid = parent.split("@")[0] if isinstance(parent, str) else None
    return [part]


class _Measured:
    """One configuration's measurements: the checks' ``evidence`` and ``setup``."""

    def __init__(self, evidence: dict[str, Any], setup: Setup, timings: dict[str, float], curve: list):
        self.evidence, self.setup, self.timings, self.curve = evidence, setup, timings, curve


class _Capture(LoopCallback):
    """Keeps the loop's model and optimizer: the curvature after the probe is measured on
    the trained model, preconditioned by Adam's state."""

    def __init__(self) -> None:
        self.optimizer: Any = None
        self.model: Any = None

    def on_train_start(self, loop: Any) -> None:
        self.optimizer, self.model = loop.optimizer, loop.model


class _StopAt(LoopCallback):
    """Stops training at step ``n`` (at the evaluation scheduled there): the probe runs the
    stage's own schedule for its full length, so its first n steps are the real run's."""

    def __init__(self, n: int):
        self.n = n

    def on_evaluate(self, loop: Any, metrics: dict[str, float]) -> None:
        if loop.step >= self.n:
            loop.request_stop()


class _Probe(Train):
    """The train stage with the diagnosis's instruments as extra loop callbacks."""

    def __init__(self, params: TrainSpec, stop_at: int):
        super().__init__(params)
        self.stop_at = stop_at
        self.instruments: dict[str, Any] = {}

    def callbacks(self, ctx: StageContext, model: Any, loss_fn: Any, device: Any) -> list[LoopCallback]:
        from ..diagnosis.probe_callbacks import LossWatch, NormStats, UpdateRatio

        self.instruments = {"loss": LossWatch(), "update_ratio": UpdateRatio(model, every=max(1, self.stop_at // 20)),
                            "norm_stats": NormStats(model, every=max(1, self.stop_at // 4)), "capture": _Capture()}
        return [*super().callbacks(ctx, model, loss_fn, device), *self.instruments.values(), _StopAt(self.stop_at)]


class Examination:
    """The measurements of one diagnosis and of its patched configurations."""

    def __init__(self, ctx: StageContext, spec: DiagnoseSpec):
        self.ctx, self.spec = ctx, spec
        self.errors: list[str] = []

    def note_error(self, check: Any, err: Exception) -> None:
        self.errors.append(f"check {check.id}: {type(err).__name__}: {err}")

    # ------------------------------------------------------------ measuring
    def measure(self, train: TrainSpec, model_spec: ModelSpec, data_ref: Any, name: str, full: bool) -> _Measured:
        """Every instrument on one configuration; ``name`` is its directory in the stage.
        ``full=False`` (a fix tried) leaves out what no finding's before/after reads: the range
        test, the noise scale and the curvature after the probe."""
        import torch

        from ..diagnosis import at_init, curvature, noise_scale

        ctx, spec = self.ctx, self.spec
        timings: dict[str, float] = {}
        sub = ctx.child(name, train, model=model_spec, data=data_ref)
        seed_everything(ctx.seed)
        data = sub.load_data()
        loss_fn = sub.loss_fn()
        model = sub.load_model(train.from_) if train.from_ is not None else sub.build_model()
        device = torch.device(ctx.device)
        generator = derived_generator(ctx.seed, _STREAM)
        x, y = _subset(data, spec.examples, generator)
        opt = train.optimizer.instantiate()
        setup = _setup(train, model_spec, data, model, opt, int(sub.batch_size))
        evidence: dict[str, Any] = {}

        # Normalization layers' running statistics are meaningless at initialization (mean 0,
        # variance 1, whatever the data): measured in eval mode with them, a BatchNorm net looks
        # exploding. Re-estimate them over the examples first (restored after), so that eval
        # mode normalizes as training's batch statistics do.
        with analysis_mode(model, "recompute", x, max(2, min(setup.batch_size, int(x.shape[0])))):
            t = time.perf_counter()
            model.eval()
            actx = AnalysisContext(model=model, loss_fn=loss_fn, data=data, device=device, generator=generator,
                                   model_spec=model_spec)
            evidence["at_init"] = self._guard("at_init", lambda: at_init.measure_at_init(actx, samples=min(256, spec.examples)))
            setup.depth = _depth(evidence["at_init"], setup.depth)
            timings["at_init"] = time.perf_counter() - t

            t = time.perf_counter()
            threshold = curvature.stability_threshold(train.optimizer.name, opt.params.model_dump())
            at0 = self._guard("curvature", lambda: curvature.top_eigenvalue(model, loss_fn, x, y, generator))
            evidence["curvature"] = {"threshold": threshold, "at_init": at0,
                                     "at_init_ratio": _ratio(at0, threshold)}
            timings["curvature"] = time.perf_counter() - t

            if full:
                t = time.perf_counter()
                batch = max(1, min(setup.batch_size, setup.n_train))
                big = min(setup.n_train // 8, 8 * batch)
                evidence["noise_scale"] = (self._guard("noise_scale", lambda: noise_scale.gradient_noise_scale(
                    model, loss_fn, data.x_train, data.y_train, generator, small_batch=max(1, big // 8), big_batch=big))
                    if big >= 8 else {"skipped": "too few examples for two batch sizes"})
                timings["noise_scale"] = time.perf_counter() - t

        if full and spec.lr_range:
            t = time.perf_counter()
            evidence["lr_range"] = self._lr_range(model, opt, loss_fn, data, setup, generator, device)
            timings["lr_range"] = time.perf_counter() - t

        t = time.perf_counter()
        probe, trained = self._probe(sub, train, setup)
        evidence["probe"] = probe
        timings["probe"] = time.perf_counter() - t
        if trained is not None and probe["status"] == "ok":
            t = time.perf_counter()
            trained_model, optimizer = trained
            trained_model.eval()
            if full:
                pre = curvature.adam_preconditioner(optimizer, trained_model) if threshold.get("preconditioned") else None
                after = self._guard("curvature after the probe", lambda: curvature.top_eigenvalue(
                    trained_model, loss_fn, x, y, generator, preconditioner=pre))
                evidence["curvature"]["after_probe"] = after
                evidence["curvature"]["after_probe_ratio"] = _ratio(after, threshold)
            actx2 = AnalysisContext(model=trained_model, loss_fn=loss_fn, data=data, device=device, generator=generator,
                                    model_spec=model_spec)
            evidence["after_probe"] = {"units": self._guard("units after the probe", lambda: at_init.measure_units(
                actx2, samples=min(256, spec.examples)))}
            timings["after_probe"] = time.perf_counter() - t
        return _Measured(json_safe(evidence), setup, timings, probe.get("loss", {}).get("curve", []))

    def _guard(self, what: str, compute: Any) -> dict[str, Any]:
        """An instrument that fails (a model it does not support) is skipped with its reason:
        the other instruments still diagnose."""
        try:
            return compute()
        except StageError as err:
            return {"skipped": str(err)}
        except (RuntimeError, ValueError, NotImplementedError) as err:
            self.errors.append(f"{what}: {type(err).__name__}: {err}")
            return {"skipped": f"{type(err).__name__}: {err}"}

    def _lr_range(self, model: Any, opt: Any, loss_fn: Any, data: Any, setup: Setup, generator: Any, device: Any) -> dict:
        from ..diagnosis import lr_range

        if opt.needs_closure or type(opt.step_rule()) is not BackwardStep:
            return {"skipped": f"optimizer '{setup.optimizer}' computes its own steps; the range test sets the rate of a "
                               "plain-backward optimizer"}
        result = self._guard("lr_range", lambda: lr_range.lr_range_test(
            model, lambda params: opt.build(params, device), loss_fn, data.x_train, data.y_train,
            max(1, min(setup.batch_size, setup.n_train)), generator, lr_min=setup.lr * 1e-3, lr_max=setup.lr * 1e3,
            steps=self.spec.lr_range_steps))
        result["lr"] = setup.lr
        return result

    def _probe(self, sub: StageContext, train: TrainSpec, setup: Setup) -> tuple[dict[str, Any], Any]:
        n = min(self.spec.probe_steps, setup.steps)
        probe_spec = train.model_copy(update={"keep": [], "keep_optimizer": False, "track": [], "early_stop": None,
                                              "eval_every": n, "checkpoint_every": None, "log_every": max(1, n // 50)})
        stage = _Probe(probe_spec, n)
        outcome = stage.run(sub)
        sub.close()
        ins = stage.instruments
        loss = ins["loss"].summary(n) if "loss" in ins else {}
        updates = ins["update_ratio"].summary() if "update_ratio" in ins else {}
        first_update = None
        if "update_ratio" in ins and ins["update_ratio"].records:
            values = [v for v in ins["update_ratio"].records[0]["ratios"].values() if math.isfinite(v)]
            first_update = sorted(values)[len(values) // 2] if values else None
        curve = loss.get("curve", [])
        early = [l for s, l in curve if s <= max(1, n // 10)]
        first = loss.get("first_loss")
        probe = {
            "steps": n,
            "status": outcome.status,
            "diverged": 1.0 if outcome.status == "diverged" else 0.0,
            "diverged_at": outcome.metrics.get("diverged_at_step") if outcome.status == "diverged" else None,
            "last_finite_loss": outcome.metrics.get("last_finite_loss"),
            "final_train_loss": outcome.metrics.get("train_loss") if outcome.status == "ok" else math.inf,
            "final_test_loss": outcome.metrics.get("test_loss"),
            "final_test_accuracy": outcome.metrics.get("test_accuracy"),
            "loss": loss,
            "early": {"max_over_first": (max(early) / first) if early and first and first > 0 and
                      all(math.isfinite(v) for v in early) else (math.inf if early else None),
                      "first_update_ratio": first_update},
            "update_ratio": updates,
            "norm_stats": ins["norm_stats"].summary() if "norm_stats" in ins else {},
            "message": outcome.message,
        }
        capture = ins.get("capture")
        trained = None
        if outcome.status == "ok" and capture is not None and capture.optimizer is not None:
            trained = (capture.model, capture.optimizer)
        return probe, trained

    # ------------------------------------------------------------ fixes
    def try_fixes(self, found: list[Finding], before: _Measured) -> dict[str, dict[str, Any]]:
        """The patched configuration of each of the ``fixes`` most severe findings with a
        patch, measured by the same probe: ``{finding id: {before, after, verified, ...}}``."""
        tried: dict[str, dict[str, Any]] = {}
        seen: list[list[dict[str, Any]]] = []
        for finding in found:
            if len(tried) >= self.spec.fixes:
                break
            patch = [c.as_dict() for c in finding.patch]
            if not patch or patch in seen:
                continue
            seen.append(patch)
            tried[finding.id] = self._try(finding, before)
        return tried

    def _try(self, finding: Finding, before: _Measured) -> dict[str, Any]:
        spec = self.spec
        try:
            train, model_spec, data_ref = patched(spec.train, self.ctx.model_spec, self.ctx.data_ref, finding.patch)
        except ValueError as err:
            return {"verified": False, "before": _summary(before, finding), "after": {"error": str(err)}}
        try:
            after = self.measure(train, model_spec, data_ref, f"fix_{finding.id}", full=False)
        except StageError as err:
            return {"verified": False, "before": _summary(before, finding), "after": {"error": str(err)}}
        after_findings = vocabulary.diagnose(after.evidence, after.setup)
        b, a = _summary(before, finding), _summary(after, finding)
        a["findings"] = [f.id for f in after_findings if f.severity in vocabulary.SEVERE]
        return {"verified": helped(b, a), "before": b, "after": a, "curve": after.curve}

    # ------------------------------------------------------------ output
    def row(self, finding: Finding, tried: dict[str, Any] | None) -> dict[str, Any]:
        locations = self.spec.locations or {}
        out = finding.as_dict()
        out["patch"] = [{"path": ".".join([*locations.get(c.role, [c.role] if c.role != "train" else ["stages", self.spec.of]),
                                           *map(str, c.path)]),
                         "value": c.value} for c in finding.patch]
        out["verified"] = bool(tried and tried.get("verified"))
        out["tried"] = tried is not None
        out["before"] = tried.get("before") if tried else None
        out["after"] = tried.get("after") if tried else None
        return out

    def plot(self, before: _Measured, tried: dict[str, dict[str, Any]]) -> None:
        from ..analyzers._plot import new_figure, save
        from ..diagnosis import at_init, lr_range

        plots = self.ctx.plots_dir
        if isinstance(before.evidence.get("at_init"), dict) and "skipped" not in before.evidence["at_init"]:
            self._guard("plot", lambda: at_init.plot_at_init(before.evidence["at_init"], plots))
        rng = before.evidence.get("lr_range")
        if isinstance(rng, dict) and rng.get("lrs"):
            self._guard("plot", lambda: lr_range.plot_lr_range(rng, plots / "lr_range.png"))
        fig, ax = new_figure()
        curves = [("as configured", before.curve)] + [(f"fix for {fid}", t.get("curve") or []) for fid, t in tried.items()]
        for label, curve in curves:
            pts = [(s, l) for s, l in curve if isinstance(l, (int, float)) and math.isfinite(l) and l > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mini-batch)")
        ax.set_title(f"diagnose {self.spec.of}: the probe, and each fix tried")
        ax.legend(fontsize=8)
        save(fig, plots / "probe_loss.png")


def _before_after(row: dict[str, Any]) -> str:
    b, a = row.get("before") or {}, row.get("after") or {}
    if not row.get("tried"):
        return "–"
    if "error" in a:
        return "patch invalid"

    def shown(side: dict[str, Any]) -> str:
        loss = side.get("loss")
        return "diverged" if side.get("diverged") else (f"{loss:.4g}" if isinstance(loss, (int, float)) else "?")

    return f"{shown(b)} → {shown(a)}"


# ---------------------------------------------------------------------- patching
def patched(train: TrainSpec, model_spec: ModelSpec, data_ref: Any, patch: list[Change]) -> tuple[TrainSpec, ModelSpec, Any]:
    """The configuration with ``patch`` applied, validated and resolved (``ValueError``: the
    patched configuration is invalid)."""
    from nnopt.core.yaml_patch import DELETE, set_path

    parts = {"train": written(train), "model": written(model_spec), "data": written(data_ref)}
    for change in patch:
        parts[change.role] = set_path(parts[change.role], tuple(change.path), DELETE if change.value is None else change.value)
    return (resolved(TrainSpec, parts["train"], f"stages.{train.kind}"), resolved(ModelSpec, parts["model"], "model"),
            resolved(DatasetRef, parts["data"], "data"))


def helped(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """A fix is verified when its probe does not diverge and either the original diverged or
    its final train loss is lower by at least 5% *and* by 1% of the original probe's first
    loss (two losses both near zero differ by a large factor and by nothing that matters)."""
    if after.get("diverged") or "error" in after:
        return False
    if before.get("diverged"):
        return True
    b, a = before.get("loss"), after.get("loss")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)):
        return False
    scale = before.get("first_loss")
    scale = scale if isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0 else 1.0
    return a < 0.95 * b and b - a > 0.01 * scale


def _summary(measured: _Measured, finding: Finding) -> dict[str, Any]:
    probe = measured.evidence.get("probe", {})
    out = {"loss": probe.get("final_train_loss"), "first_loss": probe.get("loss", {}).get("first_loss"),
           "diverged": probe.get("status") == "diverged",
           "test_accuracy": probe.get("final_test_accuracy"), "steps": probe.get("steps")}
    if finding.instrument is not None:
        out["instrument"] = {"name": finding.instrument[0], "value": vocabulary.get(measured.evidence, finding.instrument[0])}
    return out


# ---------------------------------------------------------------------- setup
def _subset(data: Any, n: int, generator: Any) -> tuple[Any, Any]:
    import torch

    idx = torch.randperm(data.n_train, generator=generator)[: min(n, data.n_train)].to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]


def _total_steps(train: TrainSpec, data: Any, batch_size: int) -> int:
    """The train stage's length in steps (as ``Train.run`` computes it)."""
    n = data.n_train
    batch = n if train.full_batch else min(max(1, batch_size) * train.accumulate, n)
    return train.steps if train.steps is not None else train.epochs * math.ceil(n / batch)  # type: ignore[operator]


def _setup(train: TrainSpec, model_spec: ModelSpec, data: Any, model: Any, opt: Any, batch_size: int) -> Setup:
    """The facts of the configuration the checks read."""
    arch_params = written(model_spec.arch)
    arch_params.pop("name", None)
    activation = getattr(model_spec.arch.resolved, "activation", None)
    params = opt.params.model_dump()
    widths = getattr(model_spec.arch.resolved, "widths", None) or []
    batch = data.n_train if train.full_batch else int(train.accumulate) * max(1, batch_size)
    steps = _total_steps(train, data, batch_size)
    return Setup(
        optimizer=train.optimizer.name, optimizer_params=json_safe(params), lr=float(params.get("lr", math.nan)),
        batch_size=min(batch, data.n_train), n_train=data.n_train, steps=steps, has_warmup=_has_warmup(written(train.schedule)),
        schedule=written(train.schedule), arch=model_spec.arch.name, arch_params=json_safe(arch_params),
        activation=getattr(activation, "name", None),
        depth=sum(1 for m in model.modules() if type(m).__name__ in ("Linear", "Conv1d", "Conv2d", "Conv3d", "NTKLinear")),
        has_skips=model_spec.arch.name in vocabulary.WITH_SKIPS, norm=model_spec.norm.name if model_spec.norm else None,
        init=written(model_spec.init) if model_spec.init is not None else None, task=data.task,
        widths=list(widths) if isinstance(widths, list) else [],
    )


def _has_warmup(schedule: Any) -> bool:
    """Whether a written schedule (recursively through ``then``) warms the rate up."""
    if isinstance(schedule, str):
        return schedule in ("one_cycle",)
    if not isinstance(schedule, dict):
        return False
    name = schedule.get("name")
    if name == "warmup" and schedule.get("length", 5) > 0:
        return True
    if name in ("wsd",) and schedule.get("warmup", 0) > 0:
        return True
    if name == "one_cycle":
        return True
    return _has_warmup(schedule.get("then"))


def _depth(at_init: Any, default: int) -> int:
    layers = at_init.get("forward", {}).get("layers") if isinstance(at_init, dict) else None
    return len(layers) if layers else default


def _ratio(measured: Any, threshold: dict[str, Any]) -> float | None:
    lam = measured.get("lambda_max") if isinstance(measured, dict) else None
    bound = threshold.get("threshold")
    if not isinstance(lam, (int, float)) or not isinstance(bound, (int, float)) or not bound:
        return None
    return lam / bound

