"""End-to-end: train BIDE distributions over float16 values with a backend, and evaluate them.

The SICK-BIDE paper's practical test: one (W [H, 16], r [H]) row per 1-D distribution, the
targets are the float16 bit patterns of samples (harness/codes.py), and AdamW minimises the
mean nll. Every backend gets the same seeds, initial weights and data (all steps' samples
are drawn up front), so their runs differ only by the kernel's arithmetic; their final
losses must agree within `AGREEMENT_NATS`. A run records wall time per step, the loss
curve, its EMA, and peak memory; `evaluate` turns a learned row into its density and CDF
on the codes of the distribution's bulk (harness/sampling.py), next to the truth.

True masses per float16 code are exact: the probability that a sample rounds to the
code's value is F(upper rounding boundary) - F(lower), from each distribution's CDF.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness import measure, registry, sampling
from harness.codes import from_codes, to_codes
from harness.problems import sick_bide

DTYPE = torch.float16
N_BITS = 16
EMA_DECAY = 0.99
# Agreement with the anchor run. The first EARLY_STEPS steps see the same data from the same
# weights, so their losses differ only by rounding (~1e-6 nats on the CPU); a gradient 30% off
# moves them by ~1e-2 within two steps. Later, float32 runs with different summation orders
# drift apart slowly, so the final EMA is held to the looser AGREEMENT_NATS.
EARLY_STEPS = 10
EARLY_NATS = 1e-3
AGREEMENT_NATS = 0.05


def _normal_cdf(x: Tensor, mu: float, sigma: float) -> Tensor:
    return torch.special.ndtr((x - mu) / sigma)


def _discrete_cdf(x: Tensor, pmf: Callable[[Tensor], Tensor], support: int) -> Tensor:
    k = torch.arange(support + 1, dtype=torch.float64)
    cum = torch.cumsum(pmf(k), 0)
    idx = torch.floor(x).clamp(-1, support).long()
    return torch.where(idx < 0, torch.zeros_like(x), cum[idx.clamp(min=0)])


@dataclass(frozen=True)
class Distribution:
    name: str
    draw: Callable[[torch.Generator, int], Tensor]      # (generator, count) -> float64 values
    cdf: Callable[[Tensor], Tensor]                      # float64 values -> P(X <= x)
    bulk: tuple[float, float]                            # the value range the plots show
    discrete: bool = False                               # atoms on integers: plot mass per code


def _binomial_pmf(k: Tensor) -> Tensor:
    return torch.tensor([math.comb(10, int(i)) for i in k], dtype=torch.float64) / 1024.0


def _poisson_pmf(k: Tensor) -> Tensor:
    return torch.exp(k * math.log(5.0) - 5.0 - torch.lgamma(k + 1))


DISTRIBUTIONS = (
    Distribution("normal(3, 1)", lambda g, n: 3 + torch.randn(n, generator=g, dtype=torch.float64),
                 lambda x: _normal_cdf(x, 3, 1), (-0.5, 6.5)),
    Distribution("gamma(2, 1)",
                 lambda g, n: -torch.log(torch.rand(n, generator=g, dtype=torch.float64)
                                         * torch.rand(n, generator=g, dtype=torch.float64)),
                 lambda x: torch.special.gammainc(torch.full_like(x, 2.0), x.clamp(min=0)), (0.0, 9.0)),
    Distribution("0.5 N(-2, 0.5) + 0.5 N(2, 1)",
                 lambda g, n: torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5,
                                          -2 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64),
                                          2 + torch.randn(n, generator=g, dtype=torch.float64)),
                 lambda x: 0.5 * _normal_cdf(x, -2, 0.5) + 0.5 * _normal_cdf(x, 2, 1), (-4.0, 6.0)),
    Distribution("pareto(1, 1)", lambda g, n: 1 / torch.rand(n, generator=g, dtype=torch.float64),
                 lambda x: torch.where(x >= 1, 1 - 1 / x, torch.zeros_like(x)), (1.0, 20.0)),
    Distribution("poisson(5)",
                 lambda g, n: torch.poisson(torch.full((n,), 5.0, dtype=torch.float64), generator=g),
                 lambda x: _discrete_cdf(x, _poisson_pmf, 60), (0.0, 15.0), discrete=True),
    Distribution("binomial(10, 0.5)",
                 lambda g, n: (torch.rand(n, 10, generator=g, dtype=torch.float64) < 0.5).sum(1).double(),
                 lambda x: _discrete_cdf(x, _binomial_pmf, 10), (0.0, 10.0), discrete=True),
)


@dataclass(frozen=True)
class Settings:
    """One training workload; the defaults are the paper's (2000 AdamW steps at batch 64)."""

    steps: int = 2000
    batch: int = 64              # samples per distribution per step
    hidden: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0


GPU_SETTINGS = Settings()
CPU_SETTINGS = Settings(steps=300)   # a few minutes on two cores for every CPU backend together


def make_data(settings: Settings) -> Tensor:
    """Targets for every step: float16 codes [steps, distributions, batch] (int64)."""
    gen = torch.Generator().manual_seed(settings.seed)
    values = torch.stack([d.draw(gen, settings.steps * settings.batch) for d in DISTRIBUTIONS])
    codes = to_codes(round_to_float16(values))
    return codes.view(len(DISTRIBUTIONS), settings.steps, settings.batch).transpose(0, 1).contiguous()


def round_to_float16(values: Tensor) -> Tensor:
    """float64 -> float16 rounded once to nearest, ties to even (a plain .to() rounds twice, via float32)."""
    v16 = values.to(DTYPE)
    cands = torch.stack([torch.nextafter(v16, torch.tensor(-math.inf, dtype=DTYPE)), v16,
                         torch.nextafter(v16, torch.tensor(math.inf, dtype=DTYPE))])            # [3, N]
    dist = (cands.double() - values[None]).abs()
    nearest = dist == dist.min(0, keepdim=True).values
    even = (to_codes(cands) & 1) == 0
    choice = torch.where(nearest & even, 0, torch.where(nearest, 1, 2)).argmin(0)
    best = cands.gather(0, choice[None])[0]
    return torch.where(torch.isfinite(v16), best, v16)     # beyond 65520 both roundings give inf


def initial_weights(settings: Settings) -> tuple[Tensor, Tensor]:
    """W [D, H, 16] and r [D, H] in float32, the same for every backend."""
    gen = torch.Generator().manual_seed(settings.seed + 1)
    W = torch.randn(len(DISTRIBUTIONS), settings.hidden, N_BITS, generator=gen) / math.sqrt(N_BITS)
    r = torch.randn(len(DISTRIBUTIONS), settings.hidden, generator=gen) / math.sqrt(settings.hidden)
    return W, r


def train(backend: str, config: str, device: str, settings: Settings, data: Tensor,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every distribution's row with `backend`; returns the run's record (weights included)."""
    if settings.steps < 1:
        raise ValueError(f"steps must be >= 1, got {settings.steps}")
    W0, r0 = initial_weights(settings)
    W = W0.to(device).requires_grad_()
    r = r0.to(device).requires_grad_()
    opt = torch.optim.AdamW([W, r], lr=settings.lr, weight_decay=settings.weight_decay)
    targets = data.to(device)
    losses = torch.empty(settings.steps, dtype=torch.float64, device=device)
    step_s: list[float] = []
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def loop() -> None:
        for step in range(settings.steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            nll, _ = sick_bide.loss(W, r, targets[step], backend=backend, config=config)
            loss = nll.mean()
            loss.backward()
            opt.step()
            losses[step] = loss.detach()
            sync()                           # a step's wall time is what training waits for
            step_s.append(time.perf_counter() - t0)
            if progress and (step + 1) % max(1, settings.steps // 5) == 0:
                progress(f"{backend}:{config} step {step + 1}/{settings.steps} loss {float(loss.detach()):.4f}")

    t_start = time.perf_counter()
    peak = measure.peak_memory(loop, device)
    total_s = time.perf_counter() - t_start
    curve = losses.cpu().tolist()
    ema, emas = 0.0, []
    for step, value in enumerate(curve, start=1):   # zero-started and bias-corrected, as Adam's moments
        ema = EMA_DECAY * ema + (1 - EMA_DECAY) * value
        emas.append(ema / (1 - EMA_DECAY**step))
    ordered = sorted(step_s)
    return {
        "backend": backend, "config": config, "variant": registry.variant_name(registry.backend("sick_bide", backend),
                                                                                config),
        "device": device, "steps": settings.steps, "total_s": total_s,
        "step_s_median": statistics.median(step_s), "step_s_p20": ordered[int(0.2 * (len(ordered) - 1))],
        "step_s_p80": ordered[int(0.8 * (len(ordered) - 1))], "final_nll_ema": emas[-1], "peak_bytes": peak,
        "loss": curve, "loss_ema": emas, "W": W.detach().cpu(), "r": r.detach().cpu(),
    }


def _rounding_interval(codes: Tensor) -> tuple[Tensor, Tensor]:
    """(lower, upper) float64: the reals that round to each code's float16 value (finite or +-inf).

    Each interval is half-open, (lower, upper], to match cdfs P(X <= x). Ties are measure zero
    for the continuous distributions, and integers are exact in float16 below 2048, so the
    discrete distributions' atoms sit strictly inside an interval (0 inside +0's).
    """
    v16 = from_codes(codes, DTYPE)
    v = v16.double()
    up = torch.nextafter(v16, torch.tensor(math.inf, dtype=DTYPE)).double()
    down = torch.nextafter(v16, torch.tensor(-math.inf, dtype=DTYPE)).double()
    fmax = torch.finfo(DTYPE).max
    edge = fmax + (fmax - float(torch.nextafter(torch.tensor(fmax, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE))))
    edge = (fmax + edge) / 2                                   # 65520: values from here round to inf
    upper = torch.where(v == fmax, torch.full_like(v, edge), (v + up) / 2)
    lower = torch.where(v == -fmax, torch.full_like(v, -edge), (v + down) / 2)
    upper = torch.where(v == math.inf, torch.full_like(v, math.inf), upper)
    lower = torch.where(v == math.inf, torch.full_like(v, edge), lower)
    lower = torch.where(v == -math.inf, torch.full_like(v, -math.inf), lower)
    upper = torch.where(v == -math.inf, torch.full_like(v, -edge), upper)
    # -0 takes the negatives that round to zero, +0 the rest, an atom at 0 included (the cdfs are
    # P(X <= x), so the boundary between them is the largest float64 below 0).
    negative_zero = (v == 0) & (codes >= 1 << (N_BITS - 1))
    below_zero = -math.ulp(0.0)
    upper = torch.where(negative_zero, torch.full_like(v, below_zero), upper)
    lower = torch.where((v == 0) & ~negative_zero, torch.full_like(v, below_zero), lower)
    return lower, upper


def true_masses(dist: Distribution, codes: Tensor) -> Tensor:
    """P(a sample rounds to each code's float16 value), codes [Q] -> [Q] float64."""
    lower, upper = _rounding_interval(codes)
    return (dist.cdf(upper) - dist.cdf(lower)).clamp(min=0)


def entropy(dist: Distribution) -> float:
    """Entropy in nats of the distribution rounded to float16: the lowest expected nll."""
    every = torch.arange(1 << N_BITS)
    mass = true_masses(dist, every[~torch.isnan(from_codes(every, DTYPE))])
    mass = mass[mass > 0]
    return float(-(mass * mass.log()).sum())


def value_key(codes: Tensor) -> Tensor:
    """A float64 sort key of float16 codes in value order, -0 just before +0 (as harness/sampling.py)."""
    values = from_codes(codes, DTYPE).double()
    return torch.where((values == 0) & (codes >= 1 << (N_BITS - 1)), torch.full_like(values, -math.ulp(0.0)), values)


def bulk_codes(dist: Distribution) -> Tensor:
    """Every float16 code whose value lies in the distribution's plotted range, in value order."""
    lo, hi = (torch.tensor(v, dtype=DTYPE) for v in dist.bulk)
    every = torch.arange(1 << N_BITS)
    values = from_codes(every, DTYPE).double()
    inside = (values >= float(lo)) & (values <= float(hi)) & ~torch.isnan(values)
    codes = every[inside]
    return codes[torch.argsort(value_key(codes))]


def evaluate(W: Tensor, r: Tensor, *, backend: str = "chunked", samples: int = 2000, seed: int = 0,
             max_points: int = 600) -> list[dict[str, Any]]:
    """Per distribution: values, learned and true mass per code, density (mass per unit of bucket
    width) and CDF on its bulk, and `samples` values drawn from the learned row (exact,
    harness/sampling.py).

    The learned rows are evaluated in float64 on the CPU with `backend`, whichever backend
    trained them, so every run's fit is read the same way."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    for row, dist in enumerate(DISTRIBUTIONS):
        codes = bulk_codes(dist)
        W_row, r_row = W[row:row + 1].double().cpu(), r[row:row + 1].double().cpu()
        # p over the non-NaN codes, as the CDF and the samples (nan="exclude") are normalised.
        not_nan = 1 - sampling.nan_mass(W_row, r_row, DTYPE, backend=backend)[0]
        learned = sampling.log_prob(W_row, r_row, codes[None], backend=backend)[0].exp() / not_nan
        start = sampling.cdf(W_row, r_row, codes[:1], DTYPE, backend=backend)[0, 0]
        learned_cdf = start + torch.cumsum(learned, 0) - learned[0]
        true = true_masses(dist, codes)
        true_cdf = dist.cdf(_rounding_interval(codes[:1])[0])[0] + torch.cumsum(true, 0)
        width = _bucket_widths(codes)
        drawn = sampling.sample(W_row, r_row, samples, DTYPE, generator=gen, backend=backend)[0]
        # An even subsample of the bulk for the plots, plus the heaviest codes of either distribution
        # (the atoms of the discrete ones, which an even subsample would step over).
        top = min(64, codes.numel())
        keep = torch.unique(torch.cat([torch.linspace(0, codes.numel() - 1, min(max_points, codes.numel())).round()
                                       .long(), true.topk(top).indices, learned.topk(top).indices]))
        out.append({
            "name": dist.name, "discrete": dist.discrete, "codes": codes[keep].tolist(),
            "values": from_codes(codes, DTYPE).double()[keep].tolist(),
            "learned_mass": learned[keep].tolist(), "true_mass": true[keep].tolist(),
            "learned_density": (learned / width)[keep].tolist(), "true_density": (true / width)[keep].tolist(),
            "learned_cdf": learned_cdf[keep].tolist(), "true_cdf": true_cdf[keep].tolist(),
            "samples": from_codes(drawn, DTYPE).double().tolist(),
            "max_cdf_gap": float((learned_cdf - true_cdf).abs().max()),
        })
    return out


def _bucket_widths(codes: Tensor) -> Tensor:
    """Width of the interval of reals that round to each code's value, [Q] float64."""
    lower, upper = _rounding_interval(codes)
    return upper - lower


def run(variants: Sequence[tuple[str, str]], device: str, settings: Settings,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train with each (backend, config) on the same data; summary, agreement and the learned fits.

    The first variant is the anchor the others' final losses are compared with."""
    if not variants:
        raise ValueError(f"no SICK-BIDE backend with gradients to train with on {device}")
    data = make_data(settings)
    runs = [train(b, c, device, settings, data, progress) for b, c in variants]
    anchor = runs[0]
    for record in runs:
        record["delta_nats"] = record["final_nll_ema"] - anchor["final_nll_ema"]
        record["early_delta_nats"] = max(abs(a - b) for a, b in zip(record["loss"][:EARLY_STEPS],
                                                                  anchor["loss"][:EARLY_STEPS], strict=True))
        record["agrees"] = abs(record["delta_nats"]) <= AGREEMENT_NATS and record["early_delta_nats"] <= EARLY_NATS
    fits = {record["variant"]: evaluate(record.pop("W"), record.pop("r")) for record in runs}
    from harness.sweep import environment

    entropies = [entropy(d) for d in DISTRIBUTIONS]
    return {"settings": vars(settings), "device": device, "env": environment(device),
            "distributions": [d.name for d in DISTRIBUTIONS],
            "entropy_nats": entropies, "floor_nats": sum(entropies) / len(entropies),
            "agreement_nats": AGREEMENT_NATS, "early_steps": EARLY_STEPS, "early_nats": EARLY_NATS,
            "anchor": anchor["variant"], "runs": runs, "fits": fits}


def compact(value: Any, digits: int = 6) -> Any:
    """`value` with every float rounded to `digits` significant digits, for storage."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: compact(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compact(v, digits) for v in value]
    return value


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    lines = [f"# end-to-end training: {len(result['distributions'])} float16 distributions, "
             f"{result['settings']['steps']} AdamW steps at batch {result['settings']['batch']}, "
             f"n = {N_BITS}, H = {result['settings']['hidden']}, on {result['device']}; the lowest possible "
             f"mean nll (entropy of the float16-rounded distributions) is {result['floor_nats']:.4f}"]
    for rec in result["runs"]:
        peak = "-" if rec["peak_bytes"] is None else f"{rec['peak_bytes'] / 2**20:.1f} MiB"
        lines.append(f"  {rec['variant']:<20} {rec['total_s']:8.2f} s  step {1e3 * rec['step_s_median']:7.2f} ms "
                     f"[{1e3 * rec['step_s_p20']:.2f}..{1e3 * rec['step_s_p80']:.2f}]  final nll (EMA) "
                     f"{rec['final_nll_ema']:.4f} ({rec['delta_nats']:+.4f} vs {result['anchor']}, first "
                     f"{result['early_steps']} steps within {rec['early_delta_nats']:.1e}: "
                     f"{'agrees' if rec['agrees'] else 'DISAGREES'})  peak {peak}")
    return lines
