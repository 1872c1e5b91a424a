"""Self-contained HTML reports: a Jinja2 template, inline SVG plots, and the JSON they come from.

Why matplotlib: it renders SVG text with no browser, no JavaScript and no network (Agg backend, no
display), so one `.html` file holds its plots and opens anywhere, including from a DVC remote years
later; plotly or Bokeh would embed a megabyte of JavaScript per file. The numbers each page shows
are also embedded as JSON (``<script type="application/json" id="report-data">``), so a machine,
and the tests, read exactly what a person sees.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit
import matplotlib.pyplot as plt
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

TEMPLATES = Path(__file__).resolve().parent / "templates"
COLORS = ("#3465a4", "#f57900", "#73d216", "#cc0000")
plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "movierec"})


def svg(fig: Any) -> Markup:
    """The figure as an inline `<svg>` element (no XML prolog), then closed to free its memory."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return Markup(text[text.index("<svg"):])


def bars(series: Mapping[str, Mapping[str, float]], title: str, ylabel: str = "", horizontal: bool = False) -> Markup:
    """Grouped bars: `{series name: {category: value}}` (categories in the first series' order)."""
    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.28 * len(categories)) if horizontal else 2.8))
    for i, (name, values) in enumerate(series.items()):
        pos = [k + (i - (n - 1) / 2) * width for k in range(len(categories))]
        heights = [float(values.get(c, 0) or 0) for c in categories]
        (ax.barh if horizontal else ax.bar)(pos, heights, width, label=name, color=COLORS[i % len(COLORS)])
    ticks = range(len(categories))
    if horizontal:
        ax.set_yticks(list(ticks), categories)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(list(ticks), categories, rotation=30 if len(categories) > 6 else 0, ha="right"
                      if len(categories) > 6 else "center")
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n > 1:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return svg(fig)


def intervals(rows: Sequence[tuple[str, float | None, float | None, float | None, bool]], title: str,
              overall: float | None = None) -> Markup:
    """Points with 95 % interval bars per group: (name, value, low, high, flagged); a line at `overall`."""
    rows = [r for r in rows if r[1] is not None]
    fig, ax = plt.subplots(figsize=(6.4, max(1.6, 0.3 * len(rows) + 0.8)))
    for k, (_, value, low, high, flagged) in enumerate(rows):
        color = COLORS[3] if flagged else COLORS[0]
        if low is not None and high is not None:
            ax.plot([low, high], [k, k], color=color, linewidth=2)
        ax.plot([value], [k], "o", color=color)
    if overall is not None:
        ax.axvline(overall, color="#555753", linestyle="--", linewidth=1)
    ax.set_yticks(list(range(len(rows))), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return svg(fig)


def _fmt(value: Any, digits: int = 4) -> str:
    """A number as the tables show it (the tests read these cells back)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _fmt
    return env


def render(template: str, data: dict[str, Any], plots: dict[str, Markup]) -> str:
    """The page: `data` as tables (through the template) and as embedded JSON, `plots` inline."""
    embedded = json.dumps(data, default=str, sort_keys=True).replace("</", "<\\/")
    return environment().get_template(template).render(d=data, plots=plots, embedded=Markup(embedded))


def embedded_data(html: str) -> dict[str, Any]:
    """The JSON a page was rendered from (what `render` embedded)."""
    start = html.index('id="report-data">') + len('id="report-data">')
    return json.loads(html[start:html.index("</script>", start)].replace("<\\/", "</"))


def write(path: Path, html: str) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
