"""Does a one-call sample after an idle gap read slower than the same call on a busy GPU?

The sweep (harness/sweep.py) times one call per sample, after an L2 flush, between other variants'
calls and host work; a GPU that idles there may lower its clock and ramp it up during the sampled call.
This times one SICK-BIDE forward call per variant under five conditions, interleaved per round:
  idle:  the host sleeps 100 ms, then the sweep's sample() (flush, events, one call);
  spin:  the host sleeps 100 ms, a ~20 ms device spin is queued, then sample();
  b2b:   sample() right after another sample() of the same call;
  b2b-spin: as b2b with the spin queued in between (the host's work before the call's first
         launch then overlaps the spin instead of delaying the first launch);
  do_bench: triton.testing.do_bench's median of back-to-back calls (benchmarks/explore.py's timer).
Usage on a CUDA machine: python benchmarks/clock_ramp.py [--rounds 10] [--variant cupy --variant triton]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import triton.testing

from harness import registry, sweep
from harness.problems.sick_bide_problem import make_inputs, prepare
from harness.verify import parse_sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--sizes", default="batch=16384,hidden=32,n_bits=16")
    args = parser.parse_args()
    registry.load()
    device = torch.device("cuda", torch.cuda.current_device())
    inputs = make_inputs(parse_sizes(args.sizes), torch.float32, device, seed=0)
    flush = sweep.L2Flush(device)
    fns = {}
    for name in args.variant or ["cupy", "triton"]:
        backend, _, config = name.partition(":")
        fns[name] = prepare(registry.backend("sick_bide", backend), config or "default", inputs, "forward")
        fns[name]()
    spin_cycles = 40_000_000           # torch.cuda._sleep: ~20 ms at the H100's 1.98 GHz
    conditions = ("idle", "spin", "b2b", "b2b-spin", "do_bench")
    samples = {(name, cond): [] for name in fns for cond in conditions}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            time.sleep(0.1)
            samples[name, "idle"].append(sweep.sample(fn, device, flush))
            time.sleep(0.1)
            torch.cuda._sleep(spin_cycles)
            samples[name, "spin"].append(sweep.sample(fn, device, flush))
            sweep.sample(fn, device, flush)
            samples[name, "b2b"].append(sweep.sample(fn, device, flush))
            torch.cuda._sleep(spin_cycles)
            samples[name, "b2b-spin"].append(sweep.sample(fn, device, flush))
            samples[name, "do_bench"].append(1e-3 * triton.testing.do_bench(fn, warmup=25, rep=100,
                                                                            return_mode="median"))
    print(f"# {args.sizes} float32 forward whole call on {torch.cuda.get_device_name(device)}, ms")
    for (name, cond), ms in samples.items():
        ms = [1e3 * s for s in ms]
        print(f"  {name:12s} {cond:8s} median {statistics.median(ms):7.3f}  [{min(ms):.3f}..{max(ms):.3f}]")


if __name__ == "__main__":
    main()
