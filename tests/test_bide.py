"""The end-to-end training benchmark (harness/bide.py): exact truths, shared data, agreement that can fail."""

from __future__ import annotations

import math

import pytest
import torch

from harness import Backend, bide, cli, registry
from harness.codes import from_codes
from harness.problems import sick_bide

SHORT = bide.Settings(steps=12, batch=16, hidden=8)


@pytest.mark.parametrize("dist", bide.DISTRIBUTIONS, ids=lambda d: d.name)
def test_true_masses_partition_the_float16_line(dist):
    every = torch.arange(1 << 16)
    values = from_codes(every, bide.DTYPE).double()
    codes = every[~torch.isnan(values)]
    mass = bide.true_masses(dist, codes)
    assert (mass >= 0).all() and abs(float(mass.sum()) - 1) < 1e-12
    order = codes[torch.argsort(from_codes(codes, bide.DTYPE).double() - (codes >= 1 << 15).double() * 1e-300)]
    lower, upper = bide._rounding_interval(order)
    assert torch.equal(upper[:-1], lower[1:])          # adjacent buckets meet exactly
    assert lower[0] == -math.inf and upper[-1] == math.inf
    assert 0 < bide.entropy(dist) < 16 * math.log(2)


def test_data_is_the_same_for_every_run_and_are_float16_patterns():
    data = bide.make_data(SHORT)
    assert data.shape == (SHORT.steps, len(bide.DISTRIBUTIONS), SHORT.batch)
    assert torch.equal(data, bide.make_data(SHORT))
    values = from_codes(data, bide.DTYPE).double()
    binomial = values[:, [d.name for d in bide.DISTRIBUTIONS].index("binomial(10, 0.5)")]
    assert ((binomial >= 0) & (binomial <= 10) & (binomial == binomial.round())).all()


def wrong_gradient_backend() -> Backend:
    """chunked with its gradient sums scaled by 0.7: the loss is right, the gradient is not."""
    chunked = registry.backend("sick_bide", "chunked")

    def partial_state(W, r, k_start, k_stop, out):
        chunked.kernels["partial_state"](W, r, k_start, k_stop, out)
        if out.D is not None:
            out.D.mul_(0.7)

    return Backend(name="wrong-grad", problem="sick_bide", kernels={"partial_state": partial_state},
                   dtypes=sick_bide.DTYPES, features=frozenset({"grad", "k_ranges"}))


def test_backends_train_alike_and_a_wrong_gradient_is_flagged(monkeypatch):
    bad = wrong_gradient_backend()
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", bad.name), bad)
    settings = bide.Settings(steps=40, batch=16, hidden=8)
    result = bide.run([("reference", "default"), ("chunked", "default"), ("wrong-grad", "default")], "cpu", settings)
    runs = {rec["variant"]: rec for rec in result["runs"]}
    assert result["anchor"] == "reference"
    assert runs["reference"]["loss_ema"][-1] < runs["reference"]["loss"][0] - 1.0       # it learns
    assert runs["chunked"]["agrees"] and runs["chunked"]["early_delta_nats"] < 1e-5
    assert not runs["wrong-grad"]["agrees"] and runs["wrong-grad"]["early_delta_nats"] > bide.EARLY_NATS
    for rec in result["runs"]:
        assert rec["steps"] == 40 and len(rec["loss"]) == 40
        assert rec["step_s_p20"] <= rec["step_s_median"] <= rec["step_s_p80"]
    fits = result["fits"]["reference"]
    assert [f["name"] for f in fits] == result["distributions"]
    for fit in fits:
        cdf = torch.tensor(fit["learned_cdf"])
        assert ((cdf >= 0) & (cdf <= 1 + 1e-9)).all() and (cdf.diff() >= -1e-12).all()
        assert len(fit["samples"]) == 2000 and len(fit["values"]) == len(fit["true_density"])
    assert abs(result["floor_nats"] - sum(result["entropy_nats"]) / 6) < 1e-12


def test_training_variants_put_the_reference_first():
    variants = cli.training_variants("cpu")
    assert variants[0] == ("reference", "default")
    assert ("chunked", "compile") in variants
    assert cli.training_variants("cpu", backends=["chunked"]) == [("chunked", "compile"), ("chunked", "default")]
