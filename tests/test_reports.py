"""The sweep writes rows as it goes; the report renders in a real browser; compare gates on noise."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from harness import cli, sweep
from reports import compare, load


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A smoke run of the main job on the CPU: verification, sweep, a few training steps, report.
    (Triton's interpreter, on under the tests, would train at a step a minute: left out.)"""
    out = tmp_path_factory.mktemp("results")
    code = cli.main("run", device="cpu", cases=["n=1"], dtypes=["float32"], repeats=1, grid="smoke", out=str(out),
                    backends=["reference", "chunked"], train_steps=4)
    assert code == 0
    return out


def test_sweep_rows_record_every_variant_with_timing_and_reasons(results):
    rows = [json.loads(line) for line in (results / "sweep.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in rows} == {"forward", "backward"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert {"reference", "chunked"} <= {r["variant"] for r in ok}
    for row in ok:
        assert row["time_p20_s"] <= row["time_s"] <= row["time_p80_s"]
        assert len(row["samples_s"]) == row["rounds"] >= 2
        assert row["timing_method"] == "perf_counter" and row["env"]["torch"]
    for row in rows:
        if row["status"] != "ok":
            assert row["reason"], row   # e.g. "runs on cuda, not cpu"


def test_interrupted_sweep_keeps_finished_rows(results, tmp_path):
    text = (results / "sweep.jsonl").read_text()
    (tmp_path / "sweep.jsonl").write_text(text + '{"problem": "sick_bide", "status": "o')   # killed mid-write
    frame = load.sweep_rows(tmp_path)
    assert len(frame) == len(text.splitlines())


def test_slow_variants_are_recorded_not_timed(tmp_path):
    rows = sweep.run(device="cpu", grid="smoke", out_path=tmp_path / "s.jsonl", problems=["sick_bide"],
                     backends=["chunked"], overrides={"max_call_s": 0.0, "mode": ["forward"]})
    assert [r["status"] for r in rows] == ["slow", "slow"]   # default and compile configs
    assert "max_call_s" in rows[0]["reason"]


def test_report_has_every_section(results):
    text = (results / "report.html").read_text()
    for heading in ("Environment", "Correctness against the float64 oracle", "Performance",
                    "Forward against forward + backward", "Best variant per cell", "End-to-end training"):
        assert heading in text
    assert text.count("data:image/png;base64,") >= 4 + 1 + 6     # + loss curves + a fit per distribution


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs Debian's chromium: .ci/install)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    url = (results / "report.html").as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    body = dom[dom.index("<body"):dom.index(">", dom.index("<body"))]
    images = int(body.split('data-images="')[1].split('"')[0])
    loaded = int(body.split('data-images-loaded="')[1].split('"')[0])
    assert images >= 4 and loaded == images, body
    assert dom.count("<table") >= 3
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,3000",
                    f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


def _rows(path, scale, spread):
    rows = []
    for n_bits, variant in [(8, "a"), (12, "a"), (8, "b")]:
        base = 1e-3 * n_bits
        samples = [base * scale * (1 + spread * (i % 5 - 2) / 10) for i in range(10)]
        rows.append({"problem": "p", "n_bits": n_bits, "shape": f"n_bits={n_bits}", "dtype": "float32",
                     "mode": "forward", "device": "cpu", "variant": variant, "status": "ok",
                     "time_s": sorted(samples)[5], "samples_s": samples})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_compare_flags_only_significant_regressions(tmp_path):
    base = _rows(tmp_path / "base.jsonl", 1.0, 0.1)
    table, code = compare.compare(base, _rows(tmp_path / "same.jsonl", 1.01, 0.1))
    assert set(table["verdict"]) == {"same"} and code == 0
    table, code = compare.compare(base, _rows(tmp_path / "slow.jsonl", 1.5, 0.1), threshold=1.2)
    assert set(table["verdict"]) == {"slower"} and code == 1
    assert (table["ci lo"] > 1).all()
    _, code = compare.compare(base, _rows(tmp_path / "slightly.jsonl", 1.15, 0.01), threshold=1.2)
    assert code == 0   # significant but under the threshold


def test_shards_cover_the_grid_once(tmp_path):
    run = {"device": "cpu", "grid": "smoke", "problems": ["sick_bide"], "backends": ["reference"],
           "overrides": {"sizes": {"n_bits": [3, 4, 5], "batch": [3], "hidden": [5]}}}
    every = [(r["n_bits"], r["mode"]) for r in sweep.run(**run, out_path=tmp_path / "all.jsonl")]
    parts = [sweep.run(**run, out_path=tmp_path / f"sweep-{i}.jsonl", shard=(i, 2)) for i in range(2)]
    assert sorted((r["n_bits"], r["mode"]) for part in parts for r in part) == sorted(every)
    assert len(load.sweep_rows(tmp_path)) == len(every)   # all.jsonl and the shards: the same cells, kept once


def test_best_table_names_what_an_autotuned_config_picked():
    import pandas as pd

    from reports import html

    cell = {"problem": "sick_bide", "shape": "n=24", "dtype": "float32", "mode": "forward", "device": "cuda"}
    rows = pd.DataFrame([
        {**cell, "variant": "triton", "status": "ok", "time_s": 2e-3, "tuned": None},
        {**cell, "variant": "triton:autotune", "status": "ok", "time_s": 1e-3, "tuned": {"mid_bits": 9}},
    ])
    table = html._best_table(rows, rows)
    assert "triton:autotune (mid_bits=9)" in table
    rows["tuned"] = [None, {}]
    assert "triton:autotune (default options)" in html._best_table(rows, rows)


def test_rows_name_the_commit_and_whether_the_tree_was_dirty(tmp_path):
    """A result row's commit says "+dirty" when tracked files differ from it: such rows are not that commit's."""
    repo = tmp_path / "repo"
    repo.mkdir()
    tracked = repo / "f.txt"
    tracked.write_text("a")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)
    git("init", "-q")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    clean = sweep._commit(repo)
    tracked.write_text("b")
    assert clean and "+" not in clean and sweep._commit(repo) == clean + "+dirty"


def test_fraction_table_divides_rate_times_instructions_by_the_ceiling():
    import pandas as pd

    from reports import html

    cell = {"problem": "sick_bide", "dtype": "float32", "mode": "forward", "device": "cuda", "x_axis": "n_bits",
            "facet_axis": "batch", "batch": 64, "ceiling_name": "fmnmx_fadd", "ceiling_per_unit": 2.0,
            "backend": "triton", "reference": "reference", "peak_bytes": None, "work_unit": "triples"}
    rows = pd.DataFrame([
        {**cell, "variant": "triton", "shape": "n_bits=16,batch=64", "n_bits": 16, "time_s": 1e-3, "rate": 1e12},
        {**cell, "variant": "cupy", "shape": "n_bits=16,batch=64", "n_bits": 16, "time_s": 1e-3, "rate": 2e12},
        {**cell, "variant": "cupy", "shape": "n_bits=8,batch=64", "n_bits": 8, "time_s": 1e-3, "rate": 4e11},
    ])
    rows["ms"] = 1e3 * rows["time_s"]
    text = html._mode_plots(rows, "sick_bide, forward, float32", {"fmnmx_fadd": 4e12})
    table = text[text.index("per cell:"):]
    assert table.index("n_bits=8,batch=64") < table.index("n_bits=16,batch=64")
    assert ">0.5<" in table and ">1<" in table and ">0.2<" in table    # 2 x rate / 4e12
    assert ">nan<" in table                                           # triton has no n = 8 cell
