"""Data and non-learning baselines of the sparse-regression experiment (Kuramoto–Sivashinsky, E4)."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ksubset.experiments.sparse_regression import ks_solver
from ksubset.experiments.sparse_regression.ks_solver import (
    KSParams,
    add_noise,
    cache_path,
    load_or_generate,
    solve_ks,
)

MAT_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kuramoto_sivishinky.mat"

EXPECTED_NAMES = [
    "x0", "x0^2", "x0_1", "x0_11", "x0_111", "x0_1111", "x0x0_1", "x0^2x0_1", "x0x0_11", "x0^2x0_11",
    "x0x0_111", "x0^2x0_111", "x0x0_1111", "x0^2x0_1111",
]


@pytest.fixture(scope="module")
def ks():
    return solve_ks()


@pytest.fixture(scope="module")
def lib(ks):
    pytest.importorskip("pysindy")
    from ksubset.experiments.sparse_regression.library import build_library

    return build_library(ks.u, ks.x, ks.t)


# --------------------------------------------------------------------------------------------- solver


def test_solver_shapes(ks):
    assert ks.u.shape == (1024, 251)
    assert ks.x.shape == (1024,)
    assert ks.t.shape == (251,)
    np.testing.assert_allclose(ks.t, 0.4 * np.arange(251))
    np.testing.assert_allclose(ks.x, 32 * np.pi * np.arange(1, 1025) / 1024)
    np.testing.assert_allclose(ks.u[:, 0], np.cos(ks.x / 16) * (1 + np.sin(ks.x / 16)), rtol=0, atol=1e-14)
    assert np.all(np.isfinite(ks.u))
    assert ks.params == KSParams()


def test_solver_matches_pdefind_file(ks):
    if not MAT_FILE.is_file():
        pytest.skip(f"reference file {MAT_FILE} not found (expected in ../shared/data beside the checkout)")
    scipy_io = pytest.importorskip("scipy.io")
    ref = scipy_io.loadmat(str(MAT_FILE))
    assert ref["uu"].shape == (1024, 251)
    np.testing.assert_allclose(ks.x, ref["x"].reshape(-1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ks.t, ref["tt"].reshape(-1), rtol=0, atol=1e-12)
    err = np.max(np.abs(ks.u - ref["uu"]))
    assert err < 1e-8, f"max abs error {err:.3g} vs the PDE-FIND file"


def test_solver_small_grid_conserves_mean():
    # The mean of u is conserved by u_t = -(u²/2)_x - u_xx - u_xxxx on a periodic domain.
    d = solve_ks(N=128, h=0.05, t_max=20.0, save_every=1.0)
    assert d.u.shape == (128, 21) and d.t.shape == (21,)
    np.testing.assert_allclose(d.u.mean(axis=0), d.u[:, 0].mean(), atol=1e-12)


def test_solver_rejects_bad_parameters():
    with pytest.raises(ValueError):
        solve_ks(N=1023)
    with pytest.raises(ValueError):
        solve_ks(h=0.03, save_every=0.4)  # 0.4 is not a multiple of 0.03
    with pytest.raises(ValueError):
        solve_ks(N=16, u0=np.zeros(8))


# ---------------------------------------------------------------------------------------------- noise


def test_noise_statistics(ks):
    noisy = add_noise(ks.u, 5.0, seed=123)
    diff = noisy - ks.u
    assert diff.shape == ks.u.shape
    assert abs(diff.std() / (0.05 * ks.u.std()) - 1) < 0.01  # 257,024 samples: relative sd error ~0.14%
    assert abs(diff.mean()) < 4 * 0.05 * ks.u.std() / math.sqrt(diff.size)
    np.testing.assert_array_equal(noisy, add_noise(ks.u, 5.0, seed=123))
    np.testing.assert_array_equal(noisy, add_noise(ks.u, 5.0, seed=np.random.default_rng(123)))
    assert not np.array_equal(noisy, add_noise(ks.u, 5.0, seed=124))
    clean = add_noise(ks.u, 0.0)
    np.testing.assert_array_equal(clean, ks.u)
    assert clean is not ks.u
    with pytest.raises(ValueError):
        add_noise(ks.u, -1.0)


# ---------------------------------------------------------------------------------------------- cache


def test_cache_round_trip(tmp_path, monkeypatch):
    kwargs = dict(N=64, h=0.05, t_max=2.0, save_every=0.5)
    calls = []
    real_solve = ks_solver.solve_ks

    def counting_solve(**kw):
        calls.append(kw)
        return real_solve(**kw)

    monkeypatch.setattr(ks_solver, "solve_ks", counting_solve)
    first = load_or_generate(tmp_path, **kwargs)
    assert len(calls) == 1
    path = cache_path(tmp_path, first.params)
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind

    second = load_or_generate(tmp_path, **kwargs)
    assert len(calls) == 1  # served from the cache
    np.testing.assert_array_equal(second.u, first.u)
    np.testing.assert_array_equal(second.x, first.x)
    np.testing.assert_array_equal(second.t, first.t)
    assert second.params == first.params
    np.testing.assert_array_equal(first.u, real_solve(**kwargs).u)

    # Different parameters use a different file.
    other = load_or_generate(tmp_path, **{**kwargs, "t_max": 1.0})
    assert len(calls) == 2 and other.u.shape == (64, 3)
    assert cache_path(tmp_path, other.params) != path

    # A corrupt file is regenerated (and replaced by a good one).
    path.write_bytes(b"not an npz file")
    third = load_or_generate(tmp_path, **kwargs)
    assert len(calls) == 3
    np.testing.assert_array_equal(third.u, first.u)
    np.testing.assert_array_equal(load_or_generate(tmp_path, **kwargs).u, first.u)
    assert len(calls) == 3


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    kwargs = dict(N=32, h=0.05, t_max=1.0, save_every=0.5)
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        assert Path(src).parent == Path(dst).parent  # temp file in the same folder
        assert not Path(dst).exists()
        return real_replace(src, dst)

    monkeypatch.setattr(ks_solver.os, "replace", spy_replace)
    data = load_or_generate(tmp_path, **kwargs)
    assert len(replaced) == 1 and replaced[0][1] == cache_path(tmp_path, data.params)

    # A failure while writing leaves neither a cache file nor a temporary file.
    def failing_savez(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(ks_solver.np, "savez", failing_savez)
    other = tmp_path / "other"
    with pytest.raises(OSError, match="disk full"):
        load_or_generate(other, **kwargs)
    assert list(other.iterdir()) == []


# -------------------------------------------------------------------------------------------- library


def test_library_names_and_shape(lib, ks):
    assert lib.names == EXPECTED_NAMES
    assert lib.theta.shape == (ks.u.size, 14)
    assert lib.u_t.shape == (ks.u.size,)
    assert np.all(np.isfinite(lib.theta)) and np.all(np.isfinite(lib.u_t))
    # Rows follow u.reshape(-1): the first column is u itself.
    np.testing.assert_array_equal(lib.theta[:, 0], ks.u.reshape(-1))
    assert lib.readable == [
        "u", "u²", "u_x", "u_xx", "u_xxx", "u_xxxx", "u·u_x", "u²·u_x", "u·u_xx", "u²·u_xx", "u·u_xxx",
        "u²·u_xxx", "u·u_xxxx", "u²·u_xxxx",
    ]


def test_true_support(lib):
    from ksubset.experiments.sparse_regression.library import true_support

    expected = sorted(EXPECTED_NAMES.index(n) for n in ("x0_11", "x0_1111", "x0x0_1"))
    np.testing.assert_array_equal(lib.support_of(), expected)
    np.testing.assert_array_equal(true_support(lib.names), [3, 5, 6])
    with pytest.raises(KeyError):
        true_support(lib.names, ["x0_11111"])


def test_library_derivatives_are_accurate(lib, ks):
    # Periodic second-order finite differences against spectral derivatives (measured max relative errors:
    # 2.5e-3, 1.9e-3, 7.6e-3, 6.8e-3 for orders 1-4), and u_t against the PDE right-hand side (1.3e-2).
    k = 2 * np.pi * np.fft.fftfreq(ks.x.size, d=ks.x[1] - ks.x[0])
    spec = np.fft.fft(ks.u, axis=0)

    def deriv(order):
        return np.real(np.fft.ifft((1j * k) ** order * spec.T, axis=1)).T.reshape(-1)

    for col, order, tol in ((2, 1, 5e-3), (3, 2, 4e-3), (4, 3, 1.5e-2), (5, 4, 1.5e-2)):
        ref = deriv(order)
        assert np.max(np.abs(lib.theta[:, col] - ref)) < tol * np.max(np.abs(ref))
    rhs = -(ks.u.reshape(-1) * deriv(1)) - deriv(2) - deriv(4)
    rel = np.linalg.norm(lib.u_t - rhs) / np.linalg.norm(rhs)
    assert rel < 0.025


def test_readable_names():
    from ksubset.experiments.sparse_regression.library import readable_name

    assert readable_name("x0") == "u"
    assert readable_name("x0^3") == "u³"
    assert readable_name("x0_11111") == "u_xxxxx"
    assert readable_name("x0^3x0_11") == "u³·u_xx"
    assert readable_name("r7") == "ξ7"
    assert readable_name("1") == "1"
    assert readable_name("something else") == "something else"


def test_large_library(ks):
    pytest.importorskip("pysindy")
    from ksubset.experiments.sparse_regression.library import build_large_library

    u, t = ks.u[:, ::10], ks.t[::10]  # subsample time: the test checks structure, not accuracy
    big = build_large_library(u, ks.x, t)
    assert big.theta.shape == (u.size, 23)
    assert len(set(big.names)) == 23
    assert {"x0^3", "x0_11111", "x0^3x0_11111", "x0x0_1"} <= set(big.names)
    np.testing.assert_array_equal(big.theta[:, big.support_of()],
                                  big.theta[:, [big.names.index(n) for n in ("x0_11", "x0_1111", "x0x0_1")]])
    for kind in ("smooth", "gaussian", "modulated"):
        d1 = build_large_library(u, ks.x, t, n_distractors=5, distractor=kind, seed=3)
        d2 = build_large_library(u, ks.x, t, n_distractors=5, distractor=kind, seed=3)
        assert d1.theta.shape == (u.size, 28)
        assert d1.names[23:] == [f"r{j}" for j in range(5)]
        assert d1.readable[23:] == [f"ξ{j}" for j in range(5)]
        np.testing.assert_array_equal(d1.theta, d2.theta)
        np.testing.assert_array_equal(d1.theta[:, :23], big.theta)
        assert np.all(np.isfinite(d1.theta))
        rms = np.sqrt(np.mean(d1.theta[:, 23:] ** 2, axis=0))
        np.testing.assert_allclose(rms, np.sqrt(np.mean(big.theta**2)), rtol=1e-10)
    d3 = build_large_library(u, ks.x, t, n_distractors=5, seed=4)
    assert not np.array_equal(d3.theta[:, 23:], d1.theta[:, 23:])


def test_spectral_lowpass(ks):
    from ksubset.experiments.sparse_regression.library import spectral_lowpass

    noisy = add_noise(ks.u, 5.0, seed=0)
    filtered = spectral_lowpass(noisy, ks.x, 2.5)
    assert filtered.shape == ks.u.shape
    assert np.std(filtered - ks.u) < 0.35 * np.std(noisy - ks.u)
    np.testing.assert_allclose(spectral_lowpass(ks.u, ks.x, 20.0), ks.u, atol=1e-12)


# ------------------------------------------------------------------------------------------ baselines


def test_ridge_gram_matches_direct_least_squares():
    from ksubset.experiments.sparse_regression.baselines import RidgeGram, ridge_fit

    rng = np.random.default_rng(0)
    theta = rng.standard_normal((500, 7)) * np.array([1, 10, 0.1, 5, 2, 3, 0.5])
    y = theta[:, [1, 4]] @ np.array([0.3, -2.0]) + 0.01 * rng.standard_normal(500)
    alpha = 0.1
    support = np.array([1, 3, 4])
    norms = np.linalg.norm(theta[:, support], axis=0)
    xn = theta[:, support] / norms
    w = np.linalg.solve(xn.T @ xn + alpha * np.eye(3), xn.T @ y)
    coef_ref = w / norms
    mse_ref = np.mean((y - theta[:, support] @ coef_ref) ** 2)

    coef, mse = ridge_fit(theta, y, support, alpha=alpha)
    np.testing.assert_allclose(coef, coef_ref, rtol=1e-9)
    np.testing.assert_allclose(mse, mse_ref, rtol=1e-6)

    gram = RidgeGram(theta, y, alpha=alpha)
    subsets = np.array(list(itertools.combinations(range(7), 3)))
    coefs, mses = gram.fit_batch(subsets)
    assert coefs.shape == (35, 3) and mses.shape == (35,)
    i = int(np.flatnonzero((subsets == support).all(axis=1))[0])
    np.testing.assert_allclose(coefs[i], coef_ref, rtol=1e-9)
    np.testing.assert_allclose(mses[i], mse_ref, rtol=1e-6)
    for s, c, m in zip(subsets[:5], coefs[:5], mses[:5], strict=True):
        c1, m1 = ridge_fit(theta, y, s, alpha=alpha)
        np.testing.assert_allclose(c, c1, rtol=1e-9)
        np.testing.assert_allclose(m, m1, rtol=1e-6)


def test_exhaustive_search_finds_planted_support():
    from ksubset.experiments.sparse_regression.baselines import exhaustive_search

    rng = np.random.default_rng(1)
    theta = rng.standard_normal((400, 9))
    theta[:, 2] = theta[:, 5] + 0.3 * rng.standard_normal(400)  # a correlated decoy
    y = theta[:, [0, 5, 7]] @ np.array([1.5, -2.0, 0.7]) + 0.05 * rng.standard_normal(400)
    res = exhaustive_search(theta, y, k=3, alpha=0.0)
    np.testing.assert_array_equal(res.support, [0, 5, 7])
    np.testing.assert_allclose(res.coefficients, [1.5, -2.0, 0.7], atol=0.02)
    assert res.info["n_subsets"] == math.comb(9, 3)
    # Brute force over all subsets with numpy least squares agrees.
    best = min(itertools.combinations(range(9), 3),
               key=lambda s: np.linalg.lstsq(theta[:, s], y, rcond=None)[1][0])
    assert tuple(res.support) == best
    # Small batches give the same answer.
    res2 = exhaustive_search(theta, y, k=3, alpha=0.0, batch_size=7)
    np.testing.assert_array_equal(res2.support, res.support)
    assert res2.info["runner_up_mse"] >= res2.mse


def test_exhaustive_search_ks(lib):
    from ksubset.experiments.sparse_regression.baselines import exhaustive_search

    res = exhaustive_search(lib.theta, lib.u_t, k=3, names=lib.names)
    np.testing.assert_array_equal(res.support, lib.support_of())
    np.testing.assert_allclose(res.coefficients, -1.0, rtol=0.02)
    assert res.info["n_subsets"] == 364
    assert res.info["mse_ratio"] > 100
    assert res.equation.startswith("u_t = -0.99")
    assert "u_xx" in res.equation and "u_xxxx" in res.equation and "u·u_x" in res.equation
    np.testing.assert_array_equal(res.dense(14)[[3, 5, 6]], res.coefficients)


def test_stlsq_recovers_ks(lib):
    from ksubset.experiments.sparse_regression.baselines import stlsq_baseline

    res = stlsq_baseline(lib.theta, lib.u_t, lib.names)
    np.testing.assert_array_equal(res.support, lib.support_of())
    np.testing.assert_allclose(res.coefficients, -1.0, rtol=0.02)
    assert res.seconds > 0
    assert "x0_1111" in res.info["pysindy_equation"]


def test_lasso_baselines(lib):
    pytest.importorskip("sklearn")
    from ksubset.experiments.sparse_regression.baselines import lasso_baseline

    cv = lasso_baseline(lib.theta, lib.u_t, lib.names, k=3, mode="cv")
    np.testing.assert_array_equal(cv.support, lib.support_of())
    np.testing.assert_allclose(cv.coefficients, -1.0, rtol=0.02)
    assert set(cv.info["lasso_support"]) >= set(cv.support)

    path = lasso_baseline(lib.theta, lib.u_t, lib.names, k=3, mode="path")
    assert path.support.shape == (3,)  # the Lasso path picks the wrong triple here (u instead of u_xx)
    assert path.coefficients.shape == (3,)
    assert path.info["alpha"] > cv.info["alpha"]


def test_format_equation():
    from ksubset.experiments.sparse_regression.baselines import format_equation

    eq = format_equation(np.array([6, 3]), np.array([-0.9921, 0.5]), ["a"] * 3 + ["u_xx", "b", "c", "u·u_x"])
    assert eq == "u_t = 0.500 u_xx - 0.992 u·u_x"
    assert format_equation(np.array([0]), np.array([2.5e-5]), None) == "u_t = 2.5e-05 c0"
    assert format_equation(np.zeros(0, dtype=int), np.zeros(0), None) == "u_t = 0"


def test_missing_pysindy_gives_install_hint(monkeypatch, ks):
    import sys

    from ksubset.experiments.sparse_regression import library

    monkeypatch.setitem(sys.modules, "pysindy", None)  # makes `import pysindy` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'ksubset\[experiments\]'"):
        library.build_library(ks.u[:, :5], ks.x, ks.t[:5])
