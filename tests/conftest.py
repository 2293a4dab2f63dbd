import pytest

from ksubset.core import available_engines, use_engine

ENGINES = available_engines()


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
