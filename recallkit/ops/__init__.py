"""Pure-PyTorch numerical kernels in the (B, H, T, D) layout; the token recurrences are the spec.

Every kernel takes its per-token inputs positionally and ``state`` (the recurrent state to start
from, None for zeros) and ``chunk_size`` (chunked forms) by keyword only.
"""

from recallkit.ops.delta_product import delta_product_chunked, delta_product_recurrent
from recallkit.ops.delta_rule import delta_rule_chunked, delta_rule_recurrent
from recallkit.ops.diagonal_ssm import (
    diagonal_ssm_conv,
    diagonal_ssm_kernel,
    diagonal_ssm_recurrent,
    h3_ssm_chunked,
    h3_ssm_recurrent,
)
from recallkit.ops.feature_maps import FEATURE_MAPS, feature_dim
from recallkit.ops.forgetting_attention import forgetting_attention_chunked, forgetting_attention_recurrent
from recallkit.ops.gated_linear_attention import (
    gated_linear_attention_chunked,
    gated_linear_attention_quadratic,
    gated_linear_attention_recurrent,
)
from recallkit.ops.gsa import gsa_chunked, gsa_recurrent, gsa_slot_scores_chunked
from recallkit.ops.kda import kda_chunked, kda_recurrent
from recallkit.ops.linear_attention import (
    linear_attention_chunked,
    linear_attention_quadratic,
    linear_attention_recurrent,
)
from recallkit.ops.log_linear import (
    LogLinearState,
    log_linear_chunked,
    log_linear_quadratic,
    log_linear_recurrent,
)
from recallkit.ops.long_conv import causal_conv_reference, fft_causal_conv
from recallkit.ops.longhorn import longhorn_chunked, longhorn_recurrent
from recallkit.ops.mamba3 import mamba3_chunked, mamba3_recurrent
from recallkit.ops.rwkv6 import rwkv6_chunked, rwkv6_recurrent
from recallkit.ops.rwkv7 import rwkv7_chunked, rwkv7_recurrent
from recallkit.ops.selective_scan import selective_scan_chunked, selective_scan_recurrent

__all__ = [
    "FEATURE_MAPS",
    "LogLinearState",
    "causal_conv_reference",
    "delta_product_chunked",
    "delta_product_recurrent",
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "diagonal_ssm_conv",
    "diagonal_ssm_kernel",
    "diagonal_ssm_recurrent",
    "feature_dim",
    "fft_causal_conv",
    "forgetting_attention_chunked",
    "forgetting_attention_recurrent",
    "gated_linear_attention_chunked",
    "gated_linear_attention_quadratic",
    "gated_linear_attention_recurrent",
    "gsa_chunked",
    "gsa_recurrent",
    "gsa_slot_scores_chunked",
    "h3_ssm_chunked",
    "h3_ssm_recurrent",
    "kda_chunked",
    "kda_recurrent",
    "linear_attention_chunked",
    "linear_attention_quadratic",
    "linear_attention_recurrent",
    "log_linear_chunked",
    "log_linear_quadratic",
    "log_linear_recurrent",
    "longhorn_chunked",
    "longhorn_recurrent",
    "mamba3_chunked",
    "mamba3_recurrent",
    "rwkv6_chunked",
    "rwkv6_recurrent",
    "rwkv7_chunked",
    "rwkv7_recurrent",
    "selective_scan_chunked",
    "selective_scan_recurrent",
]
