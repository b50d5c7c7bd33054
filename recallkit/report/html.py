"""The report page: one self-contained HTML file (plotly.js and the PNGs embedded, no external asset)
with the interactive frontier, per-slice tables, per-length and learning curves, and every run."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from recallkit.atomic import write_whole
from recallkit.errors import first_line
from recallkit.report.capability import capability_table, has_capability_axis
from recallkit.report.common import FrontierPoint, accuracy_text
from recallkit.report.curves import curves_figure
from recallkit.report.embed import figure_div, plotly_js
from recallkit.report.hover import point_names
from recallkit.report.interactive import frontier_figure
from recallkit.report.lengths import length_figure
from recallkit.report.slices import SliceTable, slice_tables
from recallkit.sweep.store import STATUSES

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; color: #222; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
#runs-table td:nth-child(2), #runs-table td:last-child { text-align: left; }
tr.failed, tr.diverged { color: #b00; } tr.running, tr.pending { color: #888; }
img { max-width: 100%; } .note { color: #666; }
.message { border-left: 4px solid #c80; background: #fff8e6; padding: 0.6em 1em; }
.filters label { margin-right: 1.2em; }
"""

FILTER_SCRIPT = """
for (const box of document.querySelectorAll('.filters input')) {
  box.addEventListener('change', () => {
    for (const row of document.querySelectorAll('#runs-table tr[data-status="' + box.value + '"]')) {
      row.hidden = !box.checked;
    }
  });
}
"""
"""Status filters of the runs table: a checkbox hides or shows the rows of one status."""


class Markup(str):
    """Text that is already HTML (table cells that carry their own markup)."""


def _cell(value: Any) -> str:
    return value if isinstance(value, Markup) else html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], row_attrs: list[str] | None = None,
           table_id: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        attrs = f" {row_attrs[i]}" if row_attrs else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    table_attr = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{table_attr}><tr>{head}</tr>{"".join(body)}</table></div>'


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _embedded(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def _messages(rows: list[dict[str, Any]], points: list[FrontierPoint]) -> list[str]:
    """What a reader must know before trusting the figures: nothing finished, failures, work left."""
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    messages = []
    if not rows:
        messages.append("No finished runs yet: the results database holds no runs. Run the sweep "
                        "(recallkit run SWEEP.py --out DIR), then the report again.")
    elif not points:
        messages.append(f"No finished runs yet: {counts['pending'] + counts['running']} of {len(rows)} runs "
                        f"are pending or running and {counts['failed']} failed. The runs table below lists "
                        "them; the figures appear once a run finishes.")
    if counts["failed"]:
        first = next(r for r in rows if r["status"] == "failed")
        error = first_line(first["error"] or "", "no error recorded")
        messages.append(f"Failed runs: {counts['failed']} of {len(rows)}, left out of the figures (first: "
                        f"{first['label']}, {error}). The runs table has their errors; rerunning the sweep "
                        "retries them.")
    unfinished = counts["pending"] + counts["running"]
    if points and unfinished:
        messages.append(f"Unfinished runs: {unfinished} of {len(rows)} (pending or running); the figures "
                        "show a sweep in progress.")
    return messages


def _frontier_tables(points: list[FrontierPoint]) -> str:
    names = dict(zip(map(id, points), point_names(points, omit=("d_model",))))
    return "".join(
        f"<h3>{html.escape(panel)}</h3>" + _table(
            ["model", "d_model", "KV budget", "state size (numbers)", "prefill tokens",
             "accuracy (mean [95% interval] over seeds)", "best lr",
             "params", "runs"],
            [[names[id(p)], p.d_model or "", "" if p.budget is None else p.budget, f"{p.state_size:,}",
              _fmt(p.prefill_tokens, 1), accuracy_text(p), "" if p.lr is None else p.lr, f"{p.num_params:,}",
              p.runs]
             for p in points if p.panel == panel],
        )
        for panel in dict.fromkeys(p.panel for p in points)
    )


def _slice_table(table: SliceTable) -> str:
    def cell(values: dict[str, dict[str, Any]], value: str) -> Markup | str:
        if value not in values:
            return ""
        n, seeds = values[value].get("num_examples"), values[value].get("seeds", 1)
        tip = f"{n} test sequences" if n is not None else ""
        if seeds > 1:
            tip = f"mean of {seeds} seeds" + (f", {tip} each" if tip else "")
        title = f' title="{tip}"' if tip else ""
        return Markup(f"<span{title}>{values[value]['accuracy']:.3f}</span>")

    return (f"<h3>{html.escape(table.panel)}: accuracy per {html.escape(table.name)}</h3>"
            + _table(["model", *(f"{table.name}={v}" for v in table.values)],
                     [[name, *(cell(values, v) for v in table.values)] for name, values in table.rows]))


def _runs_table(rows: list[dict[str, Any]]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    filters = "".join(f'<label><input type="checkbox" value="{s}" checked> {s} ({n})</label>'
                      for s, n in counts.items() if n)

    def error(row: dict[str, Any]) -> Markup | str:
        if not row["error"]:  # a run that halving stopped is done, with why in its metrics
            halted = (row["metrics"] or {}).get("halted")
            return f"halted: {halted}" if halted else ""  # escaped as text by _table
        first = first_line(row["error"])  # the message; the traceback tail is in the tooltip
        return Markup(f'<span title="{html.escape(row["error"])}">{html.escape(first)}</span>')

    table = _table(
        ["run", "model", "d_model", "eval T", "lr", "status", "accuracy", "token acc", "steps", "state size",
         "wall time (s)", "error or note"],
        [[r["run_id"], r["label"], r["config"]["model"].get("d_model") or "",  # pretrained: none
          ", ".join(str(t.get("seq_len", ""))
                    for t in (r["config"].get("eval_tasks") or [r["config"]["task"]])),
          r["config"].get("train", {}).get("lr", ""), r["status"], _fmt((r["metrics"] or {}).get("accuracy")),
          _fmt((r["metrics"] or {}).get("token_accuracy")), (r["metrics"] or {}).get("steps", ""),
          "" if r["state_size"] is None else f"{r['state_size']:,}", _fmt(r["wall_time"], 1), error(r)]
         for r in rows],
        [f'class="{r["status"]}" data-status="{r["status"]}"' for r in rows],
        table_id="runs-table",
    )
    return f'<p class="filters">Show: {filters}</p>{table}' if rows else '<p class="note">No runs.</p>'


def _section(anchor: str, heading: str, body: str, nav: list[tuple[str, str]]) -> str:
    nav.append((anchor, heading))
    return f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{body}\n</section>'


def write_html(rows: list[dict[str, Any]], points: list[FrontierPoint], path: str | Path, title: str,
               pngs: list[tuple[Path, str]], notes: list[str] | None = None) -> Path:
    """Write the report page to ``path``: it works offline alone (plotly.js and the PNGs embedded).

    Args:
        rows: store rows (``Store.rows()``), possibly of several directories (labels prefixed).
        points: their frontier points.
        path: the HTML file to write.
        title: page title.
        pngs: (PNG file, description) of the static figures, embedded for papers.
        notes: extra plain-text paragraphs under the summary (e.g. which directories are compared).
    """
    path = Path(path)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs"
    nav: list[tuple[str, str]] = []
    sections = []
    if points:
        hint = ('<p class="note">Hover a point for its run and full config; click a legend entry to hide or '
                "show a model family in every panel, double-click it to show that family alone.</p>")
        sections.append(_section("frontier", "Frontier", hint + figure_div(frontier_figure(points, rows),
                                                                            "frontier-plot")
                                 + _frontier_tables(points), nav))
    if has_capability_axis(points):
        headers, cells = capability_table(points)
        hint = ('<p class="note">Each family\'s best accuracy per task setting (state size in '
                "brackets); rows by the family's largest state.</p>")
        sections.append(_section("capability", "Capability map", hint + _table(headers, cells), nav))
    slices = slice_tables(rows, points)
    if slices:
        sections.append(_section("slices", "Accuracy per slice", "".join(map(_slice_table, slices)), nav))
    lengths = length_figure(rows, points)
    if lengths is not None:
        sections.append(_section("lengths", "Accuracy per length", figure_div(lengths, "length-plot"), nav))
    curves = curves_figure(rows)
    if curves is not None:
        hint = ('<p class="note">One legend entry per run (a click hides its loss and accuracy); the menu '
                "shows one model family at a time.</p>")
        sections.append(_section("curves", "Learning curves", hint + figure_div(curves, "curves-plot"), nav))
    if points:
        images = "".join(f"<p>{_embedded(png, html.escape(alt))}</p>" for png, alt in pngs)
        sections.append(_section("figures", "Figures for papers",
                                 '<p class="note">The same data as static PNGs (also written beside this '
                                 "page).</p>" + images, nav))
    sections.append(_section("runs", "All runs", _runs_table(rows), nav))
    interactive = points or curves is not None
    script = f"<script>{plotly_js()}</script>" if interactive else ""
    messages = "".join(f'<p class="message">{html.escape(m)}</p>' for m in _messages(rows, points))
    extra = "".join(f"<p>{html.escape(note)}</p>" for note in notes or [])
    links = "".join(f'<a href="#{anchor}">{html.escape(heading)}</a>' for anchor, heading in nav)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>
{script}
</head>
<body>
<h1>{html.escape(title)}</h1>
<nav>{links}</nav>
<p>{len(rows)} runs: {html.escape(summary)}. State size counts numbers (elements) per sequence at the
evaluation length, summed over layers; accuracy is the mean over test sequences of the fraction of
queries answered exactly; each frontier point is the best learning rate for its model and width.</p>
{extra}
{messages}
{"".join(sections)}
<script>{FILTER_SCRIPT}</script>
</body></html>
"""
    write_whole(path, lambda partial: partial.write_text(page, encoding="utf-8"))
    return path
