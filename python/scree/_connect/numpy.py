"""NumPy glue of the compiled varlen attention: plain calls of the CPU kernels (NumPy has no
autograd; scree.varlen_attention_backward gives the gradients)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree import _backends
from scree._array import Array
from scree.kernels import attention as K
from scree.kernels.attention_spec import AttentionSpec

_NS = _backends.get("numpy")


def serves(q: Any, v: Any) -> bool:
    """The C++ CPU kernels serve every float dtype and head dims."""
    return True


def varlen_attention(q: Array, k: Array, v: Array, spec: AttentionSpec,
                     with_lse: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    pq, pk = K.plan(q), K.plan(k)
    args = K.kernel_args(spec, pq.max_seqlen, pk.max_seqlen)
    return K.forward(_NS, q.values, k.values, v.values, pq.offsets, pk.offsets, args, with_lse=with_lse)
