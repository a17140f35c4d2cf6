"""One self-contained HTML report from a results directory (plots embedded as PNG data URIs).

Sections: environment and command; correctness matrix; time against n and against batch;
speedup against the reference and against the best variant; achieved rate and fraction of
the measured ceiling; peak memory against n; forward against forward+backward; the best
variant per (n, batch, dtype) with out-of-memory and unsupported cells marked.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from reports import load

# Instructions per work unit at the floor (../shared/ANCHORS.md): what "fraction of ceiling" divides by.
FLOOR_INSTRUCTIONS = {("sick_bide", "forward"): 2.0, ("sick_bide", "backward"): 5.0}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
td.bad { background: #fdd; } td.skip { color: #888; } td.best { background: #dfd; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code, pre { background: #f6f6f6; padding: 0.2em 0.4em; }
"""

CHECK_IMAGES = """
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame: pd.DataFrame, classes: pd.DataFrame | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = []
        for j, value in enumerate(row):
            css = "text" if isinstance(value, str) else ""
            if classes is not None:
                css += " " + str(classes.iat[i, j])
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            cells.append(f'<td class="{css.strip()}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _lines(frame: pd.DataFrame, x: str, y: str, facet: str, title: str, ylabel: str, logx=False) -> str:
    frame = frame.dropna(subset=[y])
    if frame.empty:
        return f"<p>{html.escape(title)}: no data.</p>"
    facets = sorted(frame[facet].unique())
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets), 3.2), squeeze=False)
    for ax, value in zip(axes[0], facets, strict=True):
        sub = frame[frame[facet] == value]
        for variant, part in sub.groupby("variant"):
            part = part.sort_values(x)
            ax.plot(part[x], part[y], marker="o", label=variant)
        ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_title(f"{facet} = {value}", fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def _best_table(ok: pd.DataFrame, all_rows: pd.DataFrame) -> str:
    rows = []
    for keys, cell in all_rows.groupby(["mode", "dtype", "n_bits", "batch"]):
        key = [*load.CELL, "variant"]
        good = ok.merge(cell[key], on=key)
        failed = cell[cell["status"] != "ok"]
        marks = "; ".join(f"{r.variant}: {r.status}" for r in failed.itertuples())
        if good.empty:
            rows.append((*keys, "none", float("nan"), marks))
            continue
        best = good.loc[good["time_s"].idxmin()]
        rows.append((*keys, best["variant"], 1e3 * best["time_s"], marks))
    frame = pd.DataFrame(rows, columns=["mode", "dtype", "n_bits", "batch", "best", "ms", "cannot run"])
    return _table(frame)


def build(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write report.html for `directory` (or `out`); return its path."""
    directory = Path(directory)
    out = Path(out) if out else directory / "report.html"
    rows, verify, meta = load.sweep_rows(directory), load.verify_rows(directory), load.meta(directory)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fusedbench report</title>"
             f"<style>{STYLE}</style></head><body><h1>fusedbench report</h1>"]
    parts.append(_environment(rows, meta))
    parts.append(_correctness(verify))
    if not rows.empty:
        parts.append(_performance(rows, meta))
    parts.append(CHECK_IMAGES + "</body></html>")
    out.write_text("\n".join(parts))
    return out


def _environment(rows: pd.DataFrame, meta: dict[str, Any]) -> str:
    env_cols = [c for c in rows.columns if c.startswith("env.")] if not rows.empty else []
    env = rows[env_cols].drop_duplicates().head(1).T.reset_index() if env_cols else pd.DataFrame()
    text = "<h2>Environment</h2>"
    if meta.get("command"):
        text += f"<p>Command: <code>{html.escape(meta['command'])}</code></p>"
    if meta.get("ceiling") is not None:
        text += (f"<p>Measured ceiling (FMNMX + FADD, harness/ceiling.py): "
                 f"{meta['ceiling']:.3e} lane-instructions/s</p>")
    if not rows.empty:
        methods = ", ".join(sorted(rows["timing_method"].dropna().unique())) if "timing_method" in rows else "n/a"
        text += f"<p>Timing: {html.escape(methods)}; medians over interleaved rounds.</p>"
    if not env.empty:
        env.columns = ["field", "value"]
        text += _table(env.astype(str))
    return text


def _correctness(verify: pd.DataFrame) -> str:
    text = "<h2>Correctness against the float64 oracle</h2>"
    if verify.empty:
        return text + "<p>No verification rows.</p>"
    text += ("<p>Worst |error| / (bound + slack) over nll, lse, dW, dr (below 1 passes; "
             "harness/tolerance.py). Blank: the variant cannot run that cell.</p>")
    ran = verify[verify["status"] != "skipped"]
    if ran.empty:
        return text + "<p>Every cell was skipped.</p>"
    matrix = ran.pivot_table(index=["problem", "variant"], columns=["dtype", "case"], values="worst_ratio",
                             aggfunc="max")
    matrix.columns = [f"{d} / {c}" for d, c in matrix.columns]
    frame = matrix.reset_index()
    classes = frame.map(lambda v: "bad" if isinstance(v, float) and v > 1 else "")
    text += _table(frame, classes)
    failed = verify[verify["status"] == "FAIL"]
    if not failed.empty:
        text += f"<p class='bad'>{len(failed)} cells FAILED.</p>"
    return text


def _performance(rows: pd.DataFrame, meta: dict[str, Any]) -> str:
    ok = rows[rows["status"] == "ok"].copy()
    text = "<h2>Performance</h2>"
    if ok.empty:
        return text + "<p>No variant ran.</p>"
    ok["ms"] = 1e3 * ok["time_s"]
    for (problem, mode, dtype), part in ok.groupby(["problem", "mode", "dtype"]):
        label = f"{problem}, {mode}, {dtype}"
        text += f"<h3>{html.escape(label)}</h3>"
        text += _lines(part, "n_bits", "ms", "batch", f"time against n ({label})", "ms (median)")
        text += _lines(part, "batch", "ms", "n_bits", f"time against batch ({label})", "ms (median)", logx=True)
        cell = ["n_bits", "batch"]
        best = part.groupby(cell)["time_s"].transform("min")
        part = part.assign(vs_best=part["time_s"] / best)
        ref = part[part["backend"] == "reference"].set_index(cell)["time_s"]
        part = part.assign(speedup=part.set_index(cell).index.map(ref).to_numpy() / part["time_s"].to_numpy())
        if part["speedup"].notna().any():
            text += _lines(part.dropna(subset=["speedup"]), "n_bits", "speedup", "batch",
                           f"speedup against the reference ({label})", "x reference")
        text += _lines(part, "n_bits", "vs_best", "batch", f"time / best time ({label})", "x best")
        floor = FLOOR_INSTRUCTIONS.get((problem, mode))
        if meta.get("ceiling") and floor:
            part = part.assign(fraction=part["rate"] * floor / meta["ceiling"])
            text += _lines(part, "n_bits", "fraction", "batch",
                           f"fraction of the measured ceiling at {floor:g} instructions per unit ({label})",
                           "fraction")
        else:
            text += _lines(part, "n_bits", "rate", "batch", f"rate ({label}); no ceiling measured here",
                           f"{part['work_unit'].iloc[0]}/s")
        if part["peak_bytes"].notna().any():
            text += _lines(part.assign(mib=part["peak_bytes"] / 2**20).dropna(subset=["mib"]).query("mib > 0"),
                           "n_bits", "mib", "batch", f"peak memory ({label})", "MiB")
    text += "<h3>Forward against forward + backward</h3>" + _split(ok)
    text += "<h3>Best variant per cell</h3>" + _best_table(ok, rows)
    return text


def _split(ok: pd.DataFrame) -> str:
    pivot = ok.pivot_table(index=["problem", "dtype", "n_bits", "batch", "variant"], columns="mode",
                           values="ms", aggfunc="median")
    if not {"forward", "backward"} <= set(pivot.columns):
        return "<p>Only one mode was swept.</p>"
    pivot = pivot.dropna(subset=["forward", "backward"])
    pivot["backward share"] = 1 - pivot["forward"] / pivot["backward"]
    return _table(pivot.reset_index())
