"""Packed models: K language models of one configuration run as one stacked model.

Every parameter and buffer of the K members is stacked on a leading member axis
(``torch.func.stack_module_state``) and the model's parallel form runs once under
``torch.func.vmap`` over that axis, with each member on its own batch. The members stay
independent: member k's loss and its gradient (in row k of each stacked parameter's ``.grad``) are
those of the same model run alone, which ``tests/test_packing.py`` checks for every mixer case.
Kernels run in ``ops.numerics.fixed_paths(first_order=True)``: vmap cannot branch on values, and the
trainers take first derivatives alone. There the vector-gate kernels (GLA, GSA, KDA, RWKV-7) run as
one call on the members' sequences folded into one batch, outside vmap, with the paths they pick
unpacked (``ops.member_fold``), and the selective scan and the short conv keep their written
backwards through their own vmap rules.

What packing buys is measured per mixer by ``recallkit bench`` (``packed_speedup``). On a 2-core
CPU at sweep sizes it buys little (median 1.02-1.05x over the mixers at d=64, 0.65x-1.37x): vmap turns K
small ops into one K-times larger op, and a d=64 model's step is bound by memory traffic rather than
by per-op overhead (docs/results.md), so sweeps pack only when asked
(:mod:`recallkit.packed_training`, ``recallkit run --pack``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from recallkit.mlm import labels_after_prefix
from recallkit.model import LanguageModel
from recallkit.ops.numerics import fixed_paths
from recallkit.tasks.base import IGNORE_INDEX


class PackedModels:
    """K models with the same configuration, stacked: ``params`` and ``buffers`` map each name to a
    (K, ...) tensor; the stacked parameters are leaves that require grad."""

    def __init__(self, models: list[LanguageModel]) -> None:
        if not models:
            raise ValueError("PackedModels needs at least one model")
        if any(m.config != models[0].config for m in models):
            raise ValueError("packed models must share one ModelConfig")
        self.params, self.buffers = stack_module_state(models)
        self._skeleton = copy.deepcopy(models[0]).to("meta")  # the module code; holds no numbers
        self.prefix_aware = models[0].prefix_aware

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def losses(self, inputs: Tensor, labels: Tensor, prefix_len: Tensor) -> Tensor:
        """Per member, the mean next-token cross-entropy over its scored labels (the training loss
        without MLM; a prefix-aware model is scored only from the prefix's last token on).

        Args:
            inputs, labels: (K, B, T), member k's batch in row k; labels ``IGNORE_INDEX`` where unscored.
            prefix_len: (K, B).
        Returns:
            (K,) losses.
        """
        def loss(params: dict, buffers: dict, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
            logits = functional_call(self._skeleton, (params, buffers), (x, m))  # (B, T, V)
            if self.prefix_aware:
                y = labels_after_prefix(y, m)
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)

        with fixed_paths(first_order=True):  # the trainers take first derivatives alone
            return vmap(loss)(self.params, self.buffers, inputs, labels, prefix_len)

    def keep(self, rows: list[int]) -> None:
        """Keep only the members at ``rows`` (in that order): the others leave the pack."""
        index = torch.tensor(rows, device=next(iter(self.params.values())).device)
        self.params = {name: p.detach()[index].requires_grad_() for name, p in self.params.items()}
        self.buffers = {name: b[index] for name, b in self.buffers.items()}

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member k's parameters and persistent buffers: a state dict that ``load_state_dict`` accepts."""
        stacked = {**self.params, **self.buffers}
        return {name: stacked[name][k].detach().clone() for name in self._skeleton.state_dict()}
