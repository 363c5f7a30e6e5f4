"""Feeding packed batches: TokenBudgetSampler (length-bucketed batches under a token budget,
balanced across ranks), partition_balanced / sequence_cost (sequences over data-parallel ranks by
linear and attention compute) and PackCollator (a DataLoader collate_fn that packs examples into
Arrays, or into HuggingFace's packed-batch dict). No framework is imported here."""

from scree.data.collate import PackCollator
from scree.data.partition import partition_balanced, sequence_cost
from scree.data.token_budget import TokenBudgetSampler

__all__ = ["TokenBudgetSampler", "PackCollator", "partition_balanced", "sequence_cost"]
