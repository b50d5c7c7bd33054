"""Prefix linear attention, PLA (JRT-RNN; Arora et al. 2024, *Just read twice: closing the recall gap
for recurrent language models*, arXiv 2407.05483).

With a feature map phi, decoder projections q, k_d, v_d on every token, encoder projections k_e, v_e
and a prefix of M tokens per example, the state read at position i is

    S_i = sum_{j<M} phi(k_e,j) v_e,j^T + sum_{j<=i} phi(k_d,j) v_d,j^T,   z_i = the same with v -> 1,
    y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i)   (the division only with ``normalize``),

at every position, inside the prefix and after it: the prefix is read non-causally (an output inside
it sees the whole prefix and nothing after it), the rest causally. Both sums are matrices of the
same shape, so after the prefix they are one: decoding is causal linear attention,
S_t = S_{t-1} + phi(k_d,t) v_d,t^T, and the state per layer holds exactly its
H * F * (d_v + normalize) numbers (F = 273 for the Taylor map with feature_dim 16).

JRT-RNN trains this with next-token prediction after the prefix plus a masked-language-model loss
inside it (``TrainConfig.mlm``); ``recallkit.recipes.jrt_rnn`` is the paper's hybrid.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from recallkit.mixers.linear_attention import LinearAttention, LinearAttentionConfig
from recallkit.ops.linear_attention import linear_attention_chunked
from recallkit.ops.numerics import compute_dtype


class PLAConfig(LinearAttentionConfig):
    """Prefix linear attention; the fields are causal linear attention's (Taylor map by default)."""

    name: Literal["pla"] = "pla"  # type: ignore[assignment]

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)

    def describe(self) -> str:
        return f"pla({self.feature_map})"


class PLA(LinearAttention):
    """Prefix linear attention; its state is causal linear attention's S (B, H, F, d_v + normalize).

    ``prefix_len`` (B,) gives M per example; None means M = 0, which is causal linear attention with
    the decoder projections. The whole prefix must lie within the first ``prefill`` call (state
    None): a later call (state given) continues causally and ignores ``prefix_len``, which the
    model passes to every call. ``step`` is linear attention's.
    """

    Config = PLAConfig
    prefix_aware = True

    def __init__(self, d_model: int, config: PLAConfig) -> None:
        super().__init__(d_model, config)  # decoder: qk -> (q, k_d), v -> v_d, out
        self.k_e = nn.Linear(d_model, config.num_heads * config.feature_dim)
        self.v_e = nn.Linear(d_model, d_model)

    def encoder_state(self, x: Tensor, prefix_len: Tensor) -> Tensor:
        """The non-causal prefix term sum_{j<M} phi(k_e,j) [v_e,j, 1]^T (the 1 only with ``normalize``).

        Args:
            x: (B, T, D) inputs; the encoder projections read x[b, :M_b].
            prefix_len: (B,) prefix length M per example; M >= T reads the whole input.

        Returns:
            The encoder state (B, H, F, d_v + normalize), laid out like the causal state.
        """
        B, T, _ = x.shape
        H = self.num_heads
        if prefix_len.shape != (B,):
            raise ValueError(f"pla prefix_len must have shape ({B},), got {tuple(prefix_len.shape)}")
        # mask positions j >= M per example instead of slicing to max(M): no host-device sync in training
        in_prefix = torch.arange(T, device=x.device) < prefix_len.to(x.device)[:, None]  # (B, T)
        k = self.phi(self.k_e(x).view(B, T, H, self.config.feature_dim).transpose(1, 2))  # (B, H, T, F)
        ct = compute_dtype(x)  # a sum over the prefix: at least float32, like the causal state
        k = k.to(ct) * in_prefix[:, None, :, None].to(ct)
        v = self.v_e(x).view(B, T, H, self.value_dim).transpose(1, 2).to(ct)  # (B, H, T, d_v)
        S = k.transpose(-1, -2) @ v  # (B, H, F, d_v)
        if not self.config.normalize:
            return S
        return torch.cat([S, k.sum(2).unsqueeze(-1)], dim=-1)  # z_e = sum_{j<M} phi(k_e,j), last column

    def _mix(self, x: Tensor, prefix_len: Tensor | None, state: Tensor | None) -> tuple[Tensor, Tensor]:
        q, k, v = self._project(x)  # phi(q), phi(k_d) (B, H, T, F); v_d (B, H, T, d_v)
        if state is None and prefix_len is not None:
            # the encoder term is a constant added to every position's state: start the causal
            # kernel from it, and its final state is already the sum the decoder continues from
            state = self.encoder_state(x, prefix_len)
        y, state = linear_attention_chunked(
            q, k, v, state=state, normalize=self.config.normalize, chunk_size=self.config.chunk_size
        )
        return self._merge(y), state

    def forward(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        return self._mix(x, prefix_len, None)[0]

    def prefill(
        self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Outputs (B, T, D) and the decode state: encoder term + causal decoder term.

        Args:
            x: (B, T, D) inputs.
            prefix_len: (B,) prefix length per example; with ``state`` None every prefix must end
                within x (else ValueError), with ``state`` given it is ignored (already read).
            state: (B, H, F, d_v + normalize) from an earlier call, or None to start.
        """
        if state is None and prefix_len is not None and prefix_len.numel():
            longest = int(prefix_len.max())  # one sync per call: inference only, never in training
            if longest > x.shape[1]:
                raise ValueError(
                    f"pla prefix_len={longest} exceeds the {x.shape[1]} tokens of this prefill: the whole "
                    "prefix must lie within the first prefill call (later calls continue causally)"
                )
        return self._mix(x, prefix_len if state is None else None, state)
