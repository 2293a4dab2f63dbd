"""Mixed precision: every estimator trains under ``torch.autocast`` with a
``torch.amp.GradScaler``, and an overflowed loss scale gives a skipped step, never an exception."""

from __future__ import annotations

import pytest
import torch

from ksubset import estimators as E

N, K, B = 6, 2, 8
OVERFLOW_STEP = 2
PERTURBING = ["imle", "aimle", "simple_f", "simple_b"]


def _cpu_autocast_dtypes() -> list[torch.dtype]:
    out = []
    for dt in (torch.bfloat16, torch.float16):
        try:
            with torch.autocast("cpu", dtype=dt):
                if torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == dt:
                    out.append(dt)
        except (RuntimeError, ValueError):  # pragma: no cover - an old CPU autocast without this dtype
            pass
    return out


def _estimator(name: str):
    if name == "score_function":
        return E.get(name, num_samples=2, baseline="leave_one_out")
    return E.get(name)


@pytest.mark.parametrize("dtype", _cpu_autocast_dtypes())
@pytest.mark.parametrize("name", E.available())
def test_every_estimator_trains_under_autocast_and_skips_an_overflowed_step(name, dtype):
    torch.manual_seed(0)
    k = 1 if "gumbel" in name else K
    model = torch.nn.Linear(4, N)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # small enough that only the injected step overflows
    est = _estimator(name)
    x = torch.randn(B, 4)
    target = torch.zeros(B, N)
    target[:, :k] = 1

    def f(z):
        return ((z - target) ** 2).sum(-1)

    taken = []
    for step in range(5):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            logits = model(x)
            assert logits.dtype == dtype
            loss = est(logits, k, f).mean() if name == "score_function" else f(est(logits, k)).mean()
        if step == OVERFLOW_STEP:  # a loss scale too large for the half-precision gradient: g becomes inf
            loss = loss * torch.finfo(torch.float32).max
        before, scale = model.weight.detach().clone(), scaler.get_scale()
        scaler.scale(loss).backward()  # must not raise (before the fix: ValueError "logits contains NaN")
        scaler.step(opt)
        scaler.update()
        taken.append(not torch.equal(before, model.weight))
        if step == OVERFLOW_STEP:
            assert not taken[-1], "the overflowed step must be skipped"
            assert scaler.get_scale() < scale, "the scaler must see the overflow and back off"
    assert all(t for i, t in enumerate(taken) if i != OVERFLOW_STEP), f"finite steps must be taken: {taken}"


@pytest.mark.parametrize("name", PERTURBING)
def test_perturbation_estimators_mark_only_overflowed_rows_non_finite(name):
    torch.manual_seed(1)
    logits = torch.randn(3, N, requires_grad=True)
    z = E.get(name)(logits, K, generator=torch.Generator().manual_seed(0))
    g = torch.randn(3, N)
    g[1, 2] = float("inf")  # row 1: the scaled gradient overflowed
    g[2] = 3e38  # row 2: finite, but theta - lam * g overflows float32 (AIMLE's step is relative: no overflow)
    (grad,) = torch.autograd.grad(z, logits, g)
    assert torch.isfinite(grad[0]).all()
    assert not torch.isfinite(grad[1]).any()
    assert torch.isfinite(grad[2]).all() if name == "aimle" else not torch.isfinite(grad[2]).any()


@pytest.mark.parametrize("name", PERTURBING)
def test_perturbation_estimators_compute_half_logits_in_float32(name):
    # g = 65504 (the float16 maximum) is finite; lam * g overflows float16 but not float32, so the gradient
    # is an ordinary finite one, and the output keeps the logits' dtype.
    logits = torch.randn(2, N).half().requires_grad_(True)
    z = E.get(name)(logits, K, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float16
    (grad,) = torch.autograd.grad(z, logits, torch.full((2, N), 65504.0, dtype=torch.float16))
    assert grad.dtype == torch.float16 and torch.isfinite(grad).all()
