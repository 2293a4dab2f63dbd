"""torch.func over the core: grad, vmap(grad), jacrev, jacfwd, jvp and hessian against enumeration and eager."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import ksubset

from oracle import enumerate_row

N, K = 6, 2


def _rows(seed: int = 0, B: int = 3) -> torch.Tensor:
    return torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 1.5


def _oracle(row: torch.Tensor):
    return enumerate_row(row.numpy(), K)


def test_grad_and_vmap_of_grad(engine):
    theta = _rows()
    g = grad(lambda t: ksubset.log_partition(t, K))(theta[0])
    np.testing.assert_allclose(g.numpy(), _oracle(theta[0]).marginals, rtol=1e-9, atol=1e-12)
    batched = vmap(grad(lambda t: ksubset.log_partition(t, K)))(theta)
    torch.testing.assert_close(batched, ksubset.marginals(theta, K), rtol=1e-12, atol=1e-12)
    # per-row k through vmap's in_dims
    ks = torch.tensor([1, 2, 4])
    per_row = vmap(grad(lambda t, k: ksubset.log_partition(t, k)))(theta, ks)
    torch.testing.assert_close(per_row, ksubset.marginals(theta, ks), rtol=1e-12, atol=1e-12)
    h = vmap(lambda t: ksubset.entropy(t, K))(theta)
    torch.testing.assert_close(h, ksubset.entropy(theta, K), rtol=1e-12, atol=1e-12)


def test_jacobians_and_hessian_are_the_covariance(engine):
    row = _rows(1)[0]
    cov = _oracle(row).covariance
    for name, J in [
        ("jacrev", jacrev(lambda t: ksubset.marginals(t, K))(row)),
        ("jacfwd", jacfwd(lambda t: ksubset.marginals(t, K))(row)),
        ("hessian", hessian(lambda t: ksubset.log_partition(t, K))(row)),
    ]:
        np.testing.assert_allclose(J.numpy(), cov, rtol=1e-8, atol=1e-10, err_msg=name)


def test_jvp_forward_mode(engine):
    row, v = _rows(2)[0], _rows(3)[0]
    e = _oracle(row)
    lz, dlz = jvp(lambda t: ksubset.log_partition(t, K), (row,), (v,))
    mu, dmu = jvp(lambda t: ksubset.marginals(t, K), (row,), (v,))
    np.testing.assert_allclose(lz.item(), e.log_z, rtol=1e-12)
    np.testing.assert_allclose(dlz.item(), e.marginals @ v.numpy(), rtol=1e-9)
    np.testing.assert_allclose(dmu.numpy(), e.covariance @ v.numpy(), rtol=1e-8, atol=1e-10)
    # forward mode equals reverse mode (Cov is symmetric)
    _, vjp_fn = torch.func.vjp(lambda t: ksubset.marginals(t, K), row)
    torch.testing.assert_close(vjp_fn(v)[0], dmu, rtol=1e-10, atol=1e-12)
    # entropy: dH = -(Cov theta) · v
    _, dh = jvp(lambda t: ksubset.entropy(t, K), (row,), (v,))
    np.testing.assert_allclose(dh.item(), -(e.covariance @ row.numpy()) @ v.numpy(), rtol=1e-8, atol=1e-10)


def test_func_with_masks_and_infinities():
    theta = _rows(4)
    theta[0, 1] = float("inf")
    theta[1, 3] = -float("inf")
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[2, 0] = False
    J = vmap(jacrev(lambda t, m: ksubset.marginals(t, K, m)))(theta, mask)
    for b in range(3):
        e = enumerate_row(theta[b].numpy(), K, mask[b].numpy())
        np.testing.assert_allclose(J[b].numpy(), e.covariance, rtol=1e-8, atol=1e-10)
