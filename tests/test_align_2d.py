"""Aligned mixing in 2D: optical-flow warps between video frames (csd2d.flow), ``VideoConfig.align = "flow"`` and
``PanoramaConfig.align = "offsets"`` through the editor, and their settings' checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_PANO, FAST_VIDEO, synthetic_video
from csd2d.align import pixel_grid
from csd2d.config import ConfigError, PanoramaConfig, VideoConfig
from csd2d.flow import flow_warps, warps_from_flow


def _astronaut(side: int = 192) -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.LANCZOS)


def _pixel_coords(grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``grid_sample`` coordinates back to continuous pixel coordinates (inverse of ``to_sample_grid``)."""
    return (grid + 1.0) / torch.tensor([2.0 / w, 2.0 / h])


def test_flow_recovers_a_translation_and_masks_what_left_the_frame():
    """Frame 1 is frame 0's view moved 8 px right and 4 px down (128 px frames, 32 × 32 latents: 2 and 1 latent
    px). Frame 0's latent pixel p is frame 1's p − (2, 1): every kept pixel is warped within a pixel of that (the
    median within a quarter), the pixels that left frame 1 are masked, and most of the rest are kept."""
    big = _astronaut()
    frames = [big.crop((0, 0, 128, 128)), big.crop((8, 4, 136, 132))]
    h = w = 32
    warps = flow_warps(frames, (h, w))
    p = pixel_grid(h, w)
    for i, j, shift in ((0, 1, torch.tensor([-2.0, -1.0])), (1, 0, torch.tensor([2.0, 1.0]))):
        truth = p + shift
        seen = ((truth >= 0.5) & (truth <= torch.tensor([w, h]) - 0.5)).all(-1)
        kept = warps.mask[i, j] > 0
        err = (_pixel_coords(warps.grid[i, j], h, w) - truth).norm(dim=-1)
        assert not kept[~seen].any(), "a pixel that left the other frame is kept"
        assert kept[seen].float().mean() > 0.9, kept[seen].float().mean()
        assert err[kept].max() < 1.0 and err[kept].median() < 0.25, (err[kept].max(), err[kept].median())
    assert warps.mask[0, 0].eq(1).all() and warps.mask[1, 1].eq(1).all()


def test_forward_backward_check_masks_flows_that_do_not_come_back():
    """A flow 0 → 1 of (−2, −1) latent px whose way back is (2, 1) passes; the same flow with no way back is
    masked everywhere, and so is a way back of the wrong sign."""
    h = w = 8
    flow = torch.zeros(2, 2, 2, h, w)
    flow[0, 1] = torch.tensor([-2.0, -1.0]).view(2, 1, 1)
    flow[1, 0] = torch.tensor([2.0, 1.0]).view(2, 1, 1)
    good = warps_from_flow(flow)
    assert good.mask[0, 1, 1:, 2:].eq(1).all()
    assert good.mask[0, 1, :1].eq(0).all() and good.mask[0, 1, :, :2].eq(0).all()  # left the frame
    for back in (torch.zeros(2), torch.tensor([-2.0, -1.0])):
        flow[1, 0] = back.view(2, 1, 1)
        assert warps_from_flow(flow).mask[0, 1].eq(0).all()


def _arrays(images):
    return np.stack([np.asarray(i, dtype=np.float32) for i in images])


def test_video_align_flow_runs_and_changes_the_edit(editor):
    frames = synthetic_video(8)
    plain = editor.edit_video(frames, "make it blue", progress=False, **FAST_VIDEO)
    aligned = editor.edit_video(frames, "make it blue", progress=False, align="flow", **FAST_VIDEO)
    again = editor.edit_video(frames, "make it blue", progress=False, align="flow", **FAST_VIDEO)
    assert len(aligned) == len(frames) and all(a.size == f.size for a, f in zip(aligned, frames))
    a, b = _arrays(plain), _arrays(aligned)
    assert np.isfinite(b).all()
    assert np.abs(a - b).mean() > 0.05, np.abs(a - b).mean()  # in 0–255 units
    np.testing.assert_array_equal(b, _arrays(again))  # deterministic under the seed


def test_static_frames_give_identity_flow_and_the_unaligned_edit(editor):
    """Identical frames: the flow is zero, so the warps are the identity, fully seen, and aligned mixing gives
    the unaligned edit (to fp32 rounding of the resampling)."""
    frame = synthetic_video(1)[0]
    frames = [frame] * 6
    h, w = frame.height // editor.guidance.vae_scale_factor, frame.width // editor.guidance.vae_scale_factor
    warps = flow_warps(frames, (h, w))
    identity = warps.grid[0, 0]
    torch.testing.assert_close(warps.grid, identity.expand_as(warps.grid), rtol=0, atol=1e-4)
    assert warps.mask.eq(1).all()
    plain = editor.edit_video(frames, "make it blue", progress=False, **FAST_VIDEO)
    aligned = editor.edit_video(frames, "make it blue", progress=False, align="flow", **FAST_VIDEO)
    assert np.abs(_arrays(plain) - _arrays(aligned)).max() <= 1.0  # at most one 8-bit level


def test_panorama_align_offsets_runs_and_changes_the_edit(editor):
    img = Image.fromarray((np.random.default_rng(0).random((32, 96, 3)) * 255).astype("uint8"))
    plain = editor.edit_panorama(img, "make it blue", progress=False, **FAST_PANO)
    aligned = editor.edit_panorama(img, "make it blue", progress=False, align="offsets", **FAST_PANO)
    assert aligned.size == img.size
    a, b = np.asarray(plain, dtype=np.float32), np.asarray(aligned, dtype=np.float32)
    assert np.abs(a - b).mean() > 0.05, np.abs(a - b).mean()


@pytest.mark.parametrize("cls, value, choices", [(VideoConfig, "offsets", "['none', 'flow']"),
                                                 (PanoramaConfig, "flow", "['none', 'offsets']"),
                                                 (VideoConfig, "Flow", "['none', 'flow']")])
def test_bad_align_names_the_field_and_the_choices(cls, value, choices):
    with pytest.raises(ConfigError) as info:
        cls(align=value)
    assert info.value.field == "align"
    assert str(info.value) == f"align: expected one of {choices}, got {value!r}"


def test_cli_has_the_align_flags():
    from csd2d.cli import PanoramaArgs, VideoArgs, parse

    args = parse(["video", "in.mp4", "--output", "out.mp4", "--prompt", "p", "--align", "flow"])
    assert isinstance(args, VideoArgs) and args.config.align == "flow"
    args = parse(["panorama", "in.png", "--output", "out.png", "--prompt", "p", "--align", "offsets"])
    assert isinstance(args, PanoramaArgs) and args.config.align == "offsets"
    assert parse(["video", "in.mp4", "--output", "out.mp4", "--prompt", "p"]).config.align == "none"
