"""torchrun / DDP helpers: one command runs single-process by default and shards across ranks under ``torchrun``.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and starts the process group (``nccl`` on CUDA, ``gloo`` on CPU). Without them
everything here is a no-op on a world of one process.

Evaluation must count every sample exactly once. :class:`torch.utils.data.DistributedSampler` pads the index list
(repeating samples) so that every rank gets the same number, which would make counts and accuracies wrong;
:func:`shard_indices` / :class:`ShardSampler` split without padding (ranks may get one sample more or less), and
:func:`all_reduce_sum` adds up the per-rank counts. Training uses :func:`make_distributed_sampler` (the usual
``DistributedSampler``) or splits each global batch with :func:`shard_indices`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
import torch.distributed as tdist
from torch.utils.data import Sampler

__all__ = [
    "DistInfo",
    "env_world_size",
    "resolve_device",
    "init_distributed",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "broadcast_object",
    "shard_indices",
    "ShardSampler",
    "make_distributed_sampler",
    "unwrap_model",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``local_rank`` and ``device``.

    ``initialized_here`` says whether :func:`init_distributed` started the process group (and so
    :func:`cleanup_distributed` should end it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={v!r} must be an integer (as torchrun sets it)") from e


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def _resolve_device(device, local_rank: int) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    else:
        raise TypeError(f"device must be a string like 'auto', 'cpu' or 'cuda', got {type(device).__name__}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for CUDA, but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def resolve_device(device="auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` -> the
    device; a bare ``"cuda"`` means ``cuda:<local_rank>``. ``ValueError`` if CUDA is asked for but missing."""
    return _resolve_device(device, local_rank)


def init_distributed(device="auto", backend: Optional[str] = None) -> DistInfo:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single-process info.

    Args:
        device: ``"auto"`` (CUDA ``local_rank`` if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        backend: ``None`` picks ``nccl`` for CUDA and ``gloo`` for CPU.

    Returns:
        :class:`DistInfo`. If a process group already exists it is reused (``initialized_here=False``).
    """
    world = env_world_size()
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    dev = _resolve_device(device, local_rank)
    if world == 1:
        return DistInfo(0, 1, 0, dev, None, False)
    if not tdist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the nccl backend needs CUDA devices; use device='cpu' with backend 'gloo'")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
        log.info("process group started: rank %d of %d, backend %s, device %s", rank, world, backend, dev)
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), local_rank, dev, tdist.get_backend(), here)


def cleanup_distributed(info: Optional[DistInfo] = None) -> None:
    """End the process group if :func:`init_distributed` started it (``info.initialized_here``)."""
    if info is not None and info.initialized_here and tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def get_rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place and returned); the identity in a single process.

    Integer counts stay exact: pass an ``int64`` tensor. With ``gloo`` the tensor must be on the CPU, with ``nccl``
    on the rank's GPU; the tensor is moved as needed and the result returned on its original device.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"all_reduce_sum takes a tensor, got {type(t).__name__}")
    if get_world_size() == 1:
        return t
    backend = tdist.get_backend()
    want = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    work = t.to(want)
    tdist.all_reduce(work, op=tdist.ReduceOp.SUM)
    if work is not t:
        t.copy_(work.to(t.device))
    return t


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from rank ``src`` to every rank (identity in a single process)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(indices: Sequence[int], rank: int, world_size: int) -> List[int]:
    """The strided shard ``indices[rank::world_size]`` -- no padding, no duplicates; shards cover every index once.

    >>> shard_indices(range(5), 1, 2)
    [1, 3]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(indices)[rank::world_size]


class ShardSampler(Sampler):
    """Evaluation sampler: this rank's strided shard of ``range(n)``, in order, without padding.

    Unlike ``DistributedSampler`` it never repeats a sample, so summed counts are exact.
    """

    def __init__(self, n: int, rank: Optional[int] = None, world_size: Optional[int] = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        self.n = n
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.indices = shard_indices(range(n), self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_distributed_sampler(dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
    """A ``DistributedSampler`` for training under torchrun (call ``set_epoch`` each epoch); with one process it
    still shuffles deterministically from ``seed`` so that 1- and N-process runs see the same order per epoch."""
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
