"""The main job's verification table and its exit code."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from harness import cli


def test_verify_prints_a_row_per_backend_and_passes(tmp_path):
    out = io.StringIO()
    path = tmp_path / "rows.json"
    code = cli.main("verify", device="cpu", cases=["n=1"], dtypes=["float32"], repeats=1,
                    json_path=str(path), stream=out)
    text = out.getvalue()
    assert code == 0, text
    for variant in ("reference", "chunked", "chunked:compile"):
        assert any(line.startswith(variant + " ") and " pass " in line for line in text.splitlines()), text
    rows = json.loads(path.read_text())
    assert {r["variant"] for r in rows} >= {"reference", "chunked"}
    ran = [r for r in rows if r["status"] != "skipped"]
    assert all(r["time_forward_s"] > 0 and r["time_backward_s"] > 0 for r in ran)
    assert all({c["output"] for c in r["checks"]} == {"nll", "lse", "dW", "dr"} for r in ran)


def test_cells_a_backend_cannot_run_are_rows_with_reasons(monkeypatch):
    monkeypatch.setenv("FUSEDBENCH_MEMORY_BUDGET", "64KiB")
    out = io.StringIO()
    code = cli.main("verify", device="cpu", cases=["n=12"], dtypes=["float32"], backends=["chunked"],
                    repeats=1, stream=out)
    assert code == 0
    assert "skip" in out.getvalue() and "memory budget" in out.getvalue()


def test_failures_give_a_nonzero_exit_code(monkeypatch):
    from harness import registry

    chunked = registry.backend("sick_bide", "chunked")
    kernel = chunked.kernels["partial_state"]

    def off_by_a_bit(W, r, k_start, k_stop, out, **options):
        kernel(W, r, k_start, k_stop, out, **options)
        out.s.mul_(1.001)   # a 0.1% error in the normaliser

    monkeypatch.setitem(chunked.kernels, "partial_state", off_by_a_bit)
    out = io.StringIO()
    code = cli.main("verify", device="cpu", cases=["n=1"], dtypes=["float32"], backends=["chunked"],
                    repeats=1, stream=out)
    assert code == 1
    assert "FAIL" in out.getvalue() and "lse: max error" in out.getvalue()


def test_unknown_grid_command_and_gpus_are_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"unknown grid 'huge'; grids: \['cpu', 'gpu', 'smoke'\]"):
        cli.main("run", device="cpu", cases=["n=1"], dtypes=["float32"], repeats=1, grid="huge", out=str(tmp_path),
                 stream=io.StringIO())
    with pytest.raises(ValueError, match="unknown command 'bench'; commands: run, verify, list, sweep"):
        cli.main("bench")
    with pytest.raises(ValueError, match=r"gpus=2 but \d+ CUDA devices are visible"):
        cli._spread(2, "smoke", tmp_path, None, None, io.StringIO())


def test_train_steps_and_bad_flags_are_one_line_errors(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"--train-steps must be >= 1 for train \(0 skips training in run\), got 0"):
        cli.main("train", device="cpu", train_steps=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="--train-steps must be >= 1"):
        cli.main("run", device="cpu", train_steps=-3, out=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "harness", "run", "--grid", "huge"], capture_output=True, text=True)
    assert out.returncode == 2 and "error: unknown grid 'huge'" in out.stderr and "Traceback" not in out.stderr


def test_train_steps_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEDBENCH_TRAIN_STEPS", "2")
    assert cli.main("train", device="cpu", backends=["reference"], out=str(tmp_path), stream=io.StringIO()) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["settings"]["steps"] == 2 and [r["variant"] for r in result["runs"]] == ["reference"]
    assert (tmp_path / "report.html").exists()
