"""Sequence mixers behind one contract (``base.Mixer``), registered by short key."""

from typing import Any

from recallkit.base_config import MixerConfig
from recallkit.mixers.attention import Attention
from recallkit.mixers.base import Mixer, state_numel
from recallkit.mixers.base_conv import BaseConv
from recallkit.mixers.deltanet import DeltaNet
from recallkit.mixers.fox import FoX
from recallkit.mixers.gated_deltanet import GatedDeltaNet
from recallkit.mixers.gated_deltaproduct import GatedDeltaProduct
from recallkit.mixers.gla import GLA
from recallkit.mixers.gsa import GSA
from recallkit.mixers.h3 import H3
from recallkit.mixers.hgrn2 import HGRN2
from recallkit.mixers.hyena import Hyena
from recallkit.mixers.kda import KDA
from recallkit.mixers.linear_attention import LinearAttention
from recallkit.mixers.log_linear import LogLinearMamba2
from recallkit.mixers.longhorn import Longhorn
from recallkit.mixers.mamba import Mamba
from recallkit.mixers.mamba2 import Mamba2
from recallkit.mixers.mamba3 import Mamba3
from recallkit.mixers.mla import MLA
from recallkit.mixers.pla import PLA
from recallkit.mixers.retnet import RetNet
from recallkit.mixers.rwkv6 import RWKV6
from recallkit.mixers.rwkv7 import RWKV7
from recallkit.mixers.short_conv import ShortConvMixer

MIXERS: dict[str, type[Mixer]] = {
    mixer.Config.model_fields["name"].default: mixer
    for mixer in (Attention, BaseConv, DeltaNet, FoX, GatedDeltaNet, GatedDeltaProduct, GLA, GSA, H3, HGRN2,
                  Hyena, KDA, LinearAttention, LogLinearMamba2, Longhorn, Mamba, Mamba2, Mamba3, MLA, PLA,
                  RetNet, RWKV6, RWKV7)
}
MixerConfig.register(*(mixer.Config for mixer in MIXERS.values()))


def mixer_config(spec: dict[str, Any] | MixerConfig) -> MixerConfig:
    """A mixer config from ``{"name": key, **fields}`` (as stored in a run's JSON) or an instance."""
    return MixerConfig.resolve(spec)


def build_mixer(d_model: int, config: MixerConfig) -> Mixer:
    """Instantiate the registered mixer for ``config.name``, wrapped in a short conv if asked."""
    mixer = MIXERS[config.name](d_model, config)
    return ShortConvMixer(mixer, config.short_conv) if config.short_conv else mixer


__all__ = ["MIXERS", "Mixer", "build_mixer", "mixer_config", "state_numel"]
