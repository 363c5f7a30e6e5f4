"""scree.distributed: packed batches across several processes, on torch.distributed.

* Context parallelism: `shard_sequences(a, world_size, rank)` gives a rank its zigzag share of every
  sequence (chunks r and 2 cp - 1 - r of 2 cp) and the ShardPlan that places it;
  `context_parallel_attention(q, k, v, plan)` is varlen attention of a rank's queries over the whole
  batch (K and V all-gathered, gradients back to each rank's rows); `unshard(local, plan)` brings
  the full batch back to every rank.

Importing it imports no framework; the collectives import torch on first use."""

from scree.distributed.attention import context_parallel_attention
from scree.distributed.gather import gather_full, unshard
from scree.distributed.shard import ShardPlan, shard_sequences

__all__ = ["ShardPlan", "shard_sequences", "unshard", "gather_full", "context_parallel_attention"]
