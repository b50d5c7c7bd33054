"""JRT's MLM objective: masking statistics, loss only at masked prefix positions, run identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import recallkit as rk
from recallkit.mlm import labels_after_prefix, mask_prefix, mlm_loss
from recallkit.tasks.base import IGNORE_INDEX, Batch

MASK = 99


def test_masks_only_prefix_tokens_at_the_requested_rate():
    inputs = torch.randint(0, 50, (400, 40), generator=torch.Generator().manual_seed(0))
    prefix_len = torch.randint(5, 30, (400,), generator=torch.Generator().manual_seed(1))
    masked, targets = mask_prefix(inputs, prefix_len, 0.15, MASK, torch.Generator().manual_seed(2))
    is_masked = masked == MASK
    in_prefix = torch.arange(40)[None] < prefix_len[:, None]
    assert not (is_masked & ~in_prefix).any()  # nothing after the prefix
    rate = is_masked.sum() / in_prefix.sum()
    assert abs(rate.item() - 0.15) < 0.01  # ~7000 prefix tokens: the std of the rate is 0.004
    assert torch.equal(targets != IGNORE_INDEX, is_masked)
    assert torch.equal(targets[is_masked], inputs[is_masked])
    assert torch.equal(masked[~is_masked], inputs[~is_masked])
    again = mask_prefix(inputs, prefix_len, 0.15, MASK, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], masked)  # seeded


def test_mlm_loss_is_cross_entropy_at_masked_positions_only():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20)
    hidden = torch.randn(3, 6, 8)
    targets = torch.full((3, 6), IGNORE_INDEX)
    targets[0, 1], targets[2, 4] = 5, 7
    expected = F.cross_entropy(head(torch.stack([hidden[0, 1], hidden[2, 4]])), torch.tensor([5, 7]))
    torch.testing.assert_close(mlm_loss(head, hidden, targets), expected)
    hidden.requires_grad_()
    mlm_loss(head, hidden, targets).backward()
    touched = hidden.grad.abs().sum(-1) > 0
    assert touched.sum() == 2 and touched[0, 1] and touched[2, 4]
    assert mlm_loss(head, hidden, torch.full((3, 6), IGNORE_INDEX)).item() == 0.0


def _config(**train) -> rk.RunConfig:
    return rk.RunConfig(
        model=dict(vocab_size=33, d_model=16, num_layers=1, mixer={"name": "attention"}),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
        train=dict(max_steps=3, batch_size=8, num_train_examples=32, num_test_examples=8, device="cpu",
                   **train),
    )


def test_mlm_trains_and_changes_the_run_identity_only_when_on():
    plain, mlm = _config(), _config(mlm=True)
    assert "mlm" not in plain.canonical_json() and '"mlm":true' in mlm.canonical_json()
    assert plain.run_id != mlm.run_id
    result = rk.train(mlm)
    assert result.status == "done"


def test_mlm_needs_a_reserved_token():
    with pytest.raises(ValueError, match="reserved mask token"):
        rk.RunConfig(model=dict(vocab_size=32, d_model=16, num_layers=1, mixer={"name": "attention"}),
                     task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2), train=dict(mlm=True))


def test_labels_after_prefix_drops_every_label_the_prefix_shows():
    labels = torch.arange(12).view(2, 6)
    kept = labels_after_prefix(labels, torch.tensor([3, 0]))
    # row 0: position 1 predicts token 2, inside the prefix (M = 3); position 2 predicts token 3, after it
    assert kept[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 2, 3, 4, 5]
    assert kept[1].tolist() == labels[1].tolist()  # no prefix: nothing to hide


@pytest.mark.parametrize(("mixer", "scored_rows"), [("linear_attention", 2), ("pla", 1)])
def test_a_prefix_aware_model_is_never_scored_inside_its_prefix(mixer, scored_rows):
    torch.manual_seed(0)
    model = rk.build_model(rk.ModelConfig(vocab_size=16, d_model=8, num_layers=1, mixer={"name": mixer}))
    assert model.prefix_aware == (mixer == "pla")
    inputs = torch.randint(0, 16, (2, 8))
    labels = torch.full((2, 8), IGNORE_INDEX)
    labels[0, 1] = inputs[0, 2]  # row 0: one label, inside the prefix: PLA could copy it from there
    labels[1, 6] = inputs[1, 7]  # row 1: one label after the prefix
    batch = Batch(inputs, labels, prefix_len=torch.tensor([5, 5]))
    assert rk.evaluate(model, batch)["num_examples"] == scored_rows
