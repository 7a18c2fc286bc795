"""The CSD kernel and SVGD mixing: closed forms against autograd and the defining properties.

``csd_gradient`` is checked here in the paper's form (``normalization="count"``, eq. 6); the row-sum form has its
own tests in ``test_step_size.py``, and the SVGD properties below are checked for both."""

import math

import pytest
import torch

from csd2d import csd_gradient, median_bandwidth, pairwise_sq_dists, rbf_kernel, rbf_kernel_grad


def _particles(n, shape=(3, 4, 5), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g).to(dtype)


def test_kernel_symmetric_unit_diagonal_and_formula():
    x = _particles(6)
    k, h = rbf_kernel(x)
    assert torch.allclose(k, k.T)
    assert torch.equal(torch.diagonal(k), torch.ones(6))
    flat = x.reshape(6, -1)
    expected = torch.exp(-torch.cdist(flat, flat).pow(2) / h)
    assert torch.allclose(k, expected, atol=1e-5)


def test_median_bandwidth_excludes_diagonal():
    x = _particles(5)
    d = pairwise_sq_dists(x.reshape(5, -1))
    off = d[~torch.eye(5, dtype=torch.bool)]
    assert torch.isclose(median_bandwidth(d), off.median() / math.log(6))
    # Counting the zero diagonal (the official code's bug) would give a smaller median.
    assert median_bandwidth(d) > d.flatten().median() / math.log(6)


def test_two_particles_are_finite():
    x = _particles(2)
    k, h = rbf_kernel(x)
    d = (x[0] - x[1]).pow(2).sum()
    assert torch.isclose(h, d / math.log(3))
    assert torch.isclose(k[0, 1], torch.tensor(math.exp(-math.log(3))))  # exp(-d/h) = 1/3
    g = csd_gradient(torch.randn_like(x), x, repulsion=1.0, normalization="count")
    assert torch.isfinite(g).all()


def test_identical_particles_stay_finite():
    x = torch.ones(4, 2, 3)
    g = csd_gradient(torch.randn_like(x), x, repulsion=1.0, normalization="count")
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("bandwidth", [None, 7.0])
def test_kernel_gradient_matches_autograd(bandwidth):
    x = _particles(4, shape=(2, 3), dtype=torch.float64).float()
    _, h = rbf_kernel(x, bandwidth)
    closed = rbf_kernel_grad(x, bandwidth=float(h))
    for j in range(4):
        for i in range(4):
            xj = x[j].clone().requires_grad_(True)
            kji = torch.exp(-(xj - x[i]).pow(2).sum() / h)
            (auto,) = torch.autograd.grad(kji, xj)
            assert torch.allclose(closed[j, i], auto, atol=1e-6), (j, i)


def test_csd_gradient_matches_definition():
    n = 5
    x, s = _particles(n, seed=1), _particles(n, seed=2)
    k, h = rbf_kernel(x)
    grad_k = rbf_kernel_grad(x, bandwidth=float(h))  # [j, i, ...] = ∇_{x_j} k(x_j, x_i)
    for repulsion in (0.0, 1.0, 2.5):
        expected = torch.stack(
            [sum(k[j, i] * s[j] - repulsion * grad_k[j, i] for j in range(n)) / n for i in range(n)]
        )
        assert torch.allclose(csd_gradient(s, x, repulsion=repulsion, normalization="count"), expected, atol=1e-5)


def test_single_particle_is_plain_score_distillation():
    x, s = _particles(1), _particles(1, seed=3)
    assert torch.equal(csd_gradient(s, x, repulsion=1.0, normalization="count"), s)
    assert torch.equal(csd_gradient(s.half(), x.half(), repulsion=1.0, normalization="count"), s.half())


@pytest.mark.parametrize("normalization", ["count", "row"])
def test_zero_score_descent_step_repels(normalization):
    x = _particles(8, shape=(4,))
    before = torch.pdist(x).min()
    x_new = x - 0.5 * csd_gradient(torch.zeros_like(x), x, repulsion=1.0, normalization=normalization)
    after = torch.pdist(x_new).min()
    assert after > before * 1.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_fp32(dtype):
    x, s = _particles(6), _particles(6, seed=4)
    ref = csd_gradient(s, x, repulsion=1.0, normalization="count")
    low = csd_gradient(s.to(dtype), x.to(dtype), repulsion=1.0, normalization="count")
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    assert torch.allclose(low.float(), ref, rtol=0.05, atol=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    x, s = _particles(6), _particles(6, seed=4)
    ref = csd_gradient(s.to(dtype), x.to(dtype), repulsion=1.0, normalization="count").float()
    gpu = csd_gradient(s.to("cuda", dtype), x.to("cuda", dtype), repulsion=1.0, normalization="count")
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    assert torch.allclose(gpu.float().cpu(), ref, rtol=0.02, atol=0.02)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="scores: expected the same shape"):
        csd_gradient(torch.zeros(3, 2), torch.zeros(3, 4), repulsion=1.0, normalization="count")
    with pytest.raises(ValueError, match="bandwidth: expected a positive"):
        csd_gradient(torch.zeros(3, 2), torch.zeros(3, 2), bandwidth=-1.0, repulsion=1.0, normalization="count")


@pytest.mark.parametrize("normalization", ["count", "row"])
def test_svgd_recovers_gaussian(normalization):
    """SVGD with the analytic score of a 2-D Gaussian moves 50 badly initialised particles onto it. Both
    normalisations divide each particle's sum by a positive number, so they share the fixed point."""
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]])
    precision = torch.linalg.inv(cov)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, generator=g) * 0.1 + torch.tensor([-6.0, 5.0])
    for step in range(3000):
        score = (x - mean) @ precision  # −∇ log p, the "noise" convention csd_gradient expects
        x = x - 0.05 * csd_gradient(score, x, repulsion=1.0, normalization=normalization)
    emp_mean = x.mean(0)
    emp_cov = torch.cov(x.T)
    assert torch.allclose(emp_mean, mean, atol=0.1), emp_mean
    assert torch.allclose(emp_cov, cov, atol=0.35), emp_cov
    # Without repulsion the particles collapse onto the mode instead.
    y = torch.randn(50, 2, generator=g) * 0.1 + torch.tensor([-6.0, 5.0])
    for step in range(3000):
        y = y - 0.05 * csd_gradient((y - mean) @ precision, y, repulsion=0.0, normalization=normalization)
    assert torch.cov(y.T).trace() < 0.1 * cov.trace()


def test_bandwidth_scale_widens_the_median_heuristic():
    """``bandwidth_scale`` s gives the kernel of the fixed bandwidth s · h_median, and a fixed bandwidth ignores it."""
    x, s = _particles(5), _particles(5, seed=1)
    h = median_bandwidth(pairwise_sq_dists(x.reshape(5, -1)))
    k4, h4 = rbf_kernel(x, bandwidth_scale=4.0)
    torch.testing.assert_close(h4, h * 4)
    torch.testing.assert_close(k4, rbf_kernel(x, float(h * 4))[0])
    wide = csd_gradient(s, x, repulsion=1.0, normalization="row", bandwidth_scale=4.0)
    torch.testing.assert_close(wide, csd_gradient(s, x, repulsion=1.0, normalization="row", bandwidth=float(h * 4)))
    assert not torch.allclose(wide, csd_gradient(s, x, repulsion=1.0, normalization="row"))
    torch.testing.assert_close(rbf_kernel(x, 2.0, bandwidth_scale=4.0)[0], rbf_kernel(x, 2.0)[0])
    with pytest.raises(ValueError, match="bandwidth_scale: expected a positive factor, got 0"):
        rbf_kernel(x, bandwidth_scale=0)
