"""The ``ntk_regression`` stage: the predictions of an infinitely wide network trained by
gradient flow on the mean squared error, in closed form from its kernel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from nnopt.core.component import KernelRef, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import KernelSource
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec, json_safe

from ._common import derived_generator, evaluate, labels_of, seed_everything
from nnopt.core import figure_style as fs

if TYPE_CHECKING:  # pragma: no cover
    import torch

_SUBSET_STREAM = 7
#: jitter tried in turn (times the mean diagonal) when Θ_tr,tr is not numerically positive definite
JITTERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)


class NTKRegressionSpec(StageSpec):
    """``kind: ntk_regression``: kernel regression with a network's NTK / NNGP kernel."""

    kernel: KernelRef = Field(..., description="the kernel (kind `kernels`): ntk_analytic, nngp_analytic, cntk, or "  # type: ignore[valid-type]
                              "empirical_ntk (of `from`'s weights, else of the stage's model at initialization)")
    samples: int | None = Field(None, ge=1, description="a seeded random subset of this many training examples "
                                "(None: all of them)")
    test_samples: int | None = Field(None, ge=1, description="a seeded random subset of the test split (None: all)")
    t: list[float] | None = Field(None, description="finite training times (None: infinite time only, which is "
                                  "always reported); time is η·steps of gradient flow on ½·mean((f − y)²)")
    learning_rate: float = Field(1.0, gt=0.0, description="η: the times are multiplied by it (neural-tangents' "
                                 "`learning_rate`)")
    regularization: float = Field(0.0, ge=0.0, description="diagonal regularization ε: Θ + ε·(tr Θ / n)·I "
                                  "(neural-tangents' `diag_reg`)")
    regularization_absolute: bool = Field(False, description="ε is absolute (Θ + ε·I) instead of relative to the "
                                          "mean diagonal (`diag_reg_absolute_scale`)")
    targets: Literal["centered_one_hot", "one_hot"] = Field(
        "centered_one_hot", description="classification targets: one-hot minus 1/C (centred: the mean target is "
        "0, as the network's output at initialization is on average) or plain one-hot")
    compare: WeightRef | None = Field(None, description="a trained stage (STAGE or STAGE@N) whose network's test "
                                      "accuracy and loss are reported next to the kernels'")
    dtype: Literal["float64", "float32"] = Field("float64", description="arithmetic of kernels and solves")

    @field_validator("t")
    @classmethod
    def _times(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not value:
                raise ValueError("t is a non-empty list of times (or null for infinite time only)")
            if min(value) < 0:
                raise ValueError("times must be >= 0")
        return value


class NTKRegression(Stage):
    """Kernel regression as infinitely wide gradient-flow training (Jacot et al. 2018; Lee et
    al. 2019, "Wide neural networks of any depth evolve as linear models under gradient
    descent"), with neural-tangents' ``predict.gradient_descent_mse`` conventions.

    On the training set (n examples, targets y ∈ R^{n×O}) gradient flow with rate η on
    L = ½·mean((f − y)²) = (1/(2nO))·Σ(f − y)², from the mean predictor f₀ = 0, gives

        f_test(t) = Θ_te,tr Θ⁻¹ (I − exp(−η t Θ/(nO))) y        (finite t, by Θ = V diag(λ) Vᵀ)
        f_test(∞) = Θ_te,tr Θ⁻¹ y                                (by Cholesky)

    with Θ = Θ_tr,tr + ε·(tr Θ_tr,tr / n)·I (``regularization``; absolute ε·I with
    ``regularization_absolute``); eigenvalues below 0 (round-off) are taken as 0. A network
    trained with torch's ``mse_loss`` (mean, no ½) and SGD rate η for s steps corresponds to
    t = 2·s. When the Cholesky factorization fails, jitter δ·(mean diagonal) is added for
    δ = 1e-12, 1e-10, ..., 1e-4 in turn; the δ used is reported (``jitter``).

    Classification targets are one-hot vectors minus 1/C (``targets: centered_one_hot``,
    the mean target 0 as for an initialized network; ``one_hot`` for plain ones), the
    prediction is the argmax; regression targets are used as they are. Both kernels are
    used when the kernel returns both (``ntk`` and ``nngp``: the NNGP's infinite-time
    prediction is the Gaussian-process posterior mean, i.e. training the last layer only).
    Results: for each kernel the test (and train) MSE against those targets and the test
    accuracy, at t = ∞ and at each finite t; with ``compare: STAGE``, that trained network's
    test accuracy and loss on the same test examples. Plots: accuracy (or MSE) against t.

    The kernel is computed on a seeded subset of ``samples`` training examples (and
    ``test_samples`` test examples): K(train, train) and K(test, train). An empirical kernel
    uses ``from``'s weights, or the stage's model freshly initialized from its seed.
    """

    Params: ClassVar[type[NTKRegressionSpec]] = NTKRegressionSpec
    cache_version: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model"})
    provides_weights: ClassVar[bool] = False
    params: NTKRegressionSpec

    def run(self, ctx: StageContext) -> StageOutcome:
        import torch

        spec = self.params
        seed_everything(ctx.seed)
        device = torch.device(ctx.device)
        dtype = torch.float64 if spec.dtype == "float64" else torch.float32
        data = ctx.load_data()
        classification = data.task == "classification"
        generator = derived_generator(ctx.seed, _SUBSET_STREAM)
        tr_idx = _subset(data.n_train, spec.samples, generator)
        te_idx = _subset(int(data.x_test.shape[0]), spec.test_samples, generator)
        if te_idx.numel() == 0:
            raise StageError("ntk_regression: the test split is empty")
        x_tr, y_tr = data.x_train[tr_idx.to(data.x_train.device)], data.y_train[tr_idx.to(data.y_train.device)]
        x_te, y_te = data.x_test[te_idx.to(data.x_test.device)], data.y_test[te_idx.to(data.y_test.device)]
        targets_tr = self._targets(y_tr, data, dtype, device)
        targets_te = self._targets(y_te, data, dtype, device)

        model = ctx.load_model(spec.from_) if spec.from_ is not None else ctx.build_model()
        model.eval()
        source = KernelSource(model=model, model_spec=ctx.model_spec, device=device, dtype=dtype)
        kernel = spec.kernel.instantiate()
        k_tr = self._compute(ctx, kernel, x_tr, None, source, "kernel train × train")
        k_te = self._compute(ctx, kernel, x_te, x_tr, source, "kernel test × train")

        results: dict[str, Any] = {
            "kernel": spec.kernel.name,
            "samples": int(tr_idx.numel()),
            "test_samples": int(te_idx.numel()),
            "outputs": int(targets_tr.shape[1]),
            "targets": spec.targets if classification else "values",
            "task": data.task,
        }
        metrics: dict[str, Any] = {}
        labels_te = labels_of(y_te).to(device) if classification else None
        labels_tr = labels_of(y_tr).to(device) if classification else None
        for name in ("ntk", "nngp"):
            if name not in k_tr:
                continue
            ktt, kst = self._matrix(k_tr, name), self._matrix(k_te, name)
            block = self._regress(ktt, kst, targets_tr, targets_te, labels_tr, labels_te)
            results[name] = block
            for key in ("test_accuracy", "test_mse"):
                if block.get(key) is not None:
                    metrics[f"{name}_{key}"] = block[key]
        if not any(name in results for name in ("ntk", "nngp")):
            raise StageError(f"ntk_regression: kernel '{spec.kernel.name}' returned {', '.join(sorted(k_tr))}; "
                             "expected 'ntk' and/or 'nngp'")
        if spec.compare is not None:
            network = ctx.load_model(spec.compare)
            loss_fn = ctx.loss_fn() if ctx.loss_ref is not None else torch.nn.functional.mse_loss
            measured = evaluate(network, loss_fn, x_te, y_te, classification)
            results["compare"] = {"stage": str(spec.compare), "test_accuracy": measured.get("accuracy"),
                                  "test_loss": measured.get("loss")}
            if measured.get("accuracy") is not None:
                metrics["network_test_accuracy"] = measured["accuracy"]
        results = json_safe(results)
        self._plot(ctx, results)
        return StageOutcome(metrics=json_safe(metrics), results={"ntk_regression": results})

    # ---------------------------------------------------------------- pieces
    def _targets(self, y: "torch.Tensor", data: Any, dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
        import torch

        if data.task == "classification":
            classes = int(data.num_classes or data.output_dim)
            labels = labels_of(y).to(device)
            out = torch.nn.functional.one_hot(labels.long(), classes).to(dtype)
            return out - 1.0 / classes if self.params.targets == "centered_one_hot" else out
        y = y.to(device, dtype)
        return y.reshape(y.shape[0], -1)

    def _compute(self, ctx: StageContext, kernel: Any, x1: Any, x2: Any, source: KernelSource,
                 what: str) -> dict[str, "torch.Tensor"]:
        bars: list[Any] = []  # opened at the first report, when the kernel knows its number of blocks

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(ctx.progress(total, what).__enter__())
            bars[0].update(done - bars[0].completed)

        try:
            return kernel.compute(x1, x2, source, progress=progress)
        finally:
            if bars:
                bars[0].__exit__(None, None, None)

    def _matrix(self, out: dict[str, "torch.Tensor"], name: str) -> "torch.Tensor":
        k = out[name]
        if k.ndim != 2:
            raise StageError(f"ntk_regression: kernel '{self.params.kernel.name}' returned a {tuple(k.shape)} "
                             f"'{name}'; the regression needs one (n1, n2) kernel per output (empirical_ntk: "
                             "output: trace)")
        return k.to(torch_dtype(self.params.dtype))

    def _regress(self, ktt: "torch.Tensor", kst: "torch.Tensor", y_tr: "torch.Tensor", y_te: "torch.Tensor",
                 labels_tr: "torch.Tensor | None", labels_te: "torch.Tensor | None") -> dict[str, Any]:
        import torch

        spec = self.params
        n = ktt.shape[0]
        reg = spec.regularization if spec.regularization_absolute else spec.regularization * float(torch.trace(ktt)) / n
        a = ktt + reg * torch.eye(n, dtype=ktt.dtype, device=ktt.device)
        alpha, jitter = cholesky_solve_with_jitter(a, y_tr)
        f_te, f_tr = kst @ alpha, ktt @ alpha
        block: dict[str, Any] = {"regularization": reg, "jitter": jitter, **_scores(f_te, y_te, labels_te, "test"),
                                 **_scores(f_tr, y_tr, labels_tr, "train")}
        if spec.t is not None:
            evals, evecs = torch.linalg.eigh(a)
            evals = evals.clamp_min(0.0)
            proj = evecs.T @ y_tr
            finite: dict[str, list[Any]] = {"t": list(spec.t), "test_accuracy": [], "test_mse": [], "train_mse": []}
            for t in spec.t:
                tau = spec.learning_rate * t / y_tr.numel()
                # (1 − e^{−λτ})/λ, → τ as λ → 0
                small = evals * tau < 1e-12
                gain = torch.where(small, torch.full_like(evals, tau),
                                   -torch.expm1(-evals * tau) / torch.where(small, torch.ones_like(evals), evals))
                coef = evecs @ (gain[:, None] * proj)
                scores_te = _scores(kst @ coef, y_te, labels_te, "test")
                scores_tr = _scores(ktt @ coef, y_tr, labels_tr, "train")
                finite["test_accuracy"].append(scores_te.get("test_accuracy"))
                finite["test_mse"].append(scores_te["test_mse"])
                finite["train_mse"].append(scores_tr["train_mse"])
            block["finite"] = finite
        return block

    def _plot(self, ctx: StageContext, results: dict[str, Any]) -> None:
        from nnopt.plugins.analyzers._plot import new_figure, save

        kernels = [k for k in ("ntk", "nngp") if k in results]
        metric = "test_accuracy" if results.get("task") == "classification" else "test_mse"
        fig, ax = new_figure(6.4, 4.0)
        colors = {"ntk": fs.BLUE, "nngp": fs.ORANGE}
        finite_any = False
        for name in kernels:
            block = results[name]
            if "finite" in block:
                ts = [t for t in block["finite"]["t"]]
                vals = block["finite"][metric]
                pts = [(t, v) for t, v in zip(ts, vals) if isinstance(v, (int, float)) and t > 0]
                if pts:
                    ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", markersize=3, color=colors[name],
                            label=f"{name}, finite t")
                    finite_any = True
            value = block.get(metric)
            if isinstance(value, (int, float)):
                ax.axhline(value, color=colors[name], linestyle="--", linewidth=1.0, label=f"{name}, t = ∞: {value:.4g}")
        compare = results.get("compare") or {}
        net = compare.get("test_accuracy") if metric == "test_accuracy" else None
        if isinstance(net, (int, float)):
            ax.axhline(net, color=fs.GREEN, linestyle=":", linewidth=1.5, label=f"network {compare['stage']}: {net:.4g}")
        if finite_any:
            ax.set_xscale("log")
            ax.set_xlabel(r"$t$ ($\eta\,\cdot$ steps of gradient flow)")
        else:
            ax.set_xticks([])
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"stage '{ctx.stage_id}': kernel regression ({results.get('kernel')}, "
                     f"{results.get('samples')} training examples)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, ctx.plots_dir / "ntk_regression.png")


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return torch.float64 if name == "float64" else torch.float32


def _subset(n: int, k: int | None, generator: "torch.Generator") -> "torch.Tensor":
    """Indices of a seeded random subset of k of range(n) (all of them, in order, when k is None or ≥ n)."""
    import torch

    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:k].sort().values


def cholesky_solve_with_jitter(a: "torch.Tensor", b: "torch.Tensor") -> tuple["torch.Tensor", float]:
    """A⁻¹B by Cholesky, adding δ·mean(diag A)·I for δ in ``JITTERS`` in turn when A is not
    numerically positive definite; returns the solution and δ (0.0 when none was needed)."""
    import torch

    scale = float(torch.diagonal(a).mean()) if a.numel() else 1.0
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for delta in (0.0,) + JITTERS:
        factor, info = torch.linalg.cholesky_ex(a + (delta * scale) * eye if delta else a)
        if int(info) == 0:
            return torch.cholesky_solve(b, factor), delta
    raise StageError(f"ntk_regression: the training kernel is not positive definite even with {JITTERS[-1]:g}× its "
                     "mean diagonal added (duplicate inputs? set `regularization`)")


def _scores(f: "torch.Tensor", y: "torch.Tensor", labels: "torch.Tensor | None", split: str) -> dict[str, Any]:
    out: dict[str, Any] = {f"{split}_mse": float(((f - y) ** 2).mean())}
    if labels is not None:
        out[f"{split}_accuracy"] = float((f.argmax(1) == labels).double().mean())
    return out


