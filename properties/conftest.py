"""Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (default: ci).

    ci        fast and derandomized: the same examples every run, fits CI's budget
    dev       more examples, random each run: for working on a backend
    thorough  many examples: before a release or after touching a kernel
"""

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,  # first calls compile kernels; time is measured by benchmarks, not here
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.differing_executors],
}
settings.register_profile("ci", max_examples=50, derandomize=True, **_common)
settings.register_profile("dev", max_examples=200, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
