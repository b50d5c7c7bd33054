"""Conventions of the kernels in recallkit.ops: keyword-only ``state`` / ``chunk_size``, one compute dtype."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch

import recallkit.ops
from recallkit.ops.numerics import compute_dtype

MODULES = [importlib.import_module(f"recallkit.ops.{info.name}")
           for info in pkgutil.iter_modules(recallkit.ops.__path__)]
FUNCTIONS = [
    (f"{module.__name__}.{name}", fn)
    for module in MODULES
    for name, fn in inspect.getmembers(module, inspect.isfunction)
    if fn.__module__ == module.__name__ and not name.startswith("_")
    # kernels take tensors (segment_length(chunk_size) is arithmetic on the chunk size, not a kernel)
    and any("Tensor" in str(p.annotation) for p in inspect.signature(fn).parameters.values())
]


@pytest.mark.parametrize(("name", "fn"), FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
def test_state_and_chunk_size_are_keyword_only(name, fn):
    params = inspect.signature(fn).parameters
    for arg in ("state", "chunk_size"):
        if arg in params:
            assert params[arg].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {arg} is not keyword-only"
    if name.endswith(("_recurrent", "_chunked")):  # every recurrent form resumes from a state named alike
        assert "state" in params, f"{name} has no state argument"


def test_kernels_were_found():
    names = {name.rsplit(".", 1)[1] for name, _ in FUNCTIONS}
    assert {"delta_rule_chunked", "h3_ssm_chunked", "selective_scan_recurrent", "short_conv"} <= names


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ((torch.float16,), torch.float32),
        ((torch.bfloat16,), torch.float32),
        ((torch.float32,), torch.float32),
        ((torch.float64,), torch.float64),
        ((torch.bfloat16, torch.float64), torch.float64),
        ((torch.complex64, torch.float32), torch.complex64),
        ((torch.complex64, torch.float64), torch.complex128),
        ((torch.zeros(2, dtype=torch.float16), torch.zeros(2)), torch.float32),
    ],
)
def test_compute_dtype_promotes_to_at_least_float32(inputs, expected):
    assert compute_dtype(*inputs) == expected


def test_one_compute_dtype_helper():
    """Kernels and mixers choose their accumulation dtype through numerics.compute_dtype only."""
    root = Path(recallkit.ops.__file__).parents[1]
    offenders = [
        str(path.relative_to(root))
        for folder in ("ops", "mixers")
        for path in sorted((root / folder).glob("*.py"))
        if path.name != "numerics.py" and "promote_types(" in path.read_text()
    ]
    assert offenders == []
