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
    over a short sliding window for local precision, and short convolutions in front of both.
    Deviations from the paper's models: its gated convolutions are BaseConv layers of their own (in
    the reference configs most layers, linear attention and the window at every fifth layer each),
    here a short conv inside each layer (the Zoology recipe); and its linear attention has 16 heads,
    here ``num_heads`` (1 by default).

    Layer ``2i`` is the linear attention, layer ``2i + 1`` the sliding window. That order is
    measured: on MQAR (V=128, T=32, 4 pairs, d=64, feature_dim 8, window 8) the 2-layer
    [window, linear] model was at 0.33 accuracy after 1000 steps while [linear, window] reached 0.99
    in 600. Its state is constant in the sequence length: ``2 * d_model * (window - 1)`` for the window's
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
    state ``H * (1 + f + f^2) * (d_model / H + 1)``, plus ``2 * d_model * (window - 1)`` for the window
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


def _ratio(linear_layers: int, recipe: str) -> None:
    if linear_layers < 1:
        raise ValueError(f"{recipe} linear_layers must be >= 1, got {linear_layers}")


def qwen3_next(
    num_heads: int = 2,
    attention_heads: int = 4,
    kv_heads: int = 1,
    linear_layers: int = 3,
    short_conv: int = 4,
) -> list[dict]:
    """Qwen3-Next's hybrid layout (Qwen team 2025, Qwen3-Next-80B-A3B model card and blog "Qwen3-Next:
    towards ultimate training & inference efficiency"): ``linear_layers`` Gated DeltaNet layers
    (3 in the model: its 48 layers are 12 x (3 Gated DeltaNet + 1 gated attention)), then one full
    softmax attention layer with grouped-query heads (16 query and 2 KV heads there) and RoPE.

    Deviations, all forced by recallkit's mixers or its scale: the attention layer has no sigmoid output
    gate and rotates all of each head's dims (Qwen3-Next: a gate, and RoPE on a quarter of the head);
    the Gated DeltaNet has as many query/key as value heads (Qwen3-Next: 16 and 32); the MoE feed-forward is
    recallkit's dense ``mlp``. Use ``num_layers`` a multiple of ``linear_layers + 1`` so the ratio holds.
    State per period: ``linear_layers * d_model^2 / num_heads`` plus the attention's KV cache
    ``2 * T * d_model * kv_heads / attention_heads`` and the conv tails.

    Args:
        num_heads: Gated DeltaNet heads.
        attention_heads: query heads of the attention layer.
        kv_heads: its key-value heads (grouped-query attention).
        linear_layers: Gated DeltaNet layers per attention layer.
        short_conv: taps of the causal short conv in front of every layer (0 = none).

    Returns:
        The mixer schedule, ``linear_layers + 1`` mixer config dicts.
    """
    _ratio(linear_layers, "qwen3_next")
    gdn = {"name": "gated_deltanet", "num_heads": num_heads, "short_conv": short_conv}
    return [*(dict(gdn) for _ in range(linear_layers)),
            {"name": "attention", "num_heads": attention_heads, "num_kv_heads": kv_heads, "position": "rope",
             "short_conv": short_conv}]


def kimi_linear(
    num_heads: int = 2,
    mla_heads: int = 2,
    kv_latent_dim: int = 16,
    linear_layers: int = 3,
    short_conv: int = 4,
) -> list[dict]:
    """Kimi Linear's hybrid layout (Kimi Team 2025, *Kimi Linear: an expressive, efficient attention
    architecture*, arXiv 2510.26692): ``linear_layers`` KDA layers (3 in the paper) per layer of
    multi-head latent attention without positional encoding (NoPE MLA: position comes from the KDA
    layers).

    Deviations: KDA as recallkit's ``kda`` (its docstring lists them); the MLA keeps no query
    compression; the MoE feed-forward is recallkit's dense ``mlp``. Use ``num_layers`` a multiple of
    ``linear_layers + 1`` so the ratio holds. State per period: ``linear_layers * d_model^2 / num_heads``
    plus the MLA's latent cache ``kv_latent_dim * T`` and the conv tails.

    Args:
        num_heads: KDA heads.
        mla_heads: heads of the MLA layer.
        kv_latent_dim: d_c, the latent each token adds to the MLA cache.
        linear_layers: KDA layers per MLA layer.
        short_conv: taps of the causal short conv in front of every layer (0 = none).

    Returns:
        The mixer schedule, ``linear_layers + 1`` mixer config dicts.
    """
    _ratio(linear_layers, "kimi_linear")
    kda = {"name": "kda", "num_heads": num_heads, "short_conv": short_conv}
    return [*(dict(kda) for _ in range(linear_layers)),
            {"name": "mla", "num_heads": mla_heads, "kv_latent_dim": kv_latent_dim, "rope_dim": 0,
             "short_conv": short_conv}]


def samba(d_state: int = 16, window: int = 2048, window_heads: int = 1) -> list[dict]:
    """Samba (Ren, Liu, Lu, Shen, Liang, Chen 2024, *Samba: simple hybrid state space models for
    efficient unlimited context language modeling*, arXiv 2406.07522): Mamba layers alternating with
    sliding-window attention (window 2048 in the paper, RoPE), each followed by an MLP as every
    recallkit block is. The state is constant in the sequence length once T >= ``window - 1``: Mamba's
    ``expand * d_model * (d_state + d_conv - 1)`` plus the window's ``2 * d_model * (window - 1)``.

    Args:
        d_state: Mamba's states per inner channel.
        window: tokens each query of the sliding-window layer sees, itself included.
        window_heads: heads of the sliding-window layer.

    Returns:
        The mixer schedule, two mixer config dicts.
    """
    if window < 1:
        raise ValueError(f"samba window must be >= 1, got {window}")
    return [{"name": "mamba", "d_state": d_state},
            {"name": "attention", "num_heads": window_heads, "position": "rope", "window": window}]
