"""One self-contained HTML file: inline CSS, figures as base64 PNG, no script and no network access, so a report
can be mailed, archived next to a paper's data, or opened years later exactly as it was written."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd
from matplotlib.figure import Figure

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; }
.note { color: #555; font-size: .9em; } .warn { color: #a64b00; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9em; }
details { margin: .2em 0; } summary { cursor: pointer; font-family: ui-monospace, monospace; font-size: .85em; }
pre { background: #f7f7f7; padding: .5em; overflow-x: auto; font-size: .8em; }
"""


def esc(text) -> str:
    return html.escape(str(text))


def figure_html(fig: Figure, caption: str, name: str, dpi: int = 100) -> tuple[str, bytes]:
    """(<figure> element with the PNG inline, the PNG bytes) — the bytes are also written beside the report."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    png = buffer.getvalue()
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{esc(name)}"><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"), png


def frame_html(frame: pd.DataFrame, css_class: str, formats: dict | None = None) -> str:
    """A DataFrame as an HTML table without its index, values escaped, numbers formatted per column."""
    if frame.empty:
        return '<p class="note">none</p>'
    styler = frame.style.hide(axis="index").format(formatter=formats, na_rep="–", escape="html")
    return styler.set_table_attributes(f'class="{css_class}"').to_html()


def runs_html(rows: pd.DataFrame) -> str:
    """Every run's labels and status, its exact stored config, metrics, timings and extra in a <details>."""
    parts = []
    for run in rows.sort_values(["dataset", "init", "strategy", "fraction", "seed"]).itertuples():
        head = (f"{run.dataset} | {run.init} | {run.strategy} | {run.fraction * 100:g}% | seed {run.seed} — "
                f"{getattr(run, 'status', 'done')} — {str(getattr(run, 'run_id', ''))[:16]}")
        body = {key: getattr(run, key, None) for key in ("config", "metrics", "per_class", "timings", "extra")}
        if getattr(run, "error", None):
            body["error"] = run.error
        text = json.dumps(body, indent=1, sort_keys=True, default=str)
        parts.append(f"<details><summary>{esc(head)}</summary><pre>{esc(text)}</pre></details>")
    return "\n".join(parts)


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The document: a title, a table of contents and (anchor, heading, inner HTML) sections."""
    toc = "".join(f'<li><a href="#{esc(anchor)}">{esc(heading)}</a></li>' for anchor, heading, _ in sections)
    body = "\n".join(f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>\n{inner}</section>'
                     for anchor, heading, inner in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f"<body><h1>{esc(title)}</h1><ul>{toc}</ul>\n{body}\n</body></html>\n")
