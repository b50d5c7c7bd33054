"""Sequence mixers behind one contract (``base.Mixer``), registered by short key."""

from recallkit.mixers.attention import Attention
from recallkit.mixers.base import Mixer, state_numel
from recallkit.mixers.base_conv import BaseConv
from recallkit.mixers.deltanet import DeltaNet
from recallkit.mixers.gated_deltanet import GatedDeltaNet
from recallkit.mixers.gla import GLA
from recallkit.mixers.h3 import H3
from recallkit.mixers.hyena import Hyena
from recallkit.mixers.linear_attention import LinearAttention
from recallkit.mixers.mamba import Mamba
from recallkit.mixers.mamba2 import Mamba2
from recallkit.mixers.mla import MLA
from recallkit.mixers.pla import PLA
from recallkit.mixers.retnet import RetNet
from recallkit.mixers.short_conv import ShortConvMixer

MIXERS: dict[str, type[Mixer]] = {
    "attention": Attention,
    "base_conv": BaseConv,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "gla": GLA,
    "h3": H3,
    "hyena": Hyena,
    "linear_attention": LinearAttention,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "mla": MLA,
    "pla": PLA,
    "retnet": RetNet,
}


def build_mixer(d_model: int, config) -> Mixer:
    """Instantiate the registered mixer for ``config.name``, wrapped in a short conv if asked."""
    mixer = MIXERS[config.name](d_model, config)
    return ShortConvMixer(mixer, config.short_conv) if config.short_conv else mixer


__all__ = ["MIXERS", "Mixer", "build_mixer", "state_numel"]
