"""Data-parallel training over ``torch.distributed`` (DDP), for every job, launched by torchrun.

Launch (gloo on CPU, nccl on CUDA)::

    rnnkit train TASK --data D --out DIR --nproc 2 [...]      # re-runs itself under torchrun
    torchrun --standalone --nproc-per-node 2 -m rnnkit train TASK --data D --out DIR [...]
    rnnkit resume DIR --nproc 2

Any code that trains through :class:`rnnkit.training.trainer.Trainer` under torchrun is data
parallel: ``Trainer.fit`` calls :func:`context`, which joins the process group that torchrun's
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) describes.

What one step computes with W ranks is what one process computes on the same global batch:

* every rank draws the same global batch ``b`` from the (epoch, seed)-reproducible batch source
  and keeps the contiguous rows ``torch.tensor_split(range(B), W)[rank]`` (sizes differ by at
  most one). For text generation the rows are the B contiguous streams, so the streams are
  split across ranks and each rank carries the state of its own streams.
* the task's loss is a mean over rows (each row the same number of terms), so with ``l_r`` the
  mean over rank r's ``n_r`` rows the global mean is ``sum_r (n_r / B) l_r``. Rank r back-props
  ``W (n_r / B) l_r`` and DDP averages the gradients over the W ranks, giving the gradient of the
  global mean; clipping and the optimizer step then run on identical gradients everywhere.
* the logged loss is all-reduced (the global mean); rank 0 alone runs the evaluation on the
  full validation split and broadcasts the metrics, so best-weight selection and early stopping
  agree; a stop (time budget, callback) on any rank stops every rank after the same step.
* only rank 0 writes the run directory. The carried state is gathered to the global (L, B, H)
  before a checkpoint and split again on resume, so a checkpoint does not depend on W.

Dropout draws differ from a single process (each rank draws masks for its own rows), so the
1-process == W-process identity holds for models without dropout.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
from typing import Callable, Optional

import torch
import torch.distributed as dist

from rnnkit.errors import UserError


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun); readable before the group is joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_writer() -> bool:
    """True on the one process that writes files and prints progress (rank 0)."""
    return rank() == 0


def shard_rows(batch_size: int, world: int, r: int) -> tuple[int, int]:
    """[start, end) of rank r's rows of a B-row batch: contiguous, sizes differ by at most one."""
    base, extra = divmod(batch_size, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


class Local:
    """The single-process context: every hook is the identity."""

    world, rank, is_writer = 1, 0, True

    def wrap(self, model):
        return model

    def shard(self, batch):
        return batch, 1.0

    def backward_loss(self, loss, share: float):
        return loss

    def reduce_loss(self, value: torch.Tensor, share: float) -> float:
        return float(value)

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def on_rank0(self, fn: Callable[[], dict]) -> dict:
        return fn()

    def gather_state(self, state):
        return state

    def shard_state(self, state):
        return state


class DataParallel(Local):
    """W processes in an initialised process group; see the module docstring for the maths."""

    def __init__(self, device: torch.device):
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.is_writer = self.rank == 0
        self.device = device
        # gloo reduces CPU tensors; nccl needs them on this rank's GPU
        self._comm = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _rows(self, B: int) -> tuple[int, int, float]:
        start, end = shard_rows(B, self.world, self.rank)
        if end == start:  # fewer rows than ranks: run one row with weight 0 so DDP's all-reduce still meets
            return 0, 1, 0.0
        return start, end, (end - start) / B

    def shard(self, batch):
        """(rank's rows of ``batch``, their share n_r / B of the global mean)."""
        from dataclasses import replace

        start, end, share = self._rows(batch.inputs.shape[0])
        cut = lambda t: None if t is None else t[start:end]  # noqa: E731
        return replace(batch, inputs=cut(batch.inputs), targets=cut(batch.targets), lengths=cut(batch.lengths)), share

    def backward_loss(self, loss, share: float):
        """W * share * l_r: DDP's gradient average over W ranks then gives d(global mean)."""
        return loss * (self.world * share)

    def reduce_loss(self, value: torch.Tensor, share: float) -> float:
        t = (value.detach().double() * share).reshape(1).to(self._comm)
        dist.all_reduce(t)
        return float(t)

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def on_rank0(self, fn: Callable[[], dict]) -> dict:
        """fn() on rank 0, its result broadcast to every rank (None = an error there)."""
        box: list = [None]
        if self.is_writer:
            try:
                box[0] = fn()
            finally:
                out = [box[0]]
                dist.broadcast_object_list(out, src=0, device=self._comm)
        else:
            dist.broadcast_object_list(box, src=0, device=self._comm)
            if box[0] is None:
                raise UserError("evaluation failed on rank 0 (see its message)")
        return box[0]

    def gather_state(self, state):
        """The carried state of every rank's rows, concatenated: tensors (L, B, H) in row order."""
        if state is None:
            return None
        parts = state if isinstance(state, tuple) else (state,)
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, tuple(p.detach().cpu() for p in parts))
        full = tuple(torch.cat([g[i] for g in gathered if g is not None], dim=1).to(self.device)
                     for i in range(len(parts)))
        return full if isinstance(state, tuple) else full[0]

    def shard_state(self, state):
        """This rank's rows of a global carried state (the inverse of :meth:`gather_state`)."""
        if state is None:
            return None
        parts = state if isinstance(state, tuple) else (state,)
        start, end, _ = self._rows(parts[0].shape[1])
        out = tuple(p[:, start:end].contiguous() for p in parts)
        return out if isinstance(state, tuple) else out[0]


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (once); False when not launched by torchrun."""
    if world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    """Leave the process group at exit. The barrier first: a gloo rank that tore its group down
    while the other was still closing its connections sometimes aborted ("terminate called
    without an active exception", about 1 exit in 6 here)."""
    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        else:
            dist.barrier()
    except RuntimeError:  # another rank failed or is gone: nothing to wait for
        pass
    dist.destroy_process_group()


def context(device: torch.device) -> Local:
    """The training context: :class:`DataParallel` under torchrun, else :class:`Local`."""
    if not init_from_env(device):
        return Local()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return DataParallel(device)


def launch(nproc: int, argv: Optional[list] = None) -> int:
    """Re-run this ``rnnkit`` command line under torchrun with ``nproc`` processes; the exit status.

    ``argv`` is the full ``rnnkit`` argument list (default ``sys.argv[1:]``); ``--nproc N`` is
    removed from it before the workers get it.
    """
    if nproc < 1:
        raise UserError(f"--nproc: expected a positive integer, got {nproc}")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--nproc" or a.startswith("--nproc=") for a in argv):
        raise UserError("--nproc works from the rnnkit command line; otherwise run "
                        "`torchrun --standalone --nproc-per-node N -m rnnkit train ...`")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:  # this process becomes torchrun's agent: one interpreter start fewer than a subprocess
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "rnnkit", *strip_nproc(argv)])
    except ChildFailedError as exc:
        print(f"rnnkit: {len(exc.failures)} of {nproc} workers failed (their messages are above)", file=sys.stderr)
        return 1
    return 0


def strip_nproc(argv: list) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def in_worker() -> bool:
    """True inside a torchrun worker (then ``--nproc`` must not launch again)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or world_size() > 1



def launch_if_asked(argv: list) -> Optional[int]:
    """``rnnkit train|resume ... --nproc N``: run under torchrun, return its exit status; else None
    (then the command runs in this process, after :func:`strip_nproc`)."""
    asked = [a for a in argv if a == "--nproc" or a.startswith("--nproc=")]
    if not asked or not argv or argv[0] not in ("train", "resume"):
        return None
    if in_worker():
        raise UserError("--nproc inside a torchrun worker: drop it (torchrun already set the processes)")
    i = argv.index(asked[0])
    value = asked[0].split("=", 1)[1] if "=" in asked[0] else (argv[i + 1] if i + 1 < len(argv) else "")
    try:
        nproc = int(value)
    except ValueError:
        raise UserError(f"--nproc: expected a positive integer, got {value!r}") from None
    if nproc == 1:
        return None  # the caller runs here, without --nproc
    return launch(nproc, argv)
