"""The decoded edit carried onto the sharp start image (csd2d.guided.guided_transfer) and the 3D updates' option
(--pipeline.edit.guided-radius)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_data

from csd2d import IP2PGuidance
from csd2d.guided import guided_transfer
from csd2d.tiny.edits import edit_strength


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).pow(2).mean().clamp_min(1e-12)))


def _texture(n=2, size=48, seed=0) -> torch.Tensor:
    """Colourful images with coarse regions and fine detail, away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)
    fine = torch.rand(n, 3, size, size, generator=g) - 0.5
    return (0.15 + 0.5 * coarse.clamp(0, 1) + 0.25 * fine).clamp(0, 1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """A decoder that loses the detail: 4× down and back up."""
    small = F.avg_pool2d(x, 4)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _night(x: torch.Tensor) -> torch.Tensor:
    """A global affine colour map with cross-channel terms (stays inside [0, 1] on [0, 1] inputs)."""
    m = torch.tensor([[0.30, 0.02, 0.05], [0.05, 0.35, 0.10], [0.00, 0.05, 0.70]])  # [in, out]
    return torch.einsum("nihw,ij->njhw", x, m) + torch.tensor([0.02, 0.03, 0.08])[None, :, None, None]


def test_a_global_colour_map_through_a_blurring_decoder_lands_on_the_sharp_image():
    x = _texture()
    before = _blur(x)
    after = _night(before)  # what the decoder gives back: the edit, blurred
    out = guided_transfer(x, before, after, radius=3, eps=1e-6)
    assert _psnr(out, _night(x)) > 40.0, _psnr(out, _night(x))
    assert _psnr(after, _night(x)) < 33.0  # the decoded edit lost the detail the transfer kept


def test_an_edit_of_one_half_stays_in_that_half():
    x = _texture(seed=1)
    before = _blur(x)
    after = before.clone()
    after[..., :24] = 0.3 * before[..., :24]  # the decoded edit darkens the left half only
    r = 2
    out = guided_transfer(x, before, after, radius=r, eps=1e-6)
    far = 2 * r + 4  # the window, averaged twice, plus the decoder's reach
    left, right = slice(0, 24 - far), slice(24 + far, 48)
    assert _psnr(out[..., left], 0.3 * x[..., left]) > 38.0
    assert _psnr(out[..., right], x[..., right]) > 38.0


def test_the_running_sums_are_the_window_means():
    from csd2d.guided import _box

    x = torch.rand(2, 5, 40, 33, generator=torch.Generator().manual_seed(0))
    for r in (1, 3, 8):
        pooled = F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)
        torch.testing.assert_close(_box(x, r), pooled, atol=1e-5, rtol=0)


def test_bad_input_is_named():
    x = _texture()
    with pytest.raises(ValueError, match="radius: expected a window radius in pixels >= 1, got 0"):
        guided_transfer(x, x, x, radius=0)
    with pytest.raises(ValueError, match="x, before, after: expected three"):
        guided_transfer(x, x[:, :, :40], x, radius=2)
    with pytest.raises(ValueError, match="radius: expected less than the image's shorter side"):
        guided_transfer(x, x, x, radius=48)


# ------------------------------------------------------------------------------------------------ the 3D update
def test_an_update_with_the_guided_write_back_keeps_the_photos_structure_and_the_edit():
    """The embedded model's VAE blurs a 64 px face (24.6 dB); with guided_radius the same edit is written onto the
    photo's own pixels: far closer to the photo once each view's colour map is taken out, and as strong."""
    from csd2d.metrics import affine_colour_map, apply_colour_map
    from csd_nerfstudio.config import TINY_GUIDED_RADIUS, csd_edit_tiny
    from csd_nerfstudio.updates import EditJob, csd_update, in2n_update
    from test_evaluate3d import _face_photos

    g = IP2PGuidance.from_pretrained("embedded")
    photos = _face_photos(3)
    cfg = csd_edit_tiny.config.pipeline.edit
    text, source = g.encode_prompt(["recolor it"]), g.encode_prompt([""])
    job = EditJob(0, [0, 1, 2], photos, photos, [(64, 64)] * 3)

    def edit(radius):
        return csd_update(g, job, cfg, text, source, torch.Generator().manual_seed(0), carry=0.0,
                          guided_radius=radius)

    plain, kept = edit(0), edit(TINY_GUIDED_RADIUS)

    def structure(images):  # PSNR to the photos after each view's best affine colour map
        return _psnr(torch.stack([apply_colour_map(p, affine_colour_map(p, e)) for p, e in zip(photos, images)]),
                     images)

    assert structure(kept) > structure(plain) + 3.0, (structure(kept), structure(plain))
    hue_plain, hue_kept = (edit_strength(e, photos, "recolor it") for e in (plain, kept))
    assert hue_plain > 45.0 and math.isclose(hue_kept, hue_plain, rel_tol=0.15), (hue_plain, hue_kept)

    def in2n(radius):  # IN2N's update edits the renders (here the photos) with DDIM
        return in2n_update(g, job, cfg, text, torch.Generator().manual_seed(0), ddim_steps=5, t_range=(400, 400),
                           guided_radius=radius)

    plain, kept = in2n(0), in2n(TINY_GUIDED_RADIUS)
    assert structure(kept) > structure(plain) + 3.0, (structure(kept), structure(plain))
    assert _psnr(kept, photos) < 25.0  # an edit, not the photos back


def test_the_methods_defaults_and_a_bad_radius():
    from csd_nerfstudio.config import TINY_GUIDED_RADIUS, csd_edit, csd_edit_splat_tiny, csd_edit_tiny, \
        csd_edit_tiny_fast
    from csd_nerfstudio.pipeline import SceneEditConfig
    from csd2d.config import ConfigError

    assert csd_edit.config.pipeline.edit.guided_radius == 0  # the real model's edits may add fine structure
    for method in (csd_edit_tiny, csd_edit_tiny_fast, csd_edit_splat_tiny):
        assert method.config.pipeline.edit.guided_radius == TINY_GUIDED_RADIUS > 0
    with pytest.raises(ConfigError, match="--pipeline.edit.guided-radius: expected a window radius in pixels >= 0, "
                                          "got -1"):
        SceneEditConfig(guided_radius=-1)


@pytest.mark.slow
def test_the_joint_round_writes_back_the_edit_carried_onto_the_photos(tmp_path, monkeypatch):
    """The pipeline hands --pipeline.edit.guided-radius to the update, and the views written back are its output."""
    import csd_nerfstudio.pipeline as pipeline_module
    from csd_nerfstudio.updates import csd_update
    from test_joint import joint_config, trained

    from csd_nerfstudio.scenes import write_downscaled_scene

    data = write_downscaled_scene(shared_data("face"), tmp_path / "face32", max_side=32, every=16)
    radii, edits = [], []

    def recorded(*args, **kwargs):
        radii.append(kwargs.get("guided_radius"))
        edits.append(csd_update(*args, **kwargs))
        return edits[-1]

    monkeypatch.setattr(pipeline_module, "csd_update", recorded)
    cfg = joint_config(data, tmp_path / "run", iterations=2 + 3, rounds=1)
    cfg.pipeline.edit = dataclasses.replace(cfg.pipeline.edit, guided_radius=3)
    trainer = trained(cfg)
    assert radii == [3]
    images = trainer.pipeline.images
    for k in range(len(images)):
        torch.testing.assert_close(images.get(k)[..., :3], edits[0][k].permute(1, 2, 0), atol=1 / 255 + 1e-6, rtol=0)
