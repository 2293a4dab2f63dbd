"""The same code on CUDA tensors (skipped where no CUDA device is present, as in CI)."""

from __future__ import annotations

import pytest
import torch

import ksubset

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(8, 300, generator=g, dtype=dtype) * 3
    mask = torch.rand(8, 300, generator=g) > 0.1
    k = torch.randint(0, 200, (8,), generator=g)
    cpu = (ksubset.log_partition(theta, k, mask), ksubset.marginals(theta, k, mask), ksubset.entropy(theta, k, mask))
    t = theta.cuda()
    gpu = (ksubset.log_partition(t, k.cuda(), mask.cuda()), ksubset.marginals(t, k.cuda(), mask.cuda()),
           ksubset.entropy(t, k.cuda(), mask.cuda()))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda" and b.dtype == dtype
        assert torch.allclose(a, b.cpu(), atol=tol, rtol=tol)


def test_cuda_sampling_and_simple_backward():
    t = torch.randn(16, 500, device="cuda", requires_grad=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    z = ksubset.simple(t, 37, generator=gen)
    assert z.device.type == "cuda" and (z.sum(-1) == 37).all()
    (z * torch.randn_like(z)).sum().backward()
    assert torch.isfinite(t.grad).all()
    a = ksubset.sample(t.detach(), 5, sample_shape=(3,), generator=torch.Generator(device="cuda").manual_seed(2))
    b = ksubset.sample(t.detach(), 5, sample_shape=(3,), generator=torch.Generator(device="cuda").manual_seed(2))
    assert torch.equal(a, b)
