"""Windows, scatter-averaging, tiled VAE, region weights and video chunks."""

import pytest
import torch

from csd2d.video import chunk_ranges
from csd2d.views import crop_windows, region_weights, scatter_average, tiled_apply, window_grid, window_positions


@pytest.mark.parametrize("length,window,stride", [(64, 64, 16), (65, 64, 16), (240, 64, 16), (100, 16, 7), (33, 8, 8)])
def test_windows_cover_every_latent_pixel(length, window, stride):
    starts = window_positions(length, window, stride)
    covered = torch.zeros(length)
    for s in starts:
        covered[s : s + window] += 1
    assert covered.min() >= 1 and starts[-1] + window == length and starts[0] == 0
    grid = window_grid(length, length + 5, window, stride)
    count = torch.zeros(length, length + 5)
    for y, x in grid:
        count[y : y + window, x : x + window] += 1
    assert count.min() >= 1


def test_window_smaller_than_image_is_named():
    with pytest.raises(ValueError, match="width: expected at least one window"):
        window_grid(64, 10, 16, 8)


def test_scatter_average_inverts_crop():
    x = torch.randn(1, 4, 20, 36)
    offsets = window_grid(20, 36, 8, 4)
    back = scatter_average(crop_windows(x, offsets, 8), offsets, x.shape)
    assert torch.allclose(back, x, atol=1e-6)


def test_scatter_average_averages_overlaps():
    vals = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 3.0)])
    out = scatter_average(vals, [(0, 0), (0, 2)], (1, 1, 4, 6))
    assert torch.allclose(out[0, 0, 0], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))


@pytest.mark.parametrize("num_prompts", [1, 2, 3, 4, 5, 6])
def test_region_weights_partition_of_unity(num_prompts):
    w = region_weights(num_prompts, 300, blend=0.5)
    assert w.shape == (num_prompts, 300)
    assert torch.allclose(w.sum(0), torch.ones(300), atol=1e-6)
    assert (w >= 0).all() and (w <= 1).all()
    # Prompt p dominates the centre of its band, and weights change smoothly (no jumps).
    centres = ((torch.arange(num_prompts) + 0.5) / num_prompts * 300).long()
    assert torch.equal(w[:, centres].argmax(0), torch.arange(num_prompts))
    # smoothstep's steepest slope is 1.5 per transition width (blend × band = 0.5 × 300 / P columns)
    assert w.diff(dim=1).abs().max() <= 1.5 / (0.5 * 300 / num_prompts) + 1e-4


def test_tiled_apply_matches_whole_for_pointwise_map():
    x = torch.randn(2, 3, 50, 130)
    fn = lambda t: torch.nn.functional.avg_pool2d(t * 2.0, 2)  # local map at scale 1/2
    whole = fn(x)
    tiled = tiled_apply(fn, x, tile=32, overlap=8, scale=0.5)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_tiled_vae_close_to_whole(guidance):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 40, generator=g), size=(48, 160), mode="bilinear")
    whole = guidance.encode_images(x)
    tiled = guidance.encode_images(x, tile=64, overlap=16)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.1 * whole.abs().mean()
    dec = guidance.decode_latents(whole, tile=64, overlap=16)
    assert dec.shape == x.shape and (dec - guidance.decode_latents(whole)).abs().mean() < 0.05


@pytest.mark.parametrize("n,batch,overlap", [(30, 8, 2), (8, 8, 2), (9, 8, 2), (240, 16, 4), (1, 8, 2), (5, 3, 0)])
def test_chunks_cover_frames_once_with_overlap(n, batch, overlap):
    chunks = chunk_ranges(n, batch, overlap)
    updated = torch.zeros(n)
    for i, (s, e, anchors) in enumerate(chunks):
        assert e - s <= batch and 0 <= anchors < e - s
        assert (anchors == 0) == (i == 0)
        if i > 0:
            assert anchors >= overlap
        updated[s + anchors : e] += 1
    assert torch.equal(updated, torch.ones(n))  # every frame is optimised by exactly one chunk
