"""Pure-PyTorch numerical kernels in the (B, H, T, D) layout; the token recurrences are the spec."""

from recallkit.ops.feature_maps import FEATURE_MAPS, feature_dim
from recallkit.ops.linear_attention import (
    linear_attention_chunked,
    linear_attention_quadratic,
    linear_attention_recurrent,
)

__all__ = [
    "FEATURE_MAPS",
    "feature_dim",
    "linear_attention_chunked",
    "linear_attention_quadratic",
    "linear_attention_recurrent",
]
