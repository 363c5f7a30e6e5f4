"""Role: the Kernel Hub build variant of the local kernel repository `scree/flash-attn`
(scree.integrations.transformers.register_kernel): FlashAttention-2's API computed by scree."""

from scree.integrations.flash_api import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]
