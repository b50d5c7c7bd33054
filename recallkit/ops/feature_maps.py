"""Feature maps phi for linear attention, applied to the last dimension of (..., d) tensors.

- ``identity``: phi(x) = x (not positive: use without normalisation);
- ``elu``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020);
- ``relu``: phi(x) = relu(x);
- ``taylor``: the 2nd-order Taylor map of exp(q.k / sqrt d) from Based,
  phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt 2 * sqrt d)], so that
  phi(q).phi(k) = 1 + q.k / sqrt d + (q.k)^2 / (2 d) > 0; d = 16 gives 1 + 16 + 256 = 273 features.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def taylor(x: Tensor) -> Tensor:
    """Based's Taylor feature map: (..., d) -> (..., 1 + d + d^2)."""
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / (math.sqrt(2.0) * math.sqrt(d))
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, outer], dim=-1)


FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "elu": lambda x: F.elu(x) + 1.0,
    "relu": F.relu,
    "taylor": taylor,
}

POSITIVE_FEATURE_MAPS = frozenset({"elu", "relu", "taylor"})


def feature_dim(feature_map: str, d: int) -> int:
    """Output width of a feature map applied to d-dimensional inputs."""
    return 1 + d + d * d if feature_map == "taylor" else d
