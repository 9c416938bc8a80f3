"""Data parallelism on CPUs (DistributedDataParallel, gloo): rank and world size, all-reduce,
per-rank sharding, and BatchNorm over the global batch.

Under ``torchrun --nproc_per_node=N`` every process calls :func:`init_distributed`; without it
(``WORLD_SIZE`` unset or 1) everything here is a no-op on a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dist:
    """This process's place in the group: ``rank`` of ``world`` processes (0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's share of ``idx``: every ``world``-th item from position ``rank``."""
        return idx[self.rank::self.world]

    def all_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over all ranks (float64)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed() -> Dist:
    """Join the gloo process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    torch.distributed.init_process_group("gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size())


def teardown_distributed(dist: Dist) -> None:
    """Leave the process group that :func:`init_distributed` joined (nothing when alone)."""
    if dist.world > 1:
        torch.distributed.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's copy flows back to every contribution."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch of all DDP ranks (CPU/gloo).

    torch's SyncBatchNorm only runs on GPUs. Sums, sums of squares and counts are all-reduced with
    autograd, so forward and backward equal one process seeing the whole batch. State-dict keys are
    those of BatchNorm2d.
    """

    @classmethod
    def from_batch_norm(cls, bn: torch.nn.BatchNorm2d) -> "GlobalBatchNorm2d":
        """A copy of ``bn`` (same parameters and running statistics) that normalizes over all ranks."""
        out = cls(bn.num_features)
        out.load_state_dict(bn.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        shape = (1, c, 1, 1)
        y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)
