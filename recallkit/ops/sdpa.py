"""torch's scaled dot-product attention, on its math backend inside ``fixed_paths()``.

Under ``torch.func.vmap`` (packed training runs its members in ``fixed_paths()``) the fused CPU
kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no batching rule, so vmap runs it member
by member; the math backend is made of batched matmuls and a softmax, which vmap batches.
"""

from __future__ import annotations

import contextlib

import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from recallkit.ops.numerics import paths_fixed


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, **kwargs)``; the math backend under fixed paths."""
    with sdpa_kernel(SDPBackend.MATH) if paths_fixed() else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
