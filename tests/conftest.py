import os

import pytest
from hypothesis import HealthCheck, settings

from ksubset.core import available_engines, use_engine

ENGINES = available_engines()

# Hypothesis profiles, chosen with the environment variable HYPOTHESIS_PROFILE: "ci" (the default) replays the
# same examples on every run (derandomized, no example database); "thorough" draws fresh random examples, many
# more of them, for hunting bugs locally (a failure prints the seed to reproduce it).
_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True}
settings.register_profile("ci", max_examples=60, derandomize=True, database=None, **_common)
settings.register_profile("thorough", max_examples=2000, derandomize=False, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=ENGINES)
def engine(request):
    """Runs the test once per exact engine (reference, tree and, where numba is installed, kernels)."""
    with use_engine(request.param):
        yield request.param


@pytest.fixture(params=[e for e in ENGINES if e != "reference"])
def fast_engine(request):
    """The production engines only (for sizes the sequential reference would make slow)."""
    with use_engine(request.param):
        yield request.param
