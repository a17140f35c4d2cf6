"""Time backends and option sets side by side, for tuning kernels and comparing backends.

    python benchmarks/explore.py --sizes batch=16384,hidden=32,n_bits=16 --dtype float32 --mode state \\
        --variant triton,lo_bits=5,mid_bits=8 --variant triton,lo_bits=4,mid_bits=9 --variant cupy

A variant is "backend[:config][,key=value...]".
Modes: "state" (the forward partial state: m, s), "grad-state" (m, s and the gradient
sums D), "loss" (sick_bide.loss forward under no_grad, the whole call), "loss+backward".
Variants are timed round-robin (A B C A B C ...) so that clock drift hits all alike;
each sample is triton.testing.do_bench's median (CUDA events, L2 flushed between calls),
and the table shows the median and the min..max over rounds. Each variant's lse is
compared with the first's, so a fast wrong configuration cannot hide.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from harness import autotune, registry
from harness.problems import sick_bide
from harness.problems.sick_bide_problem import make_inputs, work
from harness.verify import parse_sizes


def parse_variant(text: str) -> dict:
    """'triton:default,lo_bits=5' -> {'backend': 'triton', 'config': 'default', 'lo_bits': 5}."""
    head, *items = text.split(",")
    backend, _, config = head.partition(":")
    out = {"backend": backend, "config": config or "default"}
    for item in items:
        key, value = item.split("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def runner(mode, inputs, kw):
    W, r, targets = inputs["W"], inputs["r"], inputs["targets"]
    if mode in ("state", "grad-state"):
        return lambda: sick_bide.partial_state(W, r, want_grad=mode == "grad-state", **kw)
    if mode == "loss":
        def forward():
            with torch.no_grad():
                return sick_bide.loss(W, r, targets, **kw)
        return forward
    W_, r_ = W.detach().requires_grad_(), r.detach().requires_grad_()

    def forward_backward():
        nll, lse = sick_bide.loss(W_, r_, targets, **kw)
        torch.autograd.backward((nll, lse), (inputs["grad_nll"], inputs["grad_lse"]))
        return nll, lse
    return forward_backward


def main() -> None:
    import triton.testing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, action="append", help="backend[:config][,k=v...], repeatable")
    parser.add_argument("--sizes", required=True, action="append")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mode", default="state", choices=["state", "grad-state", "loss", "loss+backward"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    option_sets = [parse_variant(v) for v in args.variant]
    registry.load()
    for size_text in args.sizes:
        sizes = parse_sizes(size_text)
        inputs = make_inputs(sizes, getattr(torch, args.dtype), "cuda", seed=0)
        fns = [runner(args.mode, inputs, o) for o in option_sets]
        base = None
        for fn, opts in zip(fns, option_sets, strict=True):
            result = fn()
            lse = (result.m + result.s.log() if hasattr(result, "m") else result[1]).detach()
            base = lse if base is None else base
            err = float((lse.double() - base.double()).abs().max())
            if err > 1e-3 * (1 + float(base.abs().max())):
                raise SystemExit(f"options {opts} disagree with {option_sets[0]}: lse differs by {err}")
        samples = [[] for _ in fns]
        for _ in range(args.rounds):
            for i, fn in enumerate(fns):
                samples[i].append(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        print(f"# {size_text} {args.dtype} {args.mode} on {torch.cuda.get_device_name()}")
        for opts, ms in zip(option_sets, samples, strict=True):
            med = statistics.median(ms)
            rate = work(sizes) / (med * 1e-3)
            print(f"  {opts!s:60s} {med:9.4f} ms  [{min(ms):.4f}..{max(ms):.4f}]  {rate:.3e} triples/s",
                  flush=True)
    for key, chosen in autotune.choices().items():   # what the autotune configs picked, per size
        print(f"# autotune {key}: {chosen}")


if __name__ == "__main__":
    main()
