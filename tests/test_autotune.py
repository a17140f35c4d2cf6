"""harness/autotune.py: candidates are merged, timed once per key, and the fastest runs."""

from __future__ import annotations

import pytest
import torch

from harness import Backend, UnsupportedError, autotune, buffers, measure, registry
from harness.problems import sick_bide
from harness.problems.sick_bide import PartialState


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(autotune, "_chosen", {})
    monkeypatch.setattr(autotune, "_last", {})


def test_split_merges_candidates_over_the_base_options():
    base, candidates = autotune.split({"a": 1, "b": 2, autotune.AUTOTUNE: [{}, {"b": 3}]})
    assert base == {"a": 1, "b": 2}
    assert candidates == [{"a": 1, "b": 2}, {"a": 1, "b": 3}]
    assert autotune.split({"a": 1}) == ({"a": 1}, None)
    with pytest.raises(ValueError, match="non-empty list"):
        autotune.split({autotune.AUTOTUNE: []})


def test_bucket_rounds_up_to_a_power_of_two():
    assert [autotune.bucket(n) for n in (1, 2, 3, 64, 65, 1000)] == [1, 2, 4, 64, 128, 1024]


def fake_timer(monkeypatch, seconds):
    """measure.time_call returning `seconds[name]` for the candidate named `name`; records calls."""
    timed = []

    def fake_time_call(fn, device, *, warmup=1, repeats=5, number=1):
        options = fn()
        timed.append(options["name"])
        return measure.Timing((seconds[options["name"]],) * repeats, "fake")

    monkeypatch.setattr(measure, "time_call", fake_time_call)
    return timed


def test_the_fastest_candidate_is_chosen_once_per_key(monkeypatch):
    timed = fake_timer(monkeypatch, {"slow": 3e-3, "fast": 1e-3, "middle": 2e-3})
    candidates = [{"name": name} for name in ("slow", "fast", "middle")]
    cuda = torch.device("cuda")
    assert autotune.choose("key", candidates, lambda o: o, cuda) == {"name": "fast"}
    calls = len(timed)
    assert autotune.choose("key", candidates, lambda o: o, cuda) == {"name": "fast"}
    assert len(timed) == calls                                   # cached: not timed again
    assert timed[:3] == ["slow", "fast", "middle"]               # sized once each, then
    assert timed[3:] == ["slow", "fast", "middle"] * autotune.ROUNDS   # interleaved rounds
    assert autotune.choices() == {"key": {"name": "fast"}}
    # Other candidates under the same key (a call overriding the config's options) are tuned anew.
    other = [{"name": name, "extra": 1} for name in ("slow", "fast", "middle")]
    assert autotune.choose("key", other, lambda o: o, cuda) == {"name": "fast", "extra": 1}


def test_the_first_candidate_stays_unless_beaten_by_the_margin(monkeypatch):
    fake_timer(monkeypatch, {"default": 1.00e-3, "noise": 0.99e-3, "better": 0.90e-3})
    cuda = torch.device("cuda")
    pair = [{"name": "default"}, {"name": "noise"}]
    assert autotune.choose("a", pair, lambda o: o, cuda) == {"name": "default"}
    assert autotune.choose("b", [{"name": "default"}, {"name": "better"}], lambda o: o, cuda) == {"name": "better"}


def test_a_candidate_that_fails_drops_out_but_a_failing_default_raises(monkeypatch):
    fake_timer(monkeypatch, {"default": 2e-3, "fast": 1e-3, "broken": 0.5e-3})

    def run(options):
        if options["name"] == "broken":
            raise RuntimeError("out of resources")
        return options

    cuda = torch.device("cuda")
    three = [{"name": "default"}, {"name": "broken"}, {"name": "fast"}]
    assert autotune.choose("k1", three, run, cuda) == {"name": "fast"}
    with pytest.raises(RuntimeError, match="out of resources"):
        autotune.choose("k2", [{"name": "broken"}, {"name": "fast"}], run, cuda)


def test_off_cuda_the_first_candidate_runs_untimed():
    ran = []
    chosen = autotune.choose("cpu-key", [{"x": 1}, {"x": 2}], lambda o: ran.append(o), torch.device("cpu"))
    assert chosen == {"x": 1} and ran == []


def test_partial_state_runs_the_tuned_options_without_the_candidate_list(monkeypatch):
    seen = []

    def kernel(W, r, k_start, k_stop, out: PartialState, **options):
        seen.append(options)
        registry.backend("sick_bide", "chunked").kernels["partial_state"](W, r, k_start, k_stop, out)

    spy = Backend(name="spy", problem="sick_bide", kernels={"partial_state": kernel},
                  dtypes=(torch.float32,), features=frozenset({"grad", "k_ranges"}),
                  configs={"default": {}, "autotune": {"block": 1, autotune.AUTOTUNE: [{}, {"block": 2}]}})
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", "spy"), spy)
    W, r = torch.randn(3, 4, 5), torch.randn(3, 4)
    with pytest.raises(UnsupportedError, match="CUDA only"):     # timing candidates needs CUDA events
        sick_bide.partial_state(W, r, backend="spy", config="autotune")
    assert seen == []
    # Past the registry (as on a GPU), the harness strips the list and runs the chosen candidate.
    tuned = sick_bide._run_partial_state(spy, spy.configs["autotune"], W, r, 0, 32, want_grad=False)
    plain = sick_bide.partial_state(W, r, backend="chunked")
    assert seen == [{"block": 1}]
    torch.testing.assert_close(tuned.m, plain.m)
    torch.testing.assert_close(tuned.s, plain.s)
    (key,) = autotune.choices()
    assert key[:3] == ("spy", 5, 4) and autotune.choices()[key] == {"block": 1}


def test_tuning_runs_do_not_fill_the_returned_state(monkeypatch):
    """Candidates write into a state of their own, so the poison of `out` still exposes an
    element the chosen kernel never writes."""

    def kernel(W, r, k_start, k_stop, out: PartialState, *, write_s):
        out.m.fill_(0.0)
        if write_s:
            out.s.fill_(1.0)

    def every_candidate_runs(key, candidates, run, device):
        for candidate in candidates:
            run(candidate)
        return candidates[-1]

    monkeypatch.setattr(autotune, "choose", every_candidate_runs)
    spy = Backend(name="spy", problem="sick_bide", kernels={"partial_state": kernel})
    W, r = torch.randn(3, 4, 5), torch.randn(3, 4)
    options = {autotune.AUTOTUNE: [{"write_s": True}, {"write_s": False}]}
    with buffers.poisoned():
        state = sick_bide._run_partial_state(spy, options, W, r, 0, 32, want_grad=False)
    assert bool(state.s.isnan().all()) and bool((state.m == 0).all())


def test_a_loss_kernel_backend_cannot_autotune(monkeypatch):
    def loss(W, r, targets, **options):
        raise AssertionError("the kernel ran despite the refusal")

    spy = Backend(name="spy", problem="sick_bide", kernels={"loss": loss},
                  configs={"default": {}, "autotune": {autotune.AUTOTUNE: [{}]}})
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", "spy"), spy)
    monkeypatch.setattr(registry, "unavailable_reason", lambda *args: None)   # as if on CUDA
    W, r = torch.randn(3, 4, 5), torch.randn(3, 4)
    with pytest.raises(UnsupportedError, match="backend 'spy': autotuning is for partial_state kernels"):
        sick_bide.loss(W, r, torch.zeros(3, dtype=torch.long), backend="spy", config="autotune")
