"""Scaling of the sharded loss from 1 GPU to all ranks of a torchrun job (NCCL).

    torchrun --standalone --nproc_per_node=2 benchmarks/distributed_scaling.py --n-bits 28 32 --batch 1

For each n: rank 0 runs the loss alone (1 GPU) while the others wait, then every rank
runs its shard (harness/distributed.py); both are timed as whole calls (forward; forward +
backward) with CUDA events and a barrier on each side, medians of --repeats. Rank 0
prints the table: times, speedup, efficiency = t1 / (world x tN), and the largest
relative difference between the sharded and the 1-GPU nll, lse, dW, dr (two float32
summation orders over 2^n codes; above 1e-2 it stops, as that is a bug, not rounding).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.distributed as dist

from harness import distributed
from harness.problems import sick_bide
from harness.problems.sick_bide_problem import make_inputs


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        dist.barrier()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        dist.barrier()
        samples.append(start.elapsed_time(stop))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-bits", type=int, nargs="+", default=[28, 32])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--backend", default="cupy")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        print(f"# {world} x {torch.cuda.get_device_name()}, backend {args.backend}, batch {args.batch}, "
              f"hidden {args.hidden}")
        print(f"{'n':>3} {'mode':>16} {'1 GPU ms':>10} {f'{world} GPUs ms':>11} {'speedup':>8} {'efficiency':>10} "
              f"{'max rel diff':>12}")
    for n_bits in args.n_bits:
        sizes = {"batch": args.batch, "hidden": args.hidden, "n_bits": n_bits}
        inputs = make_inputs(sizes, torch.float32, "cuda", seed=0)
        W, r, t = inputs["W"], inputs["r"], inputs["targets"]
        for mode in ("forward", "forward+backward"):
            def run(sharded: bool, W=W, r=r, t=t, grad=mode != "forward"):
                Wl, rl = W.detach().requires_grad_(grad), r.detach().requires_grad_(grad)
                call = distributed.sharded_loss if sharded else sick_bide.loss
                nll, lse = call(Wl, rl, t, backend=args.backend)
                if grad:
                    (nll.sum() + lse.sum()).backward()
                return nll.detach(), lse.detach(), Wl.grad, rl.grad

            single = run(False) if rank == 0 else None     # warm-up, and the result to compare with
            sharded = run(True)
            diff = 0.0
            if rank == 0:
                for a, b in zip(single, sharded, strict=True):
                    if a is not None:
                        diff = max(diff, float(((b - a).abs() / a.abs().clamp_min(1e-3 * a.abs().max())).max()))
                if diff > 1e-2:
                    raise SystemExit(f"n={n_bits} {mode}: sharded and 1-GPU results differ by {diff:.3g} (relative)")
            t1 = timed(lambda: run(False) if rank == 0 else None, args.repeats)
            tn = timed(lambda: run(True), args.repeats)
            if rank == 0:
                print(f"{n_bits:>3} {mode:>16} {t1:>10.2f} {tn:>11.2f} {t1 / tn:>8.2f} {t1 / (world * tn):>10.2f} "
                      f"{diff:>12.2e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
