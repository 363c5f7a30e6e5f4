"""Bridges between scree.Array and the layouts users carry today: FlashAttention cu_seqlens,
HuggingFace padded batches with attention_mask, torch.nested jagged tensors, Arrow list arrays,
HuggingFace datasets columns and awkward arrays; and the serving engines' paged KV metadata
(vLLM, SGLang, FlashInfer) <-> scree.PagedKV."""

from scree.bridges.arrow import from_arrow, to_arrow
from scree.bridges.awkward import from_awkward, to_awkward
from scree.bridges.datasets import from_datasets
from scree.bridges.cu_seqlens import cu_seqlens_from_lengths, from_cu_seqlens, from_position_ids, to_cu_seqlens
from scree.bridges.hf import from_hf_padded, to_hf_padded
from scree.bridges.serving import (
    flashinfer_queries, from_flashinfer, from_sglang, from_vllm, sglang_queries, to_flashinfer, to_sglang, to_vllm,
    vllm_queries,
)
from scree.bridges.torch_nested import from_torch_nested, to_torch_nested

__all__ = [
    "to_cu_seqlens", "from_cu_seqlens", "cu_seqlens_from_lengths", "from_position_ids",
    "from_hf_padded", "to_hf_padded", "to_torch_nested", "from_torch_nested", "from_arrow", "to_arrow", "from_datasets",
    "from_awkward", "to_awkward", "from_vllm", "to_vllm", "vllm_queries", "from_sglang", "to_sglang", "sglang_queries",
    "from_flashinfer", "to_flashinfer", "flashinfer_queries",
]
