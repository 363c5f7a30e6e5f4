"""Feeding packed batches: TokenBudgetSampler (length-bucketed batches under a token budget,
balanced across ranks) and PackCollator (a DataLoader collate_fn that packs examples into Arrays,
or into HuggingFace's packed-batch dict). No framework is imported here."""

from scree.data.collate import PackCollator
from scree.data.token_budget import TokenBudgetSampler

__all__ = ["TokenBudgetSampler", "PackCollator"]
