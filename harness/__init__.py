"""fusedbench: verify and benchmark backends of fused-loss kernels against a float64 reference.

    harness/registry.py     Problem and Backend records, discovery, "can this run here?"
    harness/problems/       each op's contract, written once (sick_bide.py: the fused NLL;
                            softmax.py, mlp.py, layers.py: the seeds' layer backward passes)
    harness/layer.py        the contract, validation and autograd plumbing shared by layer problems
    harness/tolerance.py    the accuracy policy every backend is held to
    harness/measure.py      timers and peak memory
    harness/verify.py       the verification table (the main job's first half)
    harness/sweep.py        benchmark sweeps: grids, interleaving, device timing, stored rows
    harness/bide.py         the end-to-end training benchmark (BIDE distributions over float16)
    harness/sampling.py     exact CDFs and samples of learned distributions, from partial states
    harness/cli.py          python -m harness
"""

from harness.errors import InputError, UnsupportedError
from harness.registry import Backend, Problem, register

__all__ = ["Backend", "InputError", "Problem", "UnsupportedError", "register"]
