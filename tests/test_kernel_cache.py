"""The CuPy backend keeps its compiled kernels on disk: built once, read back by later processes."""

from __future__ import annotations

import pathlib

import pytest

from backends import cupy_mitm


def test_a_kernel_is_built_once_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def build():
        builds.append(1)
        return b"cubin bytes"

    assert cupy_mitm.disk_cached("k.cubin", build) == b"cubin bytes"
    assert cupy_mitm.disk_cached("k.cubin", build) == b"cubin bytes"
    assert len(builds) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k.cubin"]   # no partial file left


@pytest.mark.parametrize("off", ["", "0"])
def test_an_empty_or_zero_cache_dir_turns_the_cache_off(tmp_path, monkeypatch, off):
    monkeypatch.setenv("FUSEDBENCH_CACHE_DIR", off)
    monkeypatch.chdir(tmp_path)
    builds = []
    for _ in range(2):
        cupy_mitm.disk_cached("k.cubin", lambda: builds.append(1) or b"x")
    assert cupy_mitm.cache_dir() is None and len(builds) == 2 and not list(tmp_path.iterdir())


def test_the_default_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSEDBENCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cupy_mitm.cache_dir() == tmp_path / "fusedbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cupy_mitm.cache_dir() == pathlib.Path.home() / ".cache" / "fusedbench"


def test_a_failed_write_leaves_the_build_uncached(tmp_path, monkeypatch):
    """Where the rename fails (a full disk, a read-only mount) the call still returns the build."""
    monkeypatch.setenv("FUSEDBENCH_CACHE_DIR", str(tmp_path))

    def fail(*args):
        raise OSError("read-only file system")

    monkeypatch.setattr(cupy_mitm.os, "replace", fail)
    assert cupy_mitm.disk_cached("k.cubin", lambda: b"x") == b"x"
    assert not list(tmp_path.iterdir())                 # neither the file nor its partial copy
