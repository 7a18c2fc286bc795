"""Aligned kernel mixing (csd2d.align): identity warps give plain CSD, a known shift moves scores onto the right
pixels, masks keep unseen pixels out, and memory-light rows agree with the dense form."""

import pytest
import torch
import torch.nn.functional as F

from csd2d import csd_gradient
from csd2d.align import GridWarps, IdentityWarps, OffsetWarps, aligned_csd_gradient, pixel_grid, to_sample_grid


def _field(n, c=4, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g)


def _identity_grid(n, h, w):
    grid = to_sample_grid(pixel_grid(h, w), h, w)
    return GridWarps(grid.expand(n, n, h, w, 2).clone(), torch.ones(n, n, h, w))


@pytest.mark.parametrize("normalization", ["row", "mean", "count"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_identity_warps_give_csd_gradient(n, normalization):
    s, x = _field(n, seed=1), _field(n, seed=2) * 0.3
    plain = csd_gradient(s, x, repulsion=1.0, normalization=normalization)
    for warps in (IdentityWarps(n, 6, 7), _identity_grid(n, 6, 7)):  # the shortcut and a real resampling
        got = aligned_csd_gradient(s, x, warps, repulsion=1.0, normalization=normalization)
        torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)


def test_shifted_copy_moves_score_onto_the_right_pixels():
    """Two windows of one canvas, the second 2 px to the right: window 0's pixel (y, x) is window 1's (y, x − 2).
    With repulsion off and a fixed bandwidth, row normalisation gives the closed form
    ``(s_0(p) + k·s_1(p − 2)) / (1 + k)`` where window 1 covers p, and ``s_0(p)`` where it does not."""
    warps = OffsetWarps([(0, 0), (0, 2)], window=8)
    s8, x8 = _field(2, h=8, w=8, seed=3), _field(2, h=8, w=8, seed=4)
    k = torch.exp(-(x8[0] - x8[1]).pow(2).sum() / 50.0)
    g = aligned_csd_gradient(s8, x8, warps, repulsion=0.0, normalization="row", bandwidth=50.0)
    expected0 = s8[0].clone()
    expected0[:, :, 2:] = (s8[0][:, :, 2:] + k * s8[1][:, :, :-2]) / (1 + k)
    torch.testing.assert_close(g[0], expected0, rtol=1e-5, atol=1e-6)
    expected1 = s8[1].clone()  # window 1's pixel x is window 0's x + 2, seen where x < 6
    expected1[:, :, :-2] = (s8[1][:, :, :-2] + k * s8[0][:, :, 2:]) / (1 + k)
    torch.testing.assert_close(g[1], expected1, rtol=1e-5, atol=1e-6)


def test_offset_warps_match_a_dense_grid_and_subset():
    warps = OffsetWarps([(0, 0), (3, 1), (5, 6)], window=8)
    grid, mask = warps.pairs(1)
    # window 1's pixel (y, x) is canvas (y + 3, x + 1): window 0 holds it at (y + 3, x + 1), seen for y < 5, x < 7
    assert mask[0, 0, :5, :7].eq(1).all() and mask[0, 0, 5:].eq(0).all() and mask[0, 0, :, 7:].eq(0).all()
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    sampled = F.grid_sample(img, grid[:1], mode="bilinear", align_corners=False)
    assert torch.equal(sampled[0, 0, :5, :7], img[0, 0, 3:, 1:])
    sub = warps.subset([2, 1])
    sub_grid, sub_mask = sub.pairs(1)
    torch.testing.assert_close(sub_grid[0], grid[2])
    torch.testing.assert_close(sub_mask[0], mask[2])


def test_masked_pixels_take_nothing_from_the_other_particle():
    n, h, w = 3, 5, 5
    s, x = _field(n, h=h, w=w, seed=5), _field(n, h=h, w=w, seed=6) * 0.1
    grid = to_sample_grid(pixel_grid(h, w), h, w).expand(n, n, h, w, 2).clone()
    mask = torch.ones(n, n, h, w)
    mask[0, 1] = 0.0  # particle 0 sees nothing of particle 1
    mask[0, 2, :, :2] = 0.0  # and particle 2 only in its three right columns
    mask[0, 0], grid[0, 0] = 0.0, grid[0, 0].flip(0)  # the self pair is always whole and unwarped, whatever given
    g = aligned_csd_gradient(s, x, GridWarps(grid, mask), repulsion=0.0, normalization="row", bandwidth=1e3)
    k = torch.exp(-torch.cdist(x.flatten(1), x.flatten(1)).pow(2) / 1e3)
    torch.testing.assert_close(g[0][:, :, :2], s[0][:, :, :2], rtol=1e-5, atol=1e-6)
    right = (s[0] + k[2, 0] * s[2]) / (1 + k[2, 0])
    torch.testing.assert_close(g[0][:, :, 2:], right[:, :, 2:], rtol=1e-5, atol=1e-6)


def test_bad_warps_are_named():
    s = _field(3)
    with pytest.raises(ValueError, match="warps: expected warps among the 3 particles, got warps among 2"):
        aligned_csd_gradient(s, s, IdentityWarps(2, 6, 7), repulsion=1.0, normalization="row")
    with pytest.raises(ValueError, match="mask: expected shape"):
        GridWarps(torch.zeros(2, 2, 3, 3, 2), torch.zeros(2, 2, 3, 4))


@pytest.mark.parametrize("normalization", ["row", "mean", "count"])
def test_the_returned_weight_is_what_mixing_ones_gives(normalization):
    """with_weight's Σ_j k_ji M_ji / Z_i (share-grid's weight for each view's own detail) without a second mix."""
    gen = torch.Generator().manual_seed(3)
    n, h, w = 3, 6, 7
    s, x = torch.randn(n, 4, h, w, generator=gen), torch.randn(n, 4, h, w, generator=gen)
    mask = (torch.rand(n, n, h, w, generator=gen) > 0.3).float()  # some pixels unseen: the weight varies by pixel
    grid = to_sample_grid(pixel_grid(h, w), h, w)
    warps = GridWarps(grid.expand(n, n, h, w, 2).clone(), mask)
    ones = torch.ones_like(s)
    for mixer, kwargs in ((aligned_csd_gradient, {"warps": warps}), (csd_gradient, {})):
        args = (s, x, *kwargs.values())
        g, weight = mixer(*args, repulsion=1.0, normalization=normalization, with_weight=True)
        assert torch.equal(g, mixer(*args, repulsion=1.0, normalization=normalization))
        by_ones = mixer(ones, x, *kwargs.values(), repulsion=0.0, normalization=normalization)
        assert torch.allclose(weight.expand_as(s), by_ones, atol=1e-6), (mixer.__name__, normalization)
    if normalization == "row":
        assert torch.allclose(weight, torch.ones_like(weight))
