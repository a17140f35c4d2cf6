"""The end-to-end training benchmark (harness/bide.py): exact truths, shared data, agreement that can fail."""

from __future__ import annotations

import math

import pytest
import torch

from harness import Backend, bide, cli, registry, sampling
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
    fits = result["fits"]["reference"]
    assert [f["name"] for f in fits] == result["distributions"]
    for fit in fits:
        for name in ("learned_cdf", "true_cdf"):
            cdf = torch.tensor(fit[name])
            assert ((cdf >= 0) & (cdf <= 1 + 1e-9)).all() and (cdf.diff() >= -1e-12).all(), (fit["name"], name)
        assert len(fit["samples"]) == 2000


def test_evaluated_cdf_is_the_exact_cdf():
    """evaluate's running sums (learned masses after the first code) equal sampling.cdf at every code."""
    W, r = bide.initial_weights(bide.Settings(hidden=8))
    W, r = W * 3, r * 3                  # uneven enough to give NaN patterns and -0 real mass
    fits = bide.evaluate(W, r, samples=10, max_points=50)
    for row in (1, 4):                   # gamma and poisson: bulks starting at -0 and +0
        fit = fits[row]
        exact = sampling.cdf(W[row:row + 1].double(), r[row:row + 1].double(), torch.tensor(fit["codes"]),
                             bide.DTYPE, backend="chunked")[0]
        assert fit["codes"][0] in (0, 1 << 15)
        assert torch.allclose(torch.tensor(fit["learned_cdf"], dtype=torch.float64), exact, atol=1e-9), fit["name"]


def test_true_masses_match_the_data():
    """Pearson chi-square of the generated codes against the exact masses, per distribution."""
    data = bide.make_data(bide.Settings(steps=400, batch=250))          # 100k samples each
    for row, dist in enumerate(bide.DISTRIBUTIONS):
        codes = data[:, row].flatten()
        counts = torch.bincount(codes, minlength=1 << 16).double()
        expected = bide.true_masses(dist, torch.arange(1 << 16)).nan_to_num(0.0) * codes.numel()
        big = expected >= 5
        observed = torch.cat([counts[big], counts[~big].sum()[None]])
        wanted = torch.cat([expected[big], expected[~big].sum()[None]])
        chi2 = float(((observed - wanted) ** 2 / wanted.clamp_min(1e-9)).sum())
        dof = int(big.sum())
        assert chi2 < dof + 10 * math.sqrt(2 * dof) + 30, (dist.name, chi2, dof)
    zero, negative_zero = 0, 1 << 15
    poisson = bide.DISTRIBUTIONS[4]
    assert float(bide.true_masses(poisson, torch.tensor([negative_zero]))[0]) == 0.0
    assert abs(float(bide.true_masses(poisson, torch.tensor([zero]))[0]) - math.exp(-5)) < 1e-15


def test_round_to_float16_rounds_once():
    values = torch.tensor([1 + 2**-11 + 2**-40, 1 + 2**-11, 1 + 3 * 2**-11, 65519.0, 65520.0, -2.5e-8, 3.0],
                          dtype=torch.float64)
    got = bide.round_to_float16(values).double()
    assert got.tolist()[:3] == [1 + 2**-10, 1.0, 1 + 2**-9]      # above the tie, a tie to even, a tie to even
    assert got[3] == 65504 and got[4] == math.inf and got[5] == 0 and got[6] == 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=gen, dtype=torch.float64) * 10 ** torch.randint(-6, 4, (20000,), generator=gen)
    y = bide.round_to_float16(x)
    for direction in (math.inf, -math.inf):
        other = torch.nextafter(y, torch.tensor(direction, dtype=torch.float16)).double()
        assert ((y.double() - x).abs() <= (other - x).abs()).all()


def test_training_refuses_no_steps_and_no_backends():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        bide.train("chunked", "default", "cpu", bide.Settings(steps=0), torch.zeros(0, 6, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="no SICK-BIDE backend with gradients"):
        bide.run([], "cpu", SHORT)


def test_training_variants_put_the_reference_first():
    variants = cli.training_variants("cpu")
    assert variants[0] == ("reference", "default")
    chunked = registry.backend("sick_bide", "chunked")
    runnable = [("chunked", c) for c in chunked.configs if registry.unavailable_reason(chunked, c, "cpu") is None]
    assert cli.training_variants("cpu", backends=["chunked"]) == sorted(runnable)
    assert cli.training_variants("cpu", backends=["manual"]) == []       # a layer backend: no gradients here
