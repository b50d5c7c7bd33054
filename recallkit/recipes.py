"""Named architectures that are a schedule of registered mixers rather than one mixer.

A recipe returns the ``mixer`` value of a :class:`~recallkit.config.ModelConfig`: a list of mixer
configs cycled over the layers (Zoology's hybrid). Use it with a ``label`` so plots name the recipe.
"""

from __future__ import annotations


def based(
    feature_dim: int = 16,
    window: int = 64,
    num_heads: int = 1,
    window_heads: int = 1,
    short_conv: int = 4,
) -> list[dict]:
    """Based (Arora et al. 2024, *Simple linear attention language models balance the recall-throughput
    tradeoff*, arXiv 2402.18668): Taylor linear attention for global recall, exact softmax attention
    over a short sliding window for local precision, and short convolutions (the paper's gated
    convolutions) in front of both.

    Layer ``2i`` is the linear attention, layer ``2i + 1`` the sliding window. That order is
    measured: on MQAR (V=128, T=32, 4 pairs, d=64, feature_dim 8, window 8) the 2-layer
    [window, linear] model was at 0.33 accuracy after 1000 steps while [linear, window] reached 0.99
    in 600. Its state is constant in the sequence length: ``2 * d_model * window`` for the window's
    KV cache plus the Taylor state ``H * (1 + f + f^2) * (d_model / H + 1)`` with
    ``f = feature_dim`` and the conv tails.

    Args:
        feature_dim: query/key width per head before the 2nd-order Taylor map (16 in the paper).
        window: tokens each query of the sliding-window layer sees, itself included (64 in the paper).
        num_heads: heads of the linear attention layer.
        window_heads: heads of the sliding-window layer.
        short_conv: taps of the causal short conv in front of every layer (0 = none).

    Returns:
        The mixer schedule, a list of two mixer config dicts.
    """
    if window < 1:
        raise ValueError(f"based window must be >= 1, got {window}")
    return [
        {"name": "linear_attention", "feature_map": "taylor", "feature_dim": feature_dim,
         "num_heads": num_heads, "short_conv": short_conv},
        {"name": "attention", "num_heads": window_heads, "position": "rope", "window": window,
         "short_conv": short_conv},
    ]


def jrt_rnn(
    feature_dim: int = 16,
    window: int = 64,
    num_heads: int = 1,
    window_heads: int = 1,
    short_conv: int = 4,
    conv_layers: int = 0,
    conv_kernel: int = 3,
) -> list[dict]:
    """JRT-RNN (Arora et al. 2024, *Just read twice: closing the recall gap for recurrent language
    models*, arXiv 2407.05483): the Based hybrid with its linear attention replaced by prefix linear
    attention (``pla``), which reads the prompt non-causally with its encoder projections and
    decodes with the causal linear-attention state. JRT-RNN is built on Based (Taylor feature map,
    sliding-window attention, short convolutions; the defaults are Based's feature dimension 16 and
    window 64) and trained with next-token prediction plus an MLM loss on the prefix
    (``TrainConfig.mlm``).

    The schedule is PLA, then the sliding window (the order :func:`based` measured best), then
    ``conv_layers`` BaseConv layers (gated short convolutions as layers of their own), cycled over
    the model's layers. The state is constant in the sequence length and, without conv layers,
    equals :func:`based`'s with the same arguments: PLA's decode state is exactly the causal Taylor
    state ``H * (1 + f + f^2) * (d_model / H + 1)``, plus ``2 * d_model * window`` for the window
    and ``d_model * (K - 1)`` per conv tail of K taps.

    Args:
        feature_dim: query/key width per head before the 2nd-order Taylor map (16 in the paper).
        window: tokens each query of the sliding-window layer sees, itself included (64 in the paper).
        num_heads: heads of the PLA layer.
        window_heads: heads of the sliding-window layer.
        short_conv: taps of the causal short conv in front of the PLA and window layers (0 = none).
        conv_layers: BaseConv layers appended to the schedule (0 = the 2-layer schedule of :func:`based`).
        conv_kernel: taps of those BaseConv layers.

    Returns:
        The mixer schedule, a list of ``2 + conv_layers`` mixer config dicts.
    """
    if window < 1:
        raise ValueError(f"jrt_rnn window must be >= 1, got {window}")
    if conv_layers < 0:
        raise ValueError(f"jrt_rnn conv_layers must be >= 0, got {conv_layers}")
    return [
        {"name": "pla", "feature_map": "taylor", "feature_dim": feature_dim, "num_heads": num_heads,
         "short_conv": short_conv},
        {"name": "attention", "num_heads": window_heads, "position": "rope", "window": window,
         "short_conv": short_conv},
        *({"name": "base_conv", "kernel_size": conv_kernel} for _ in range(conv_layers)),
    ]
