"""The report's end-to-end training section, from a results directory's train.json (harness/bide.py).

A table per backend (wall time, time per step with its spread, final nll and its agreement with
the anchor backend, peak memory), the loss curves of every backend on one axis, and per
distribution the learned density and CDF against the true ones, with samples drawn from the
anchor's learned distribution.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd


def load(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / "train.json"
    return json.loads(path.read_text()) if path.exists() else None


def _device(result: dict[str, Any]) -> str:
    env = result.get("env") or {}
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "cupy", "commit") if env.get(k))
    name = env.get("device_name") or result["device"]
    return f"{name} ({versions})" if versions else str(name)


def section(result: dict[str, Any], png, table) -> str:
    """HTML for one training result; `png(fig)` embeds a figure, `table(frame, classes)` renders a table."""
    settings = result["settings"]
    text = (f"<h2>End-to-end training</h2><p>{len(result['distributions'])} float16 distributions learned at "
            f"once ({html.escape(', '.join(result['distributions']))}): {settings['steps']} AdamW steps "
            f"(lr {settings['lr']}) at {settings['batch']} samples per distribution, n = 16, H = "
            f"{settings['hidden']}, on {html.escape(_device(result))}, the same data and initial weights "
            f"for every backend. The lowest possible mean nll (entropy of the float16-rounded "
            f"distributions) is {result['floor_nats']:.4f} nats. Each run must agree with the anchor "
            f"({html.escape(result['anchor'])}): its first {result['early_steps']} losses within "
            f"{result['early_nats']} nats (the same data and weights, so only rounding differs), its final "
            f"EMA within {result['agreement_nats']} nats.</p>")
    if result.get("command"):
        text += f"<p>Command: <code>{html.escape(result['command'])}</code></p>"
    frame = pd.DataFrame([{
        "variant": rec["variant"], "total s": rec["total_s"], "step ms (median)": 1e3 * rec["step_s_median"],
        "step ms p20..p80": f"{1e3 * rec['step_s_p20']:.3g}..{1e3 * rec['step_s_p80']:.3g}",
        "final nll (EMA)": rec["final_nll_ema"], "vs anchor": rec["delta_nats"],
        f"first {result['early_steps']} steps vs anchor": rec["early_delta_nats"],
        "agrees": "yes" if rec["agrees"] else "NO: a bug",
        "peak MiB": float("nan") if rec["peak_bytes"] is None else rec["peak_bytes"] / 2**20,
    } for rec in result["runs"]])
    classes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    classes.loc[~frame["agrees"].eq("yes"), "agrees"] = "bad"
    text += table(frame, classes)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for rec in result["runs"]:
        ax.plot(rec["loss_ema"], label=rec["variant"])
    ax.axhline(result["floor_nats"], color="black", linestyle=":", label="entropy floor")
    ax.set(xlabel="step", ylabel="mean nll (EMA), nats", title="loss curves")
    ax.legend(fontsize=8)
    text += png(fig)
    anchor_fit = result["fits"].get(result["anchor"], [])
    for i, name in enumerate(result["distributions"]):
        fig, (dens, cdf) = plt.subplots(1, 2, figsize=(10, 3.2))
        ref = anchor_fit[i] if anchor_fit else next(iter(result["fits"].values()))[i]   # carries the truth
        # Discrete distributions are atoms on integers: their density per bucket width is a set of
        # spikes as tall as 1 / width, so they are shown as mass per code instead.
        key, label = ("mass", "probability per code") if ref.get("discrete") else ("density", "density per unit "
                                                                                   "of bucket width")
        lo, hi = min(ref["values"]), max(ref["values"])
        samples = [v for v in ref["samples"] if lo <= v <= hi]
        if samples and key == "density":   # density of all samples: weights 1 / (all x bin width)
            width = (hi - lo) / 60
            dens.hist(samples, bins=60, range=(lo, hi), weights=[1 / (len(ref["samples"]) * width)] * len(samples),
                      alpha=0.25, color="gray", label=f"samples ({result['anchor']}), {len(samples)} in range")
        dens.plot(ref["values"], ref[f"true_{key}"], color="black", linewidth=1.2, label="true")
        cdf.plot(ref["values"], ref["true_cdf"], color="black", linewidth=1.2, label="true")
        for variant, fits in result["fits"].items():
            fit = fits[i]
            dens.plot(fit["values"], fit[f"learned_{key}"], linewidth=0.8, label=variant)
            cdf.plot(fit["values"], fit["learned_cdf"], linewidth=0.8,
                     label=f"{variant} (max gap {fit['max_cdf_gap']:.3f})")
        # Codes near 0 have tiny buckets, so a little learned mass there is a huge density: clip.
        dens.set_ylim(0, 1.5 * max(ref[f"true_{key}"]))
        dens.set(title=f"{name}: {label} (y clipped)", xlabel="value")
        cdf.set(title=f"{name}: CDF", xlabel="value")
        dens.legend(fontsize=7)
        cdf.legend(fontsize=7)
        text += png(fig)
    return text
