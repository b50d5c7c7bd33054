"""A self-contained HTML report: the frontier figure (embedded), the frontier table and every run."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.failed, .diverged { color: #b00; } .running, .pending { color: #888; }
img { max-width: 100%; } .note { color: #666; }
"""


def _table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _embedded(png: Path, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode("ascii")}">'


def write_html(rows: list[dict[str, Any]], points: list[dict[str, Any]], png: Path, path: str | Path,
               title: str, width_png: Path | None = None) -> Path:
    """Write the report page to ``path``; the PNGs are embedded, so the file works offline alone."""
    path = Path(path)
    image = _embedded(png, "accuracy vs inference state")
    width_image = _embedded(width_png, "accuracy vs model width") if width_png is not None else ""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "diverged", "failed", "running", "pending")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs"
    frontier = "".join(
        f"<h3>{html.escape(panel)}</h3>" + _table(
            ["model", "d_model", "KV budget", "state size (numbers)", "prefill tokens", "accuracy", "best lr",
             "params", "runs"],
            [[p["label"], p["d_model"], "" if p.get("budget") is None else p["budget"], f"{p['state_size']:,}",
              _fmt(p.get("prefill_tokens"), 1),
              _fmt(p["accuracy"]), p["lr"], f"{p['num_params']:,}", p["runs"]]
             for p in points if p["panel"] == panel],
        )
        for panel in dict.fromkeys(p["panel"] for p in points)
    )
    runs = _table(
        ["run", "model", "d_model", "eval T", "lr", "status", "accuracy", "token acc", "steps", "state size",
         "wall time (s)", "error"],
        [[r["run_id"], r["label"], r["config"]["model"]["d_model"],
          ", ".join(str(t["seq_len"]) for t in (r["config"].get("eval_tasks") or [r["config"]["task"]])),
          r["config"]["train"]["lr"], r["status"], _fmt((r["metrics"] or {}).get("accuracy")),
          _fmt((r["metrics"] or {}).get("token_accuracy")), (r["metrics"] or {}).get("steps", ""),
          "" if r["state_size"] is None else f"{r['state_size']:,}", _fmt(r["wall_time"], 1),
          (r["error"] or "").splitlines()[0] if r["error"] else ""] for r in rows],
        [r["status"] for r in rows],
    )
    empty = "" if points else '<p class="note">No finished runs yet: run the sweep, then the report again.</p>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} runs: {html.escape(summary)}. State size counts numbers (elements) per sequence at the
evaluation length, summed over layers; accuracy is the mean over test sequences of the fraction of
queries answered exactly; each point is the best learning rate for its model and width.</p>
{empty}
{image}
{width_image}
<h2>Frontier</h2>
{frontier}
<h2>All runs</h2>
{runs}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
