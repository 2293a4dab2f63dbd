import pytest

from ksubset.core import available_engines, kernels, use_engine

ENGINES = available_engines()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernel_fallback: the test expects the kernels engine to hand rows to the tree engine "
        "(without it any such fallback fails the test)",
    )


@pytest.fixture(autouse=True)
def _kernel_fallbacks_are_errors(request):
    """A row the kernels engine hands to the tree engine is a bug unless the test is marked kernel_fallback."""
    if not kernels.available():
        yield
        return
    policy = "warn" if request.node.get_closest_marker("kernel_fallback") else "raise"
    with kernels.fallback_policy(policy):
        yield


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
