"""Will a Hugging Face model fit in memory? Estimated from its config before anything is allocated.

A config with the wrong width or depth (a 70B model asked for on a laptop) would otherwise be found
out by the OOM killer minutes into a sweep, taking the worker with it. :func:`check_fits` turns that
into one clear error before the model is built.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recallkit.errors import RecallkitError

GIB = 1024**3
# Beyond the weights, an evaluation process holds activations, logits (batch x length x vocab), the
# inference state and allocator fragmentation: 20% of the weights covers these at the small batches and
# lengths recallkit evaluates. The fixed 0.5 GiB covers what does not scale with the model (tokenizer,
# tasks, results, Python objects created after this check). torch and transformers are already imported
# when the check runs, so their own footprint is already out of the available memory.
MARGIN_FRACTION = 0.2
MARGIN_BYTES = GIB // 2


def estimate_model_bytes(config, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the parameters and buffers of ``AutoModelForCausalLM.from_config(config)`` at ``dtype``.

    The model is instantiated on the ``meta`` device: shapes are exact (tied weights counted once),
    nothing is allocated and no weights are initialised, so this is cheap even for a 100B-parameter config.
    """
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    numel = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return numel * torch.empty((), dtype=dtype).element_size()


def _cgroup_available() -> int | None:
    """Memory left under a cgroup v2 limit (containers), or None when unlimited or unknown."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        used = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_memory_bytes() -> int | None:
    """Memory available to this process: MemAvailable from /proc/meminfo (else psutil), capped by a
    cgroup v2 limit when one is set. None when neither source exists (the check is then skipped)."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            import psutil
        except ImportError:
            return None
        available = int(psutil.virtual_memory().available)
    cgroup = _cgroup_available()
    return available if cgroup is None else min(available, cgroup)


def check_fits(config, dtype: torch.dtype = torch.float32, available_bytes: int | None = None) -> int:
    """Raise :class:`RecallkitError` unless the model of ``config`` at ``dtype`` fits in memory.

    Needed = weights (:func:`estimate_model_bytes`) x (1 + MARGIN_FRACTION) + MARGIN_BYTES.
    ``available_bytes`` defaults to :func:`available_memory_bytes`; when that is unknown the check
    passes. Returns the needed bytes.
    """
    weights = estimate_model_bytes(config, dtype)
    needed = int(weights * (1 + MARGIN_FRACTION)) + MARGIN_BYTES
    if available_bytes is None:
        available_bytes = available_memory_bytes()
    if available_bytes is not None and needed > available_bytes:
        name, have = str(dtype).removeprefix("torch."), available_bytes / GIB
        raise RecallkitError(
            f"model needs ~{needed / GIB:.1f} GiB in {name} but only {have:.1f} GiB of memory is available "
            f"({weights / GIB:.1f} GiB of weights + {MARGIN_FRACTION:.0%} + "
            f"{MARGIN_BYTES / GIB:.1f} GiB margin); use a smaller config or a lower-precision dtype"
        )
    return needed
