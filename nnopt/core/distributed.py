"""Data-parallel runs on torch.distributed: the process group, who does what, the batch shards.

``torchrun --nproc-per-node N -m nnopt run FILE`` (or ``nnopt run --nproc N FILE``, which
re-executes itself under ``torch.distributed.run``, as torchtune's ``tune run`` does) starts
N copies of the run; torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``, its rendezvous flags for several nodes) says which one each
is. With ``WORLD_SIZE`` of 1 or unset nothing here is used: no process group, the
single-process path unchanged.

Roles (PyTorch's DistributedDataParallel, Li et al. 2020, "PyTorch Distributed: experiences on
accelerating data parallel training"):

- **Rank 0 leads.** It alone plans the cache decisions, takes the stage locks, writes run
  records, artifacts, checkpoints and the plan index. Before it computes a stage whose kind
  is data-parallel (``Stage.data_parallel``: ``train``) it tells the other ranks, which then
  compute it with it; every other stage it computes alone while the others wait for its next
  word. So the ranks agree on every cache decision because only one makes it (a broadcast).
- **The others follow** (``follow``): they wait on a control channel (a gloo group, whatever
  the training backend, so that a rank waiting hours for a lock or an analysis holds no NCCL
  collective), and for each stage they are told of they plan the file themselves (the same
  keys), run the stage in a private scratch directory with a ``ReplicaContext`` that writes
  nothing, and discard it.
- **A global batch is split across ranks.** The epoch permutation is drawn from the same
  seeded generator on every rank; ``shard_bounds(B, rank, world)`` gives rank r its
  contiguous slice of each global batch of B = ``data.batch_size`` examples (sizes differ by
  at most one). Rank r's mean loss L_r over its n_r examples is scaled by w_r = n_r·K/B before
  backward; DDP averages gradients over the K ranks, so the update uses
  (1/K) Σ_r w_r ∇L_r = Σ_r (n_r/B) ∇L_r = ∇L_B, the mean-loss gradient of the global batch:
  1 and K processes take the same step up to rounding, whatever B mod K. The learning rate
  is the spec's, unscaled. The logged loss is Σ_r (n_r/B) L_r, all-reduced once per log
  window (not per step), so every rank sees the same values and agrees on a divergence.

Backend: ``nccl`` where the stage device is CUDA (rank r on ``cuda:LOCAL_RANK``), else ``gloo``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .loop import StepRule
from .stage import StageContext

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .loop import TrainLoop

#: how long a rank waits for another (a follower waits while the leader computes a long
#: analysis or waits for a lock another run holds): hours, not torch's 30-minute default
TIMEOUT_ENV = "NNOPT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0
#: set by ``nnopt run --nproc``: rank 0 writes its exit status there, for the launcher to exit with
EXIT_FILE_ENV = "NNOPT_RANK0_EXIT_FILE"

_control: Any = None  # the gloo group that carries the leader's words


# --------------------------------------------------------------------------- who am I
def world_size() -> int:
    """Processes in this run (torchrun's ``WORLD_SIZE``; 1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's rank (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0")) if world_size() > 1 else 0
    except ValueError:
        return 0


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0")) if world_size() > 1 else 0
    except ValueError:
        return 0


def launched() -> bool:
    """Whether this process is one of several that torchrun started."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """Whether the process group is up (``init`` was called in a launched process)."""
    return _control is not None


# --------------------------------------------------------------------------- the group
def init(device: str = "auto") -> None:
    """Join the process group from torchrun's environment: ``nccl`` when the run trains on
    CUDA, else ``gloo``, plus a gloo control group. Idempotent; a no-op when not launched."""
    global _control
    if not launched() or _control is not None:
        return
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    _control = dist.new_group(backend="gloo", timeout=timeout) if cuda else dist.group.WORLD


def shutdown() -> None:
    """Leave the process group (at the end of a run)."""
    global _control
    if _control is None:
        return
    import torch.distributed as dist

    _control = None
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: "torch.device") -> "torch.device":
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    import torch

    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled over the control group)."""
    import torch.distributed as dist

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier(group=_control)


def all_reduce_sum(tensor: "torch.Tensor") -> "torch.Tensor":
    """The sum over ranks of ``tensor`` (on the training backend), in place and returned."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# --------------------------------------------------------------------------- the leader's words
def lead_compute(key: str, resume: bool) -> None:
    """Rank 0: the followers are to compute the stage ``key`` with it now."""
    broadcast_object({"op": "compute", "key": key, "resume": resume})


def lead_done(code: int) -> None:
    """Rank 0: the run is over (exit status ``code``); the followers exit."""
    if active() and is_main():
        try:
            broadcast_object({"op": "done", "code": code})
        except Exception:  # noqa: BLE001 - a follower already gone: torchrun reports it
            pass


def follow(file: str, sets: list[str], store: Any) -> int:
    """A rank > 0: compute with the leader each stage it names, until it says done."""
    from .planner import load_plans

    plans = None
    while True:
        word = broadcast_object(None)
        if word["op"] == "done":
            return 0
        if plans is None:
            plans = load_plans(file, list(sets))
        found = [(p, s) for p in plans for s in p.stages if s.key == word["key"]]
        if not found:  # cannot happen for one file: the leader planned the same keys
            raise RuntimeError(f"rank {rank()}: no stage with key {word['key'][:16]} in {file}")
        from .runner import compute_replica

        compute_replica(*found[0], store)


class ReplicaContext(StageContext):
    """The context of a rank > 0: inputs as rank 0's, outputs in a scratch directory that
    nobody reads: no metrics, weights, masks, optimizer state or checkpoints are written."""

    def log_metrics(self, record: dict[str, Any]) -> None:
        pass

    def save_weights(self, state: dict[str, Any], step: int | None = None) -> Path:
        return self.out_dir / "unused"

    def save_masks(self, masks: dict[str, Any]) -> Path:
        return self.out_dir / "unused"

    def save_optimizer(self, optimizer: Any, step: int | None = None, model: Any = None) -> Path:
        return self.out_dir / "unused"

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None  # the stage receives rank 0's (``resume_state``)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"nnopt-rank{rank()}-"))


def discard_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- a stage's side
def resume_state(ctx: StageContext) -> dict[str, Any] | None:
    """The checkpoint a stage resumes from: rank 0's, sent to every rank (None: from scratch)."""
    state = ctx.load_checkpoint()
    return broadcast_object(state) if active() else state


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank_``'s contiguous slice of a global batch of ``n`` examples:
    the first ``n % world`` ranks take one more (``torch.tensor_split``'s rule)."""
    base, extra = divmod(n, world)
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (1 if rank_ < extra else 0)


class Sharding:
    """What the loop needs to train on its shard: this rank's slice of each global batch and
    the all-reduce of a window of losses (their sum over ranks is the global batch's mean)."""

    def __init__(self, rank_: int, world: int):
        self.rank, self.world = rank_, world

    def split(self, xb: "torch.Tensor", yb: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", float]:
        """This rank's part of the global batch and its weight n_r / B in the global mean."""
        n = int(xb.shape[0])
        lo, hi = shard_bounds(n, self.rank, self.world)
        return xb[lo:hi], yb[lo:hi], (hi - lo) / n

    def reduce(self, values: "torch.Tensor") -> "torch.Tensor":
        return all_reduce_sum(values)


class DataParallelStep(StepRule):
    """A plain-backward step (or a closure step, ``closure=True``) through a DDP module on
    this rank's shard: backward of w_r·L_r with w_r = n_r·K/B, so that DDP's mean over ranks
    is ∇L_B (module docstring); returns n_r/B·L_r, whose sum over ranks is L_B.

    With a closure (L-BFGS), every evaluation's loss handed to the optimizer is all-reduced
    to L_B, so that every rank's line search takes the same decisions (and the same number of
    evaluations: DDP's collectives stay matched)."""

    def __init__(self, ddp_model: Any, sharding: Sharding, closure: bool = False):
        self.net, self.sharding, self.closure = ddp_model, sharding, closure

    def _loss(self, loop: "TrainLoop", xb: "torch.Tensor", yb: "torch.Tensor", weight: float) -> "torch.Tensor":
        with loop.forward():
            out = self.net(xb)
            # an empty shard (a last batch smaller than K) still joins DDP's all-reduce, with
            # zero gradients, rather than a mean over nothing (NaN)
            loss = loop.loss_fn(out, yb) if xb.shape[0] else out.sum() * 0.0
        return loss

    def step(self, loop: "TrainLoop", xb: "torch.Tensor", yb: "torch.Tensor") -> "torch.Tensor":
        import torch

        world = self.sharding.world
        weight = loop.batch_weight
        optimizer = loop.optimizer
        if not self.closure:
            optimizer.zero_grad(set_to_none=True)
            loss = self._loss(loop, xb, yb, weight)
            (loss * (weight * world)).backward()
            for hook in loop.hooks.after_backward:
                hook(loop)
            optimizer.step()
            return loss.detach() * weight

        first: list[torch.Tensor] = []

        def closure() -> "torch.Tensor":
            optimizer.zero_grad(set_to_none=True)
            loss = self._loss(loop, xb, yb, weight)
            (loss * (weight * world)).backward()
            for hook in loop.hooks.after_backward:
                hook(loop)
            part = loss.detach() * weight
            if not first:
                first.append(part.clone())
            return all_reduce_sum(part.clone())

        optimizer.step(closure)
        return first[0] if first else torch.as_tensor(float("nan"))
