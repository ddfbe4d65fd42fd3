"""One process per device: the process group under ``torchrun`` and each rank's share of an epoch.

Under ``torchrun`` the process group is read from the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); each rank draws a disjoint share of every
epoch's crops (:class:`RankSampler`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank, world, local)


def select_device(info: Distributed) -> torch.device:
    """CUDA device of this rank when a GPU is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


class RankSampler(Sampler[int]):
    """Every ``world_size``-th index of each epoch, offset by the rank, in a shuffled order."""

    def __init__(self, length: int, info: Distributed, seed: int) -> None:
        self.length = length
        self.info = info
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.length)
        return iter(int(i) for i in order[self.info.rank :: self.info.world_size])

    def __len__(self) -> int:
        return self.share(self.length)

    def share(self, length: int) -> int:
        """How many of `length` items of an epoch this rank draws."""
        return len(range(self.info.rank, length, self.info.world_size))


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper, if any."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def barrier(info: Distributed) -> None:
    """Wait for every rank (nothing to do in a single process)."""
    if info.world_size > 1:
        dist.barrier()
