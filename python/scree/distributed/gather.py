"""The collective under context parallelism, on torch.distributed (NCCL on GPUs, gloo on CPU): every
rank's local rows of a sharded packed batch gathered into the full batch, in its original order,
on every rank, differentiably. Forward: an all-gather of each rank's rows (padded to the largest
rank's count; the ShardPlan says how many each has), then one index into the original order.
Backward: rank r's rows receive the sum over ranks of the gradients each rank's loss sent to them:
the full gradient laid back into the all-gather's padded (world_size * pad) layout, then a
reduce-scatter of it on NCCL (each rank receives only its own block, 1 / world_size of an
all-reduce's result), or, where the backend has none (gloo), an all-reduce of it and this rank's
block. Both read the same layout, so the gloo tests cover everything but the collective itself.

`unshard(local, plan)` is this over an Array: the full batch back on every rank."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from scree._array import Array
from scree._errors import ArgumentError
from scree.distributed.shard import ShardPlan

__all__ = ["gather_full", "unshard"]


def _full_index(plan: ShardPlan, pad: int) -> np.ndarray:
    """For every row of the full packed batch, its row in the all-gathered (world_size * pad) buffer."""
    index = np.empty(int(plan.lengths.sum()), dtype=np.int64)
    for r in range(plan.world_size):
        rows = plan.rows(r)
        index[rows] = r * pad + np.arange(rows.size, dtype=np.int64)
    return index


def check_group(plan: ShardPlan, group: Any) -> None:
    """The plan must describe this rank of this group (a plan made for another rank would gather
    rows into the wrong places without any error)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ArgumentError("scree.distributed needs an initialised torch.distributed process group")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if (plan.world_size, plan.rank) != (world, rank):
        raise ArgumentError(f"the ShardPlan is for rank {plan.rank} of {plan.world_size}, but this process is rank "
                            f"{rank} of a group of {world}")


def gather_full(local: Any, plan: ShardPlan, group: Any = None) -> Any:
    """Every rank's local rows (a torch tensor, rows in the plan's local order) as the full packed
    batch on every rank, with gradients flowing back to each rank's rows."""
    check_group(plan, group)
    return _gather_function().apply(local, plan, group)


def unshard(local: Array, plan: ShardPlan, group: Any = None) -> Array:
    """The full packed batch (original sequences and order) from every rank's local Array, on every
    rank (an all-gather; differentiable)."""
    if not isinstance(local, Array):
        raise ArgumentError(f"unshard takes a scree.Array, got {type(local).__name__}")
    if local.num_sequences != plan.lengths.size or local.total != int(plan.local_lengths().sum()):
        raise ArgumentError(f"the Array has {local.num_sequences} sequences and {local.total} tokens; this rank's "
                            f"share in the plan has {plan.lengths.size} and {int(plan.local_lengths().sum())}")
    values = gather_full(local.values, plan, group)
    ns = local._ns
    return Array._trusted(values, ns.from_numpy(plan.starts, like=values), plan.starts,
                          int(plan.lengths.max(initial=0)))


@functools.lru_cache(maxsize=1)
def _gather_function() -> Any:
    """The autograd Function, built on first use (importing scree.distributed imports no torch)."""
    import torch
    import torch.distributed as dist

    class GatherFull(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, local: Any, plan: ShardPlan, group: Any) -> Any:
            pad = max(plan.max_local_tokens(), 1)
            buf = local.new_zeros((pad,) + tuple(local.shape[1:]))
            buf[: local.shape[0]] = local
            parts = [torch.empty_like(buf) for _ in range(plan.world_size)]
            dist.all_gather(parts, buf, group=group)
            index = torch.from_numpy(_full_index(plan, pad)).to(local.device)
            ctx.plan, ctx.group, ctx.pad, ctx.index, ctx.count = plan, group, pad, index, local.shape[0]
            return torch.cat(parts)[index]

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, None, None]:
            plan, pad = ctx.plan, ctx.pad
            padded = grad.new_zeros((plan.world_size * pad,) + tuple(grad.shape[1:]))
            padded[ctx.index] = grad
            if dist.get_backend(ctx.group) == "nccl":
                mine = grad.new_empty((pad,) + tuple(grad.shape[1:]))
                dist.reduce_scatter_tensor(mine, padded, group=ctx.group)
            else:
                dist.all_reduce(padded, group=ctx.group)
                mine = padded[plan.rank * pad:(plan.rank + 1) * pad]
            return mine[: ctx.count], None, None

    return GatherFull
