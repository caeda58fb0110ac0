"""The findings of a diagnosis: a documented vocabulary of checks, each reading the measured
evidence into at most one finding with its explanation and a patch to the pipeline.

A check is a small object: ``id`` (stable, documented in docs/diagnose.md), ``priority`` (its
rank among findings of one severity: causes before the symptoms they produce, so the top
finding names the cause), and ``examine(evidence, setup)``, which returns a ``Finding`` or
None. ``CHECKS`` lists the built-in ones in priority order; ``diagnose(evidence, setup)``
runs them all and ranks what they find. A new check is a new entry of ``CHECKS``: no branch
elsewhere changes.

``evidence`` is what the stage measured (``at_init``, ``curvature``, ``probe``,
``noise_scale``, ``lr_range``; see ``nnopt.plugins.stages.diagnose``), ``setup`` the facts of
the configuration (optimizer and its params, learning rate, batch size, schedule, activation,
depth, skips, normalizer, initializer: ``Setup``). A patch is a list of ``Change``s, each on
one role of the pipeline (``model``, ``data`` or ``train``: the train stage's own keys) and a
path below it; the stage turns roles into paths of the user's file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Literal

Severity = Literal["critical", "warning", "info"]
#: severities from most to least severe; ``critical`` and ``warning`` make a pipeline unhealthy
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
SEVERE: frozenset[str] = frozenset({"critical", "warning"})

#: activations whose derivative is 1 or 0 (ReLU family): mean-field phases are degenerate for
#: them, and the variance-preserving initializer is He et al.'s
RELU_LIKE = frozenset({"relu", "leaky_relu", "elu", "gelu", "silu", "swish", "softplus", "selu", "abs"})
LINEAR_LIKE = frozenset({"linear", "identity"})
ADAPTIVE = frozenset({"adam", "adamw", "amsgrad", "nadam", "radam", "adamax", "adagrad", "rmsprop", "adadelta",
                      "adafactor", "lamb", "lion"})
#: the fewest weight layers at which the mean-field phase (ordered / chaotic) is a finding
MIN_PHASE_DEPTH = 5
#: the fewest probe steps from which a stalled loss says something about the rate
MIN_PROBE_STEPS = 50
#: architectures with identity shortcuts around their blocks
WITH_SKIPS = frozenset({"resnet", "resnet20", "resnet32", "resnet56"})


@dataclass
class Change:
    """Set ``path`` (keys below ``role``) to ``value``; ``value`` None deletes the key."""

    role: Literal["model", "data", "train"]
    path: tuple[str, ...]
    value: Any

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "path": list(self.path), "value": self.value}


@dataclass
class Finding:
    """One thing the diagnosis found: what (``id``), how bad, the numbers behind it, why the
    field says it matters (with the survey section and paper), and what to change."""

    id: str
    severity: Severity
    title: str
    evidence: dict[str, Any]
    explanation: str
    recommendation: str
    patch: list[Change] = field(default_factory=list)
    priority: int = 0
    #: the evidence number that flagged it, re-measured after the fix: (its path in the
    #: evidence, its value, which way is better)
    instrument: tuple[str, float | None, Literal["lower", "higher", "closer_to_1"]] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["patch"] = [c.as_dict() for c in self.patch]
        out["instrument"] = None if self.instrument is None else {
            "name": self.instrument[0], "value": self.instrument[1], "better": self.instrument[2]}
        return out


@dataclass
class Setup:
    """The configuration facts checks read (built by the stage from the train stage's spec)."""

    optimizer: str
    optimizer_params: dict[str, Any]
    lr: float
    batch_size: int
    n_train: int
    steps: int
    has_warmup: bool
    schedule: Any  # as written: a name or a mapping
    arch: str
    arch_params: dict[str, Any]
    activation: str | None
    depth: int  # weight layers the forward pass calls
    has_skips: bool
    norm: str | None
    init: Any  # as written, or None
    task: str
    widths: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------- helpers
def get(evidence: dict[str, Any], path: str, default: Any = None) -> Any:
    """``evidence["a"]["b"]`` for ``"a.b"``; ``default`` where any part is missing or None."""
    value: Any = evidence
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return default
        value = value[part]
    return value


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def round_sig(x: float, digits: int = 2) -> float:
    """``x`` to ``digits`` significant digits (a learning rate a person writes: 0.0037)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def init_for(setup: Setup) -> dict[str, Any]:
    """The variance-preserving initializer the field recommends for the activation: He et al.
    2015 (Kaiming) for the ReLU family, the edge of chaos (Schoenholz et al. 2017) for
    saturating ones, orthogonal for linear networks (Saxe et al. 2014); survey §4.2."""
    act = setup.activation or ""
    if act in RELU_LIKE:
        return {"name": "kaiming_normal"}
    if act in LINEAR_LIKE:
        return {"name": "orthogonal"}
    return {"name": "critical"}


def lr_change(setup: Setup, lr: float) -> Change:
    return Change("train", ("optimizer", "lr"), round_sig(lr))


def _written_schedule(setup: Setup) -> Any:
    return setup.schedule if setup.schedule not in (None, "") else "constant"


#: schedules that rescale the rate they wrap (``then``): a warmup goes inside them, so that it
#: ramps the rescaled rate up (Goyal et al.'s warmup to the linearly scaled rate)
RESCALING = frozenset({"linear_scaling"})


def warmup_change(schedule: Any, length: int) -> Change:
    """The schedule with a linear warmup of ``length`` steps from 1% of the rate in front of
    it, or, below a rescaling schedule, in front of what that schedule wraps."""
    if isinstance(schedule, dict) and schedule.get("name") in RESCALING:
        inner = schedule.get("then", "constant")
        return Change("train", ("schedule", "then"), {"name": "warmup", "length": length, "unit": "steps",
                                                      "start_factor": 0.01, "then": inner})
    return Change("train", ("schedule",), {"name": "warmup", "length": length, "unit": "steps", "start_factor": 0.01,
                                           "then": schedule})


# ----------------------------------------------------------------------- the checks
class Check:
    """Base of the checks: ``examine`` returns a ``Finding`` or None."""

    id: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    #: one line for docs/diagnose.md and ``nnopt diagnose --help``
    summary: ClassVar[str] = ""

    def examine(self, evidence: dict[str, Any], setup: Setup) -> Finding | None:  # pragma: no cover - interface
        raise NotImplementedError(type(self).__name__)

    def finding(self, severity: Severity, title: str, evidence: dict[str, Any], explanation: str,
                recommendation: str, patch: list[Change], instrument: Any = None) -> Finding:
        return Finding(self.id, severity, title, evidence, explanation, recommendation, patch, self.priority, instrument)


class LrAboveCurvature(Check):
    id, priority = "lr_above_curvature", 30
    summary = "the top Hessian eigenvalue at initialization exceeds the optimizer's stability bound (2/η for GD)"

    def examine(self, evidence, setup):
        lam = get(evidence, "curvature.at_init.lambda_max")
        bound = get(evidence, "curvature.threshold.threshold")
        if not (finite(lam) and finite(bound)) or lam <= 0 or get(evidence, "curvature.threshold.preconditioned"):
            return None
        ratio = lam / bound
        if ratio <= 1.0:
            return None
        rule = get(evidence, "curvature.threshold.rule", "")
        new_lr = setup.lr * 0.5 / ratio  # half the largest stable rate: λ·η' = half the bound
        # Above the bound a network may still train: the loss rises, the curvature falls below
        # the bound and training goes on (the catapult phase; BatchNorm's scale invariance does
        # the same). Only when the probe diverged or stalled is it the problem.
        decrease = get(evidence, "probe.loss.relative_decrease")
        recovered = get(evidence, "probe.status") == "ok" and finite(decrease) and decrease >= 0.5
        severity: Severity = "info" if recovered else "critical"
        title = f"λmax = {lam:.3g} at initialization is above the stability bound {bound:.3g} ({rule})"
        title += ("; the probe trained anyway (catapult)" if recovered else ": the step is unstable from the start")
        return self.finding(
            severity, title,
            {"lambda_max": lam, "threshold": bound, "ratio": ratio, "lr": setup.lr, "relative_decrease": decrease,
             "plot": "plots/lr_range.png"},
            "On a quadratic, gradient descent with step η diverges along every Hessian direction with λ > 2/η (with "
            "momentum β the bound is 2(1+β)/η); the loss's sharpness at initialization is above it, so the first "
            "steps amplify rather than reduce the error unless the curvature falls fast enough (survey §5.1 on the "
            "step size; Cohen et al. 2021, \"Gradient descent on neural networks typically occurs at the edge of "
            "stability\"; Lewkowycz et al. 2020, the catapult phase).",
            f"lower the learning rate to {round_sig(new_lr)} (half the stability bound at initialization)",
            [lr_change(setup, new_lr)], ("curvature.at_init_ratio", ratio, "lower"))


class ChaoticInit(Check):
    id, priority = "chaotic_init", 10
    summary = "a saturating network initialized in the chaotic phase (χ₁ > 1): gradients explode with depth"

    def examine(self, evidence, setup):
        phase = get(evidence, "at_init.phase")
        if not phase or phase.get("positively_homogeneous") or setup.activation in RELU_LIKE | LINEAR_LIKE:
            return None
        chi = phase.get("chi1")
        if phase.get("phase") != "chaotic" or not finite(chi) or chi <= 1.1:
            return None
        depth_scale = phase.get("depth_scale")
        # a shallow net hardly feels the phase: gradients grow by χ₁ per layer for few layers
        deep = setup.depth >= MIN_PHASE_DEPTH and (not finite(depth_scale) or setup.depth >= min(depth_scale, 8))
        if not deep:
            return None
        return self.finding(
            "critical", f"initialized in the chaotic phase: χ₁ = {chi:.3g} at σ_w² = {phase.get('sigma_w2', math.nan):.3g} "
            f"(edge of chaos: σ_w² = {phase.get('critical_sigma_w2') or math.nan:.3g}), depth {setup.depth}",
            {"chi1": chi, "sigma_w2": phase.get("sigma_w2"), "sigma_b2": phase.get("sigma_b2"), "q_star": phase.get("q_star"),
             "depth_scale": depth_scale, "depth": setup.depth, "critical_sigma_w2": phase.get("critical_sigma_w2"),
             "saturated_fraction": get(evidence, "at_init.units.max_saturated_fraction"), "plot": "plots/init_signals.png"},
            "Mean-field theory of wide networks: with χ₁ = σ_w² E[φ'(h)²] > 1 nearby inputs decorrelate and "
            "back-propagated gradients grow by χ₁ per layer, so a deep network beyond the depth scale ξ = 1/ln χ₁ "
            "cannot be trained (survey §4.2; Poole et al. 2016, Schoenholz et al. 2017, \"Deep information propagation\").",
            "initialize on the edge of chaos (init: critical), where χ₁ = 1",
            [Change("model", ("init",), {"name": "critical"})], ("at_init.phase.chi1", chi, "closer_to_1"))


class OrderedInit(Check):
    id, priority = "ordered_init", 11
    summary = "a saturating network initialized deep in the ordered phase (χ₁ < 1): gradients vanish with depth"

    def examine(self, evidence, setup):
        phase = get(evidence, "at_init.phase")
        if not phase or phase.get("positively_homogeneous") or setup.activation in RELU_LIKE | LINEAR_LIKE:
            return None
        chi = phase.get("chi1")
        if phase.get("phase") != "ordered" or not finite(chi) or chi >= 0.9:
            return None
        depth_scale = phase.get("depth_scale")
        # vanishing matters once χ₁^depth is small: at least MIN_PHASE_DEPTH layers and more
        # than ln(100)·ξ of them (gradients down 100×)
        if setup.depth < MIN_PHASE_DEPTH or (finite(depth_scale) and setup.depth < math.log(100) * depth_scale):
            return None
        return self.finding(
            "warning", f"initialized in the ordered phase: χ₁ = {chi:.3g}, depth {setup.depth} ≥ ln(100)·ξ = "
            f"{math.log(100) * depth_scale:.3g}",
            {"chi1": chi, "sigma_w2": phase.get("sigma_w2"), "depth_scale": depth_scale, "depth": setup.depth,
             "plot": "plots/init_signals.png"},
            "With χ₁ < 1 every input converges to the same representation and gradients shrink by χ₁ per layer; "
            "signals survive only about ξ = 1/|ln χ₁| layers (survey §4.2; Schoenholz et al. 2017).",
            "initialize on the edge of chaos (init: critical)",
            [Change("model", ("init",), {"name": "critical"})], ("at_init.phase.chi1", chi, "closer_to_1"))


class ForwardScale(Check):
    """``exploding_forward`` / ``vanishing_forward``: the second moment of the last hidden
    pre-activation against the first's."""

    priority = 12
    summary = "the forward signal's second moment grows or shrinks by orders of magnitude across depth"

    def __init__(self, direction: Literal["exploding", "vanishing"]):
        self.direction = direction
        self.id = f"{direction}_forward"  # type: ignore[misc]

    def examine(self, evidence, setup):
        ratio = get(evidence, "at_init.forward.q_ratio")
        # with normalization the scale is reset at every layer, and with shortcuts the signal
        # travels the identity path (Fixup starts branches at zero on purpose): not this finding
        if not finite(ratio) or ratio <= 0 or setup.norm not in (None, "none") or setup.has_skips:
            return None
        bad = ratio > 1e4 if self.direction == "exploding" else ratio < 1e-4
        if not bad:
            return None
        init = init_for(setup)
        verb = "grows" if self.direction == "exploding" else "shrinks"
        return self.finding(
            "critical", f"the forward signal {verb} {ratio:.2g}× from the first to the last hidden layer at initialization",
            {"q_ratio": ratio, "q_hat": get(evidence, "at_init.forward.q_hat"), "q_mean_field": get(evidence, "at_init.forward.q"),
             "log10_growth_per_layer": get(evidence, "at_init.forward.log10_growth_per_layer"), "depth": setup.depth,
             "plot": "plots/init_signals.png"},
            "The second moment of the pre-activations is multiplied by σ_w²·E[φ(h)²]/q at every layer, so an "
            "initialization off the variance-preserving scale makes it explode or vanish geometrically with depth, "
            "and the gradients with it (survey §4.1–4.2; LeCun et al. 1998, Glorot & Bengio 2010, He et al. 2015).",
            f"use the variance-preserving initializer for {setup.activation or 'this activation'} "
            f"(init: {init['name']})", [Change("model", ("init",), init)],
            ("at_init.forward.q_ratio", ratio, "closer_to_1"))


class GradientScale(Check):
    """``exploding_gradients`` / ``vanishing_gradients``: first- against last-layer gradient norm."""

    priority = 13
    summary = "the first layer's gradient norm is orders of magnitude above or below the last layer's"

    def __init__(self, direction: Literal["exploding", "vanishing"]):
        self.direction = direction
        self.id = f"{direction}_gradients"  # type: ignore[misc]

    def examine(self, evidence, setup):
        ratio = get(evidence, "at_init.gradients.first_last_ratio")
        if not finite(ratio) or ratio <= 0 or setup.depth < 3 or setup.has_skips:  # shortcuts carry the gradient
            return None
        bad = ratio > 1e3 if self.direction == "exploding" else ratio < 1e-3
        if not bad:
            return None
        init = init_for(setup)
        return self.finding(
            "critical", f"gradient norms {'explode' if self.direction == 'exploding' else 'vanish'} toward the input: "
            f"‖∇W₁‖/‖∇W_L‖ = {ratio:.2g}",
            {"first_last_ratio": ratio, "grad_norms": get(evidence, "at_init.gradients.weights"),
             "growth_per_layer": get(evidence, "at_init.gradients.growth_per_layer"), "plot": "plots/init_signals.png"},
            "Back-propagation multiplies the error by Wᵀ·diag(φ') at every layer, so unless each factor preserves "
            "the norm the gradient of the first layers explodes or vanishes geometrically and those layers do not "
            "learn at any single learning rate (survey §4.1, eqs. (13)–(14); Hochreiter 1991, Bengio et al. 1994).",
            f"initialize to preserve the gradient's norm (init: {init['name']})"
            + ("" if setup.norm not in (None, "none") else ", or normalize the layers (norm: batchnorm)"),
            [Change("model", ("init",), init)], ("at_init.gradients.first_last_ratio", ratio, "closer_to_1"))


class LogitScale(Check):
    id, priority = "logit_scale", 14
    summary = "the initial loss is far above that of a uniform prediction: the outputs are too large"

    def examine(self, evidence, setup):
        ratio = get(evidence, "at_init.output.loss_ratio")
        if setup.task != "classification" or not finite(ratio) or ratio <= 3.0:
            return None
        scale = setup.arch_params.get("output_scale")
        if finite(scale) and scale > 1.0:
            patch = [Change("model", ("arch", "output_scale"), None)]
            advice = f"remove output_scale: {scale:g} (the logits are multiplied by it)"
        else:
            init = init_for(setup)
            patch = [Change("model", ("init",), init)]
            advice = f"initialize at the variance-preserving scale (init: {init['name']}) so the logits start O(1)"
        return self.finding(
            "critical" if ratio > 5 else "warning",
            f"the initial loss {get(evidence, 'at_init.output.initial_loss'):.3g} is {ratio:.2g}× that of a uniform "
            f"prediction ({get(evidence, 'at_init.output.reference_loss'):.3g}): logits of std "
            f"{get(evidence, 'at_init.output.logit_std', math.nan):.3g}",
            {"loss_ratio": ratio, "initial_loss": get(evidence, "at_init.output.initial_loss"),
             "reference_loss": get(evidence, "at_init.output.reference_loss"),
             "logit_std": get(evidence, "at_init.output.logit_std"), "plot": "plots/probe_loss.png"},
            "With large logits the softmax saturates: the network starts confidently wrong, the loss is far above "
            "ln C and its gradient is dominated by a few examples, so the first steps only shrink the output scale "
            "(survey §4.2 on the scale of the initialization; Glorot & Bengio 2010).",
            advice, patch, ("at_init.output.loss_ratio", ratio, "lower"))


class DepthWithoutSkips(Check):
    id, priority = "depth_without_skips", 20
    summary = "a deep network without identity shortcuts that barely trains in the probe"

    def examine(self, evidence, setup):
        if setup.has_skips or setup.depth < 16:
            return None
        decrease = get(evidence, "probe.loss.relative_decrease")
        grad_ratio = get(evidence, "at_init.gradients.first_last_ratio")
        stalled = finite(decrease) and decrease < 0.8  # the loss did not fall to a fifth of its start
        skewed = finite(grad_ratio) and not (1e-2 < grad_ratio < 1e2)
        if not (stalled or skewed):
            return None
        if setup.arch == "plain":
            patch = [Change("model", ("arch", "name"), "resnet")]
            advice = "add identity shortcuts: the same stages as a ResNet (arch: resnet)"
        elif setup.arch == "mlp" and setup.widths:
            width = max(setup.widths)
            arch: dict[str, Any] = {"name": "resnet", "kind": "dense", "stages": [[max(1, len(setup.widths) // 2), width, 1]]}
            if setup.activation:
                arch["activation"] = setup.activation
            patch = [Change("model", ("arch",), arch)]
            advice = f"use a residual network of the same depth and width ({len(setup.widths) // 2} dense blocks of 2 layers)"
        else:
            return None
        return self.finding(
            "warning", f"{setup.depth} weight layers without shortcuts; the probe's loss fell by "
            f"{(decrease or 0) * 100:.0f}%",
            {"depth": setup.depth, "relative_decrease": decrease, "first_last_ratio": grad_ratio,
             "plot": "plots/probe_loss.png"},
            "Deeper plain networks train to a higher training loss than shallower ones (the degradation problem); "
            "identity shortcuts x + F(x) keep the signal and its gradient near the identity map at any depth "
            "(survey §4.4; He et al. 2016, \"Deep residual learning\").",
            advice, patch, ("probe.loss.relative_decrease", decrease, "higher"))


class NeedsWarmup(Check):
    id, priority = "needs_warmup", 40
    summary = "an adaptive or large-batch optimizer without warmup whose first steps are unstable"

    def examine(self, evidence, setup):
        if setup.has_warmup:
            return None
        ratio = get(evidence, "curvature.at_init_ratio")
        if finite(ratio) and ratio > 1.0:  # a step above the curvature explains it: lr_above_curvature
            return None
        large_batch = setup.batch_size >= 512
        if not (setup.optimizer in ADAPTIVE or large_batch):
            return None
        early = get(evidence, "probe.early")
        if not early:
            return None
        spike = early.get("max_over_first", math.nan)  # max loss of the first 10% of steps / the first loss
        first_update = early.get("first_update_ratio", math.nan)
        diverged = get(evidence, "probe.status") == "diverged"
        # the loss itself must show it: a large first update alone is normal from a small init
        unstable = diverged or (finite(spike) and spike > 1.5)
        if not unstable:
            return None
        length = max(1, min(setup.steps // 3, 2000))  # a third of a short run, at most 2000 steps
        patch = [warmup_change(_written_schedule(setup), length)]
        return self.finding(
            "critical" if diverged else "warning",
            f"{setup.optimizer} at batch {setup.batch_size} without warmup: the loss rose to {spike:.3g}× its first "
            f"value in the first steps" + (" and diverged" if diverged else ""),
            {"max_over_first": spike, "first_update_ratio": first_update, "batch_size": setup.batch_size,
             "optimizer": setup.optimizer, "plot": "plots/probe_loss.png"},
            "At the start of training the curvature is highest and, for Adam, the second-moment estimate rests on a "
            "few gradients, so the full rate makes the first updates too large; a gradual warmup of the rate avoids "
            "the early instability (survey §5.1, §5.4; Goyal et al. 2017; Liu et al. 2020, \"On the variance of the "
            "adaptive learning rate\").",
            f"warm the rate up linearly over the first {length} steps", patch,
            ("probe.early.max_over_first", spike, "lower"))


class Diverged(Check):
    id, priority = "diverged", 60
    summary = "the training probe's loss became NaN or infinite"

    def examine(self, evidence, setup):
        if get(evidence, "probe.status") != "diverged":
            return None
        step = get(evidence, "probe.diverged_at")
        return self.finding(
            "critical", f"the probe diverged at step {step}",
            {"diverged_at": step, "last_finite_loss": get(evidence, "probe.last_finite_loss"), "plot": "plots/probe_loss.png"},
            "A non-finite loss means some update overshot by orders of magnitude: a step above the stability bound of "
            "the curvature, or exploding activations (survey §4.1, §5.1).",
            f"lower the learning rate tenfold to {round_sig(setup.lr / 10)} and clip the gradient norm",
            [lr_change(setup, setup.lr / 10), Change("train", ("grad_clip",), 1.0)], ("probe.diverged", 1.0, "lower"))


class UpdateRatio(Check):
    id, priority = "large_updates", 65
    summary = "each step changes the weights by more than 10% of their norm"

    def examine(self, evidence, setup):
        ratio = get(evidence, "probe.update_ratio.overall_median")
        if not finite(ratio) or ratio <= 0.1:
            return None
        new_lr = setup.lr * 1e-2 / ratio
        return self.finding(
            "warning", f"the median update changes a layer's weights by {ratio:.2g} of their norm per step",
            {"update_ratio": ratio, "per_layer": get(evidence, "probe.update_ratio.median_ratio"), "plot": "plots/probe_loss.png"},
            "A rule of thumb of practice (Karpathy's ≈ 10⁻³) and of the stability analysis alike: when one step moves "
            "the weights by a sizeable fraction of themselves the iterates jump across the basin instead of "
            "descending (survey §5.1).",
            f"lower the learning rate to {round_sig(new_lr)} (a 1% update per step)", [lr_change(setup, new_lr)],
            ("probe.update_ratio.overall_median", ratio, "lower"))


class DeadUnits(Check):
    id, priority = "dead_units", 70
    summary = "a large fraction of ReLU units never activates on the data (at initialization, or after the probe)"

    def examine(self, evidence, setup):
        at_init = get(evidence, "at_init.units.max_dead_fraction")
        after = get(evidence, "after_probe.units.max_dead_fraction")
        worst = max((f for f in (at_init, after) if finite(f)), default=None)
        if worst is None or worst < 0.25:
            return None
        # dead from the start is a cause; dying during the probe is a symptom (of a too-large
        # step, most often), ranked after the finding that explains it
        when = "at initialization" if finite(at_init) and at_init >= 0.25 else "after the probe"
        if when == "at initialization":
            severity: Severity = "critical" if at_init > 0.6 else "warning"
        else:  # units that die while the loss still falls well are capacity lost, not a failure
            decrease = get(evidence, "probe.loss.relative_decrease")
            severity = "warning" if worst >= 0.5 and not (finite(decrease) and decrease >= 0.9) else "info"
        return self.finding(
            severity, f"{worst * 100:.0f}% of the units of a layer are dead {when}",
            {"max_dead_fraction": worst, "at_init": get(evidence, "at_init.units.dead_fraction"),
             "after_probe": get(evidence, "after_probe.units.dead_fraction"), "plot": "plots/init_signals.png"},
            "A ReLU unit whose pre-activation is negative on every input has zero gradient and never recovers; "
            "large negative biases, depth, or a too-large step create them (survey §4.1; Lu et al. 2019, \"Dying ReLU "
            "and initialization\").",
            "use leaky ReLUs, which keep a gradient for negative inputs (activation: leaky_relu)",
            [Change("model", ("arch", "activation"), "leaky_relu")],
            ("after_probe.units.max_dead_fraction" if when == "after the probe" else "at_init.units.max_dead_fraction",
             worst, "lower"))


class SaturatedUnits(Check):
    id, priority = "saturated_units", 71
    summary = "a large fraction of tanh/sigmoid units sit in their flat tails"

    def examine(self, evidence, setup):
        frac = get(evidence, "at_init.units.max_saturated_fraction")
        if not finite(frac) or frac < 0.3:
            return None
        init = init_for(setup)
        decrease = get(evidence, "probe.loss.relative_decrease")
        severity: Severity = "info" if finite(decrease) and decrease >= 0.5 else "warning"  # it learns anyway
        return self.finding(
            severity, f"{frac * 100:.0f}% of a layer's (unit, example) pairs are saturated at initialization",
            {"max_saturated_fraction": frac, "per_layer": get(evidence, "at_init.units.saturated_fraction"),
             "plot": "plots/init_signals.png"},
            "Where |h| is large φ'(h) ≈ 0, so a saturated unit passes almost no gradient back; too-large initial "
            "weights put tanh and sigmoid units there (survey §4.2; LeCun et al. 1998, Glorot & Bengio 2010).",
            f"initialize at a smaller scale (init: {init['name']})", [Change("model", ("init",), init)],
            ("at_init.units.max_saturated_fraction", frac, "lower"))


class LrTooSmall(Check):
    id, priority = "lr_too_small", 80
    summary = "the loss barely moves in the probe and the range test finds a far larger usable rate"

    def examine(self, evidence, setup):
        decrease = get(evidence, "probe.loss.relative_decrease")
        suggested = get(evidence, "lr_range.suggested_lr")
        if not (finite(decrease) and finite(suggested)) or decrease > 0.1 or suggested < 10 * setup.lr:
            return None
        if (get(evidence, "probe.steps") or 0) < MIN_PROBE_STEPS:  # a few steps of a utility stage prove nothing
            return None
        bound = get(evidence, "curvature.threshold.threshold")
        lam = get(evidence, "curvature.at_init.lambda_max")
        new_lr = suggested
        if finite(bound) and finite(lam) and lam > 0:  # never above half the stability bound
            new_lr = min(new_lr, setup.lr * 0.5 * bound / lam)
        if new_lr < 3 * setup.lr:
            return None
        return self.finding(
            "warning", f"the probe's loss fell by {decrease * 100:.1f}% only; the range test suggests η ≈ {suggested:.2g} "
            f"(now {setup.lr:.2g})",
            {"relative_decrease": decrease, "suggested_lr": suggested, "lr": setup.lr, "plot": "plots/lr_range.png"},
            "The learning-rate range test increases η exponentially during a short run: the rate where the loss falls "
            "fastest is a good constant rate, and one far below it wastes steps (survey §5.1; Smith 2017, "
            "\"Cyclical learning rates for training neural networks\").",
            f"raise the learning rate to {round_sig(new_lr)}", [lr_change(setup, new_lr)],
            ("probe.loss.relative_decrease", decrease, "higher"))


class PoorIsometry(Check):
    id, priority = "poor_isometry", 85
    summary = "the input–output Jacobian's singular values spread over orders of magnitude in a deep net (informational)"

    def examine(self, evidence, setup):
        jac = get(evidence, "at_init.jacobian")
        if not isinstance(jac, dict) or "skipped" in jac or setup.depth < 8:
            return None
        spread = jac.get("max_min_ratio")
        if not finite(spread) or spread < 1e3:
            return None
        return self.finding(
            "info", f"the input–output Jacobian's singular values span a factor {spread:.2g} (depth {setup.depth})",
            {"max_min_ratio": spread, "mean_sq": jac.get("mean_sq"), "std_sq": jac.get("std_sq")},
            "Deep networks train fastest when every singular value of the input–output Jacobian is near 1 "
            "(dynamical isometry), not only their mean square; orthogonal weights near the edge of chaos achieve it, "
            "Gaussian ones at depth do not (survey §4.2; Saxe et al. 2014, Pennington et al. 2017).",
            "orthogonal weights (init: orthogonal) bring the spectrum closer to isometry", [])


class EdgeOfStability(Check):
    id, priority = "edge_of_stability", 90
    summary = "after the probe the sharpness sits at the stability bound (informational)"

    def examine(self, evidence, setup):
        lam = get(evidence, "curvature.after_probe.lambda_max")
        bound = get(evidence, "curvature.threshold.threshold")
        if not (finite(lam) and finite(bound)) or get(evidence, "probe.status") == "diverged":
            return None
        ratio = lam / bound
        if ratio < 0.8:
            return None
        return self.finding(
            "info", f"after the probe λmax = {lam:.3g} is {ratio:.2f}× the stability bound {bound:.3g}",
            {"lambda_max": lam, "threshold": bound, "ratio": ratio},
            "Full- and large-batch training typically sharpens until λmax reaches 2/η and then hovers there while the "
            "loss keeps falling non-monotonically: expected, not a failure (survey §6.2; Cohen et al. 2021).",
            "nothing to change; lower η if the loss oscillates too much", [])


class BatchNoise(Check):
    id, priority = "batch_too_small", 95
    summary = "the gradient-noise scale is far above the batch size (informational)"

    def examine(self, evidence, setup):
        b_simple = get(evidence, "noise_scale.b_simple")
        if not finite(b_simple) or b_simple < 10 * setup.batch_size or setup.batch_size >= setup.n_train:
            return None
        batch = int(min(setup.n_train, 2 ** round(math.log2(b_simple))))
        return self.finding(
            "info", f"the gradient-noise scale B_simple = {b_simple:.3g} is {b_simple / setup.batch_size:.0f}× the batch",
            {"b_simple": b_simple, "batch_size": setup.batch_size},
            "Below the noise scale B_simple = tr Σ / |G|² a step's gradient is mostly noise, so a larger batch (with a "
            "proportionally larger rate) takes fewer steps for the same progress (survey §5.5; McCandlish et al. 2018).",
            f"a batch near {batch} would use the data-parallel budget better (with a warmup and a larger rate)", [])


#: the built-in checks, in the order their findings are ranked within a severity
CHECKS: list[Check] = [
    LrAboveCurvature(), ChaoticInit(), OrderedInit(), ForwardScale("exploding"), ForwardScale("vanishing"),
    GradientScale("exploding"), GradientScale("vanishing"), LogitScale(), DepthWithoutSkips(), NeedsWarmup(),
    Diverged(), UpdateRatio(), DeadUnits(), SaturatedUnits(), LrTooSmall(), PoorIsometry(), EdgeOfStability(),
    BatchNoise(),
]


def diagnose(evidence: dict[str, Any], setup: Setup, checks: list[Check] | None = None,
             on_error: Callable[[Check, Exception], None] | None = None) -> list[Finding]:
    """Every check's finding, most severe first, then by the check's priority (causes first)."""
    found = []
    for check in checks if checks is not None else CHECKS:
        try:
            result = check.examine(evidence, setup)
        except Exception as err:  # noqa: BLE001 - one broken check must not hide the others' findings
            if on_error is not None:
                on_error(check, err)
            continue
        if result is not None:
            found.append(result)
    return sorted(found, key=lambda f: (SEVERITIES.index(f.severity), f.priority))


def healthy(findings: list[Finding]) -> bool:
    """No critical or warning finding."""
    return not any(f.severity in SEVERE for f in findings)
