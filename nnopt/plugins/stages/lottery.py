"""The ``lottery`` block: iterative magnitude pruning (IMP) written as one stage (SPEC §2).

A block is a stage kind that stands for other stages (``Stage.expand``): at plan time the
planner replaces ``stages.BLOCK`` by the stages below, each validated, keyed and cached like a
stage written in the file. Round ``K``'s stages depend only on round ``K-1``'s and on the dense
stage, never on ``rounds``: raising ``rounds`` from 5 to 10 leaves rounds 1-5 with the keys
they had (cached) and computes rounds 6-10.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from nnopt.core.component import PrunerRef, WeightRef
from nnopt.core.errors import StageError, did_you_mean
from nnopt.core.spec import ExpansionError
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

#: the controls a round can be compared with (``rewind``'s ``control`` values besides none)
CONTROLS = ("reinit", "random_mask", "sign_only")
#: the most rounds a block may have: each is 2 + 2·len(controls) stages (0.8^200 of the
#: weights would remain at 20% a round: far past any use)
MAX_ROUNDS = 200
#: keys of the dense stage a round's training does not repeat: where it starts (``from``,
#: the rewound ticket instead), which steps it keeps and which analyzers it tracks
NOT_RECIPE = ("from", "keep", "track")
#: keys a stage may set for itself; the block's, when given, apply to all its stages
OWN = ("seed", "data", "model", "loss")
#: the stage kind of the block's summary stage (the block's own id): its table and plots
REPORT_KIND = "lottery_report"


def _control(value: str) -> str:
    if value not in CONTROLS:
        raise PydanticCustomError("value_error", "unknown control '{name}'; expected one of: {known}",
                                  {"name": value, "known": ", ".join(CONTROLS), "suggestion": did_you_mean(value, CONTROLS)})
    return value


Control = Annotated[str, AfterValidator(_control)]


class LotterySpec(StageSpec):
    """``kind: lottery``: the dense run, how many rounds, how to prune, where to rewind, controls."""

    from_: WeightRef = Field(..., alias="from", description="the dense train stage: round 1 prunes its final weights, "  # type: ignore[assignment]
                             "and every round's training repeats its recipe (optimizer, schedule, epochs/steps, "
                             "data/model/loss, ...; not keep or track)")
    rounds: int = Field(..., ge=1, le=MAX_ROUNDS, description="pruning rounds; round K keeps (1 - fraction)^K of the "
                        "prunable weights when the pruner removes a fraction of the still-unpruned ones")
    prune: PrunerRef = Field(  # type: ignore[valid-type]
        "magnitude", validate_default=True,
        description="the pruner of every round (kind `pruners`), e.g. {name: magnitude, scope: global, fraction: 0.2}")
    rewind_to: int = Field(0, ge=0, description="the step N of the dense stage every round rewinds to (0: the original "
                           "initialization; N > 0: late rewinding); the dense stage must keep it (keep: [N])")
    controls: list[Control] = Field(default_factory=list, description="controls trained beside every round's ticket, "
                                    "under the same sparsity: reinit, random_mask, sign_only")
    curves: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="rounds whose learning curves are plotted (0: the dense run; default: the dense run and "
        "up to four rounds evenly spaced, the last included)")

    @field_validator("from_")
    @classmethod
    def _final_weights(cls, ref: WeightRef) -> WeightRef:
        if ref.step is not None:
            raise ValueError(f"'from' names the dense train stage itself (round 1 prunes its final weights), not a "
                             f"kept step; write from: {ref.stage} and rewind_to: {ref.step}")
        return ref

    @field_validator("controls")
    @classmethod
    def _once_each(cls, controls: list[str]) -> list[str]:
        return list(dict.fromkeys(controls))  # [reinit, reinit] trains one reinit control a round

    @model_validator(mode="after")
    def _curves_in_range(self) -> "LotterySpec":
        late = [c for c in self.curves or () if c > self.rounds]
        if late:
            raise ValueError(f"curves names round {late[0]}, and the block has {self.rounds} rounds")
        return self


def default_curves(rounds: int) -> list[int]:
    """The dense run (0) and up to four rounds evenly spaced, the last included."""
    return sorted({0} | {max(1, round(rounds * i / 4)) for i in range(1, 5)})


class Lottery(Stage):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019, "The lottery ticket
    hypothesis"; late rewinding: Frankle et al. 2019/2020), and its controls, as one block.

    With dense stage ``D`` (``from``), ``N`` = ``rewind_to`` and ``p`` the pruner, round
    ``K = 1 … rounds`` is three stages (ids ``BLOCK.rK...``):

    - ``BLOCK.rK.prune``: ``kind: prune``, ``method: p``, from ``D`` (K = 1) or ``BLOCK.r(K-1)``:
      prunes the last round's *trained* weights, under the masks they already obey;
    - ``BLOCK.rK.rewind``: ``kind: rewind``, from ``BLOCK.rK.prune`` (its masks), ``to: D@N``;
    - ``BLOCK.rK``: the round's training, from ``BLOCK.rK.rewind`` (masked training), with
      ``D``'s recipe: every key of ``D`` except ``from``, ``keep`` and ``track``.

    and, for each control ``C`` in ``controls``, ``BLOCK.rK.C.rewind`` (the same rewind with
    ``control: C``) and ``BLOCK.rK.C`` (its training): controls share the ticket's sparsity
    level but are not pruned further. ``seed``/``data``/``model``/``loss`` written on the block
    apply to every stage it stands for; otherwise the round's training takes those ``D``
    writes, and prune/rewind inherit them along ``from`` as any stage does.

    The block's own id is a last stage of kind ``lottery_report`` reading every round's
    stages: the result table (round, weights remaining %, test accuracy and loss, step of
    best test loss) for the ticket and each control, and the plots.
    """

    Params: ClassVar[type[LotterySpec]] = LotterySpec
    cache_version: ClassVar[int] = 1

    @classmethod
    def expand(cls, stage_id: str, raw_spec: dict[str, Any], all_stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
        spec = cls.Params.model_validate(raw_spec)
        dense_id = spec.from_.stage
        if dense_id == stage_id:
            raise ExpansionError("a lottery block cannot start from itself; 'from' names the dense train stage", ("from",))
        dense = all_stages.get(dense_id)
        if dense is None:
            others = [s for s in all_stages if s != stage_id]
            raise ExpansionError(f"no stage '{dense_id}' in this pipeline", ("from",), did_you_mean(dense_id, others))
        if not isinstance(dense, dict) or dense.get("kind") != "train":
            kind = dense.get("kind") if isinstance(dense, dict) else None
            raise ExpansionError(f"'from' names the dense run whose training every round repeats: a train stage, and "
                                 f"'{dense_id}' is {f'of kind {kind}' if kind else 'not a stage mapping'}", ("from",))
        own = {k: copy.deepcopy(raw_spec[k]) for k in OWN if raw_spec.get(k) is not None}
        recipe = {k: copy.deepcopy(v) for k, v in dense.items() if k not in NOT_RECIPE and not (k in OWN and v is None)}
        recipe.update(own)
        method = copy.deepcopy(raw_spec.get("prune", "magnitude"))
        target = f"{dense_id}@{spec.rewind_to}"

        out: dict[str, dict[str, Any]] = {}
        previous = dense_id
        tickets: list[str] = []
        controls: dict[str, list[str]] = {c: [] for c in spec.controls}
        for k in range(1, spec.rounds + 1):
            rid = f"{stage_id}.r{k}"
            out[f"{rid}.prune"] = {"kind": "prune", "from": previous, "method": copy.deepcopy(method), **copy.deepcopy(own)}
            out[f"{rid}.rewind"] = {"kind": "rewind", "from": f"{rid}.prune", "to": target, **copy.deepcopy(own)}
            out[rid] = {**copy.deepcopy(recipe), "from": f"{rid}.rewind"}
            for c in spec.controls:
                out[f"{rid}.{c}.rewind"] = {"kind": "rewind", "from": f"{rid}.prune", "to": target, "control": c,
                                            **copy.deepcopy(own)}
                out[f"{rid}.{c}"] = {**copy.deepcopy(recipe), "from": f"{rid}.{c}.rewind"}
                controls[c].append(f"{rid}.{c}")
            tickets.append(rid)
            previous = rid
        out[stage_id] = {"kind": REPORT_KIND, "dense": dense_id, "tickets": tickets, "controls": controls,
                         "curves": spec.curves if spec.curves is not None else default_curves(spec.rounds)}
        return out

    @classmethod
    def origin(cls, stage_id: str, raw_spec: dict[str, Any], generated_id: str, key: str) -> tuple[Any, ...]:
        block = ("stages", stage_id)

        def written(name: str) -> tuple[Any, ...]:
            return block + (name,) if name in raw_spec else block

        if key in OWN and key in raw_spec:
            return block + (key,)
        if generated_id == stage_id:  # the report
            return written("curves") if key == "curves" else written("from") if key == "dense" else block
        if generated_id.endswith(".prune"):
            return {"method": written("prune"), "from": written("from") if generated_id == f"{stage_id}.r1.prune"
                    else block, "kind": written("kind")}.get(key, block)
        if generated_id.endswith(".rewind"):
            return {"to": written("rewind_to"), "control": written("controls"), "kind": written("kind")}.get(key, block)
        if key == "from":
            return block
        try:  # the round's training: its recipe is the dense stage's, errors in it are written there
            dense_id = WeightRef.model_validate(raw_spec.get("from")).stage
        except ValueError:
            return block
        return ("stages", dense_id, key)

    def run(self, ctx: StageContext) -> StageOutcome:
        raise StageError("a lottery block is expanded into its prune/rewind/train stages when the pipeline is "
                         "planned; it never runs itself")
