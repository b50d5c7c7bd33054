"""Sequence mixers behind one contract (``base.Mixer``), registered by short key."""

from recallkit.mixers.attention import Attention
from recallkit.mixers.base import Mixer, state_numel
from recallkit.mixers.linear_attention import LinearAttention
from recallkit.mixers.short_conv import ShortConvMixer

MIXERS: dict[str, type[Mixer]] = {
    "attention": Attention,
    "linear_attention": LinearAttention,
}


def build_mixer(d_model: int, config) -> Mixer:
    """Instantiate the registered mixer for ``config.name``, wrapped in a short conv if asked."""
    mixer = MIXERS[config.name](d_model, config)
    return ShortConvMixer(mixer, config.short_conv) if config.short_conv else mixer


__all__ = ["MIXERS", "Mixer", "build_mixer", "state_numel"]
