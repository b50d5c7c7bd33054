"""Optional Weights & Biases logging of a sweep: one W&B run per finished recallkit run, from the driver.

Each finished run (``done`` or ``diverged``; a ``failed`` one is retried by the next sweep and
logged when it finishes) becomes a W&B run named by its label and width, with id = the run id, its
config, its learning curve as history and its final metrics (and every evaluation's accuracy) as
summary. ``mode="offline"`` (the default) writes under ``DIR/wandb`` with no network; ``wandb sync
DIR/wandb/offline-run-*`` uploads later.

``DIR/wandb/logged.txt`` lists the runs logged whole, one ``run_id project`` per line, so that a run
is logged once to a project: the sweep's finished runs missing from it (a driver killed while
logging, a W&B error, a sweep run without ``--wandb`` or with another project) are logged at the end
of the next sweep that logs (:meth:`WandbLogger.catch_up`). ``disabled`` mode logs nothing and lists
nothing. A directory logged before the list existed counts its offline runs with a log as listed. A
W&B error never stops the sweep: it is one line on stderr, and logging pauses until that next sweep.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from recallkit.config import RunConfig
from recallkit.errors import RecallkitError, first_line

WandbMode = Literal["offline", "online", "disabled"]
INSTALL_HINT = "W&B logging needs `pip install recallkit[wandb]`"
LOGGED_FILE = "logged.txt"
"""In ``DIR/wandb``: the runs logged whole, ``run_id project`` per line."""
LEGACY_LOG_BYTES = 1024
"""An offline run's ``.wandb`` log at least this long was logged whole (one cut short at init holds a
few bytes); read only in a directory logged before ``LOGGED_FILE`` existed."""
LOGGED_STATUSES = ("done", "diverged")


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
        if not project.strip():
            raise RecallkitError("--wandb needs a W&B project name")
        try:  # W&B checks the name only at a run's init: after the first run trained
            self.wandb.Settings(project=project)
        except Exception as error:  # noqa: BLE001 (wandb's UsageError or pydantic's)
            raise RecallkitError(f"bad W&B project name: {first_line(str(error))}") from None
        if mode == "online" and not has_wandb_login():  # else the first finished run would fail (or prompt)
            raise RecallkitError("W&B online mode needs a login (`wandb login` or WANDB_API_KEY); or log "
                                 "with --wandb-mode offline and `wandb sync` later")
        self.project, self.mode, self.dir = project, mode, Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paused = False  # after a W&B error: the next sweep logs what this one missed

    @property
    def ledger(self) -> Path:
        return self.dir / "wandb" / LOGGED_FILE

    def logged(self) -> set[str]:
        """The run ids logged whole to this project so far."""
        if not self.ledger.is_file():  # logged before the list existed: its offline runs with a log
            return {run.name.split("-")[3] for run in self.ledger.parent.glob("offline-run-*")
                    if any(log.stat().st_size >= LEGACY_LOG_BYTES for log in run.glob("*.wandb"))}
        entries = (line.split(" ", 1) for line in self.ledger.read_text().splitlines() if " " in line)
        return {run_id for run_id, project in entries if project == self.project}

    def __call__(self, config: RunConfig, outcome: dict[str, Any]) -> None:
        """Log one finished run (``run_sweep``'s ``on_outcome``); a failed one is left to its retry."""
        if self.paused or self.mode == "disabled" or outcome["status"] not in LOGGED_STATUSES:
            return
        legacy = not self.ledger.is_file() and self.ledger.parent.is_dir()
        try:
            run = self.wandb.init(
                project=self.project, id=config.run_id, name=config.progress_label,
                config=config.model_dump(mode="json"), dir=str(self.dir), mode=self.mode, resume="allow",
                settings=self.wandb.Settings(silent=True, console="off"),
            )
            for point in (outcome.get("metrics") or {}).get("curve", []):
                run.log({k: v for k, v in point.items() if k != "step"}, step=point["step"])
            run.summary.update(_summary(outcome))
            run.finish()
        except Exception as error:  # noqa: BLE001 (W&B's errors: network, disk, its own checks)
            self.paused = True
            print(f"warning: W&B logging of {config.run_id} failed ({type(error).__name__}: "
                  f"{first_line(str(error))}); no more runs are logged in this sweep, and the next "
                  "`recallkit run --wandb` logs the ones it missed", file=sys.stderr)
            return
        earlier = sorted(self.logged() - {config.run_id}) if legacy else []  # keep what was logged before
        with self.ledger.open("a") as ledger:  # after finish(): a run cut short is logged again
            ledger.writelines(f"{run_id} {self.project}\n" for run_id in [*earlier, config.run_id])
            ledger.flush()
            os.fsync(ledger.fileno())

    def catch_up(self, configs: list[RunConfig], rows: list[dict[str, Any]]) -> int:
        """Log the finished runs of ``configs`` that are not logged yet (``rows``: the store's);
        returns how many were logged."""
        if self.mode == "disabled":
            return 0
        by_id, logged, count = {row["run_id"]: row for row in rows}, self.logged(), 0
        for config in configs:
            row = by_id.get(config.run_id)
            if self.paused or row is None or row["status"] not in LOGGED_STATUSES or config.run_id in logged:
                continue
            self(config, {key: row.get(key) for key in ("status", "metrics", "state_size", "num_params",
                                                         "wall_time", "error")})
            count += not self.paused
        return count
