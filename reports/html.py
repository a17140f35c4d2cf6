"""One self-contained HTML report from a results directory (plots embedded as PNG data URIs).

Sections: environment and command; correctness matrix; then per problem: the seed
documents' claims against what was measured; time against the problem's x axis and
against its facet axis (the sizes named by each row's x_axis and facet_axis); speedup
against the reference and against the best variant; achieved rate as a fraction of
the measured ceiling the row names; peak memory; forward against forward+backward;
the best variant per cell with out-of-memory and unsupported cells marked; and, when the
run trained (train.json), the end-to-end training section (reports/training.py).
Everything comes from stored rows and meta (reports/load.py), nothing from the registry.
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

from reports import load, training

CEILING_UNITS = {"fmnmx_fadd": "lane-instructions/s (FMNMX + FADD)", "copy_bandwidth": "bytes/s (copy, read + write)"}

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
    key = [*load.CELL, "variant"]
    for keys, cell in all_rows.groupby(["mode", "dtype", "shape"]):
        good = ok.merge(cell[key], on=key)
        failed = cell[cell["status"] != "ok"]
        marks = "; ".join(f"{r.variant}: {r.status}" for r in failed.itertuples())
        if good.empty:
            rows.append((*keys, "none", float("nan"), marks))
            continue
        best = good.loc[good["time_s"].idxmin()]
        name = best["variant"]
        if isinstance(best.get("tuned"), dict):         # an autotuned config: say what it picked
            picked = ", ".join(f"{k}={v}" for k, v in best["tuned"].items())
            name += f" ({picked or 'default options'})"
        rows.append((*keys, name, 1e3 * best["time_s"], marks))
    frame = pd.DataFrame(rows, columns=["mode", "dtype", "shape", "best", "ms", "cannot run"])
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
    trained = training.load(directory)
    if trained is not None:
        parts.append(training.section(trained, _png, _table))
    parts.append(CHECK_IMAGES + "</body></html>")
    out.write_text("\n".join(parts))
    return out


def _ceilings(meta: dict[str, Any]) -> dict[str, float]:
    found = dict(meta.get("ceilings") or {})
    if meta.get("ceiling") is not None:   # results written before copy_bandwidth was measured
        found.setdefault("fmnmx_fadd", meta["ceiling"])
    return {name: value for name, value in found.items() if value}


def _environment(rows: pd.DataFrame, meta: dict[str, Any]) -> str:
    env_cols = [c for c in rows.columns if c.startswith("env.")] if not rows.empty else []
    env = rows[env_cols].drop_duplicates().head(1).T.reset_index() if env_cols else pd.DataFrame()
    text = "<h2>Environment</h2>"
    if meta.get("command"):
        text += f"<p>Command: <code>{html.escape(meta['command'])}</code></p>"
    for name, value in _ceilings(meta).items():
        text += (f"<p>Measured ceiling {html.escape(name)} (harness/ceiling.py): {value:.3e} "
                 f"{html.escape(CEILING_UNITS.get(name, ''))}</p>")
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
    text = "<h2>Performance</h2>"
    notes = meta.get("problems", {})
    for problem, problem_rows in rows.groupby("problem"):
        summary = notes.get(problem, {}).get("summary", "")
        text += f"<h2>{html.escape(str(problem))}</h2><p>{html.escape(summary)}</p>"
        ok = problem_rows[problem_rows["status"] == "ok"].copy()
        if ok.empty:
            text += "<p>No variant ran.</p>"
            continue
        ok["ms"] = 1e3 * ok["time_s"]
        claims = notes.get(problem, {}).get("claims", [])
        if claims:
            text += "<h3>Claims from the seed documents</h3>" + claims_table(ok, claims, _ceilings(meta))
        for (mode, dtype), part in ok.groupby(["mode", "dtype"]):
            text += _mode_plots(part, f"{problem}, {mode}, {dtype}", _ceilings(meta))
        text += "<h3>Forward against forward + backward</h3>" + _split(ok)
        text += "<h3>Best variant per cell</h3>" + _best_table(ok, problem_rows)
    return text


def _mode_plots(part: pd.DataFrame, label: str, ceilings: dict[str, float]) -> str:
    x, facet = part["x_axis"].iloc[0], part["facet_axis"].iloc[0]
    text = f"<h3>{html.escape(label)}</h3>"
    text += _lines(part, x, "ms", facet, f"time against {x} ({label})", "ms (median)")
    if facet != x:
        text += _lines(part, facet, "ms", x, f"time against {facet} ({label})", "ms (median)", logx=True)
    best = part.groupby("shape")["time_s"].transform("min")
    part = part.assign(vs_best=part["time_s"] / best)
    reference = part[part["backend"] == part["reference"]].set_index("shape")["time_s"]
    part = part.assign(speedup=part["shape"].map(reference).to_numpy() / part["time_s"].to_numpy())
    if part["speedup"].notna().any():
        text += _lines(part.dropna(subset=["speedup"]), x, "speedup", facet,
                       f"speedup against the reference ({label})", "x reference")
    text += _lines(part, x, "vs_best", facet, f"time / best time ({label})", "x best")
    name = part["ceiling_name"].dropna().iloc[0] if "ceiling_name" in part and part["ceiling_name"].notna().any() \
        else None
    if name in ceilings:
        part = part.assign(fraction=part["rate"] * part["ceiling_per_unit"] / ceilings[name])
        text += _lines(part, x, "fraction", facet, f"fraction of the measured {name} ceiling ({label})", "fraction")
        text += _fraction_table(part, name)
    else:
        text += _lines(part, x, "rate", facet, f"rate ({label}); no ceiling measured for it here",
                       f"{part['work_unit'].iloc[0]}/s")
    if part["peak_bytes"].notna().any():
        text += _lines(part.assign(mib=part["peak_bytes"] / 2**20).dropna(subset=["mib"]).query("mib > 0"),
                       x, "mib", facet, f"peak memory above the inputs ({label})", "MiB")
    return text


def _fraction_table(part: pd.DataFrame, name: str) -> str:
    """The plotted fractions as numbers: one row per cell, one column per variant."""
    per_unit = part["ceiling_per_unit"].iloc[0]
    pivot = part.pivot_table(index="shape", columns="variant", values="fraction", aggfunc="median")
    axes = list(dict.fromkeys([part["facet_axis"].iloc[0], part["x_axis"].iloc[0]]))
    pivot = pivot.loc[part.sort_values(axes).drop_duplicates("shape")["shape"]]
    unit = html.escape(str(part["work_unit"].iloc[0]))
    return (f"<p>Fraction of the measured {html.escape(name)} ceiling per cell: {unit} per second x {per_unit:g} "
            f"(the ceiling's units per one of the {unit}), over the ceiling:</p>" + _table(pivot.reset_index()))


def claims_table(ok: pd.DataFrame, claims: list[dict[str, Any]], ceilings: dict[str, float]) -> str:
    """Each claim with what this run measured, per device and dtype (ok: one problem's timed rows)."""
    lines = []
    for claim in claims:
        for (device, dtype), part in ok.groupby(["device", "dtype"]):
            lines.append((claim["text"], device, dtype, claim_value(part, claim, ceilings),
                          str(claim.get("expected", ""))))
    return _table(pd.DataFrame(lines, columns=["claim", "device", "dtype", "measured", "claimed"]))


def claim_value(part: pd.DataFrame, claim: dict[str, Any], ceilings: dict[str, float]) -> str:
    """The measured side of one claim (registry.Problem.claims documents the kinds)."""
    if claim["kind"] == "time_ratio":
        sel = part[part["mode"] == claim["mode"]]
        for size, value in claim.get("sizes", {}).items():
            sel = sel[sel[size] == value] if size in sel else sel.iloc[0:0]
        times = sel.set_index("variant")["time_s"]
        if claim["numerator"] not in times or claim["denominator"] not in times:
            return "not measured"
        return f"{times[claim['numerator']] / times[claim['denominator']]:.3g}x"
    if claim["kind"] == "mode_ratio":
        value = part["time_s"] if claim.get("value", "time") == "time" else \
            part["peak_bytes"] + part.get("input_bytes", 0)
        pivot = part.assign(value=value).pivot_table(index=["variant", "shape"], columns="mode", values="value")
        num, den = claim["numerator_mode"], claim["denominator_mode"]
        if num not in pivot or den not in pivot:
            return "not measured"
        ratios = (pivot[num] / pivot[den]).dropna()
        if ratios.empty:
            return "not measured"
        return "; ".join(f"{v}: {r.median():.3g}x ({r.min():.3g}-{r.max():.3g})"
                         for v, r in ratios.groupby(level="variant"))
    if claim["kind"] == "ceiling_fraction":
        sel = part[(part["variant"] == claim["variant"]) & part["mode"].isin(claim["modes"])]
        if sel.empty or "ceiling_name" not in sel or sel["ceiling_name"].iloc[0] not in ceilings:
            return "not measured"
        fraction = sel["rate"] * sel["ceiling_per_unit"] / ceilings[sel["ceiling_name"].iloc[0]]
        return "; ".join(f"{mode}: {f.max():.2f} at {sel.loc[f.idxmax(), 'shape']}"
                         for mode, f in fraction.groupby(sel["mode"]))
    return f"unknown claim kind {claim['kind']!r}"


def _split(ok: pd.DataFrame) -> str:
    pivot = ok.pivot_table(index=["dtype", "shape", "variant"], columns="mode", values="ms", aggfunc="median")
    if not {"forward", "backward"} <= set(pivot.columns):
        return "<p>Only one mode was swept.</p>"
    pivot = pivot.dropna(subset=["forward", "backward"])
    pivot["backward share"] = 1 - pivot["forward"] / pivot["backward"]
    memory = ok.pivot_table(index=["dtype", "shape", "variant"], columns="mode", values="peak_bytes")
    if {"forward", "backward"} <= set(memory.columns):
        pivot["peak MiB forward"] = memory["forward"] / 2**20
        pivot["peak MiB fwd+bwd"] = memory["backward"] / 2**20
    return _table(pivot.reset_index())
