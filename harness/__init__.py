"""fusedbench: verify and benchmark backends of fused-loss kernels against a float64 reference.

    harness/registry.py     Problem and Backend records, discovery, "can this run here?"
    harness/problems/       each op's contract, written once (sick_bide.py: the fused NLL)
    harness/tolerance.py    the accuracy policy every backend is held to
    harness/measure.py      timers and peak memory
    harness/verify.py       the verification table (the main job's first half)
    harness/cli.py          python -m harness
"""

from harness.errors import InputError, UnsupportedError
from harness.registry import Backend, Problem, register

__all__ = ["Backend", "InputError", "Problem", "UnsupportedError", "register"]
