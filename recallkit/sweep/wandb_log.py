"""Optional Weights & Biases logging of a sweep: one W&B run per finished recallkit run, from the driver.

Each finished run becomes a W&B run named by its label and width, with id = the run id (so a
resumed sweep does not duplicate it), its config, its learning curve as history and its final
metrics (and every evaluation's accuracy) as summary. ``mode="offline"`` (the default) writes
under ``DIR/wandb`` with no network; ``wandb sync DIR/wandb/offline-run-*`` uploads later.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from recallkit.config import RunConfig
from recallkit.errors import RecallkitError, first_line

WandbMode = Literal["offline", "online", "disabled"]
INSTALL_HINT = "W&B logging needs `pip install recallkit[wandb]`"


def _wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise RecallkitError(INSTALL_HINT) from error
    return wandb


def _summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """Scalar results: status, state size, params, wall time, headline metrics, each evaluation's accuracy."""
    metrics = outcome.get("metrics") or {}
    summary = {k: v for k, v in metrics.items()
               if isinstance(v, int | float | str) and not isinstance(v, bool)}
    for e in metrics.get("evals") or []:
        name = e.get("setting", e["task"]) + (f" L={e['length']}" if "length" in e else "")
        if e.get("policy"):
            name += f" [{e['policy']} {e['budget']} {e['mode']}]"
        summary[f"eval/{name}/accuracy"] = e["accuracy"]
    summary |= {k: outcome.get(k) for k in ("status", "state_size", "num_params", "wall_time")
                if k in outcome}
    if outcome.get("error"):
        summary["error"] = first_line(outcome["error"])
    return summary


def has_wandb_login() -> bool:
    """Whether W&B has an API key here: WANDB_API_KEY, or the netrc entry that `wandb login` writes
    for its host (WANDB_BASE_URL, default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """``on_outcome`` callback of ``run_sweep`` that logs each finished run to W&B.

    Args:
        project: W&B project name.
        out_dir: the sweep directory; W&B files go to ``out_dir/wandb``.
        mode: offline (no network), online, or disabled.
    """

    def __init__(self, project: str, out_dir: str | Path, mode: WandbMode = "offline") -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"unknown W&B mode {mode!r}; use offline, online or disabled")
        self.wandb = _wandb()
        if mode == "online" and not has_wandb_login():  # else the first finished run would fail (or prompt)
            raise RecallkitError("W&B online mode needs a login (`wandb login` or WANDB_API_KEY); or log "
                                 "with --wandb-mode offline and `wandb sync` later")
        self.project, self.mode, self.dir = project, mode, Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, config: RunConfig, outcome: dict[str, Any]) -> None:
        run = self.wandb.init(
            project=self.project, id=config.run_id, name=config.progress_label,
            config=config.model_dump(mode="json"), dir=str(self.dir), mode=self.mode, resume="allow",
            settings=self.wandb.Settings(silent=True, console="off"),
        )
        for point in (outcome.get("metrics") or {}).get("curve", []):
            run.log({k: v for k, v in point.items() if k != "step"}, step=point["step"])
        run.summary.update(_summary(outcome))
        run.finish()
