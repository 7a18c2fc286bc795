"""Aligned CSD in the scene pipeline (--pipeline.edit.align depth): the job carries the views' depth warps, the
csd update mixes through them, distill mode warps its renders too, and the flag is refused where it does nothing."""

import dataclasses

import pytest
import torch

from test_nerfstudio import fast_config, make_pipeline, sphere_scene  # noqa: F401 (fixtures)

from csd2d.align import IdentityWarps
from csd_nerfstudio.pipeline import CSDPipelineConfig
from csd_nerfstudio.warps import DepthWarps


def test_depth_aligned_update_mixes_through_the_views_warps(sphere_scene, tiny_model_dir, tmp_path):
    pipe = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, edit={"align": "depth"}))
    job = pipe.make_job(0)
    assert isinstance(job.warps, DepthWarps) and job.warps.n == len(job.indices) == 3
    f = pipe.guidance.vae_scale_factor
    assert tuple(job.warps.depth.shape[1:]) == (job.renders.shape[2] // f, job.renders.shape[3] // f)
    assert job.warps.depth.gt(0).all() and job.warps.kind == "ray"  # nerfacto's depth: along the unit ray
    c2w = pipe.datamanager.train_dataset.cameras.camera_to_worlds[job.indices]
    torch.testing.assert_close(job.warps.c2w, c2w.float())
    aligned = pipe.run_job(job)
    plain = pipe.run_job(dataclasses.replace(job, warps=None))
    identity = pipe.run_job(dataclasses.replace(job, warps=IdentityWarps(3, *job.warps.depth.shape[1:])))
    assert (aligned - plain).abs().max() > 1e-3  # the warps change what the kernel mixes
    torch.testing.assert_close(identity, plain, atol=1e-4, rtol=0)  # identity warps are plain CSD


def test_plain_pipeline_renders_no_depth(sphere_scene, tiny_model_dir, tmp_path):
    pipe = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path))
    assert pipe.make_job(0).warps is None


def test_a_round_from_the_photos_renders_only_depth_on_the_latent_grid(sphere_scene, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    """The joint schedule's first round edits the photos, so an aligned one renders no colour: its job holds the
    photos, and each view's depth comes from a camera scaled to DEPTH_SUPERSAMPLE rays per latent pixel side, whose
    intrinsics on the latent grid are the full render's."""
    import csd_nerfstudio.pipeline as pipeline_module

    supersample = 1  # the test model's VAE factor is 2: at the default 2 the depth would be the full render's size
    monkeypatch.setattr(pipeline_module, "DEPTH_SUPERSAMPLE", supersample)
    sides = []
    real = pipeline_module.render_view

    def spy(model, camera, *args, **kwargs):
        sides.append((int(camera.height), int(camera.width)))
        return real(model, camera, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "render_view", spy)
    pipe = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, schedule="joint",
                                     edit={"align": "depth", "normalization": "row"}))
    assert pipe.needs_renders(0) and not pipe.needs_colour(0)
    job = pipe.make_job(0)
    latent = tuple(job.warps.depth.shape[1:])
    f = pipe.guidance.vae_scale_factor
    assert latent == (job.originals.shape[2] // f, job.originals.shape[3] // f)
    assert torch.equal(job.renders, job.originals)  # the photos: the round starts from them
    assert len(sides) == len(job.indices) and all(max(s) == supersample * max(latent) for s in sides)
    assert max(sides[0]) < max(job.originals.shape[2:])  # fewer rays than the colour render
    monkeypatch.setattr(pipe, "needs_colour", lambda update: True)  # the same views rendered in colour, full size
    full = pipe.make_job(0)
    assert not torch.equal(full.renders, full.originals) and max(sides[-1]) == max(full.originals.shape[2:])
    torch.testing.assert_close(job.warps.intrinsics, full.warps.intrinsics)
    torch.testing.assert_close(job.warps.c2w, full.warps.c2w)


def test_with_the_kernel_off_align_builds_no_warps(sphere_scene, tiny_model_dir, tmp_path):
    """edit.coupling False mixes nothing, so edit.align depth (csd-edit-tiny-fast's) neither renders depth nor
    builds warps there: the evaluation's kernel-off arm costs what it did."""
    pipe = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path,
                                     edit={"align": "depth", "coupling": False}))
    assert not pipe.aligns() and pipe.make_job(0).warps is None


@pytest.mark.parametrize("patch", [None, 8])
def test_distill_mode_warps_its_renders(sphere_scene, tiny_model_dir, tmp_path, monkeypatch, patch):
    import csd_nerfstudio.pipeline as pipeline_module

    seen = []
    real = pipeline_module.csd_edit_step

    def spy(*args, warps=None, **kwargs):
        seen.append(warps)
        return real(*args, warps=warps, **kwargs)

    monkeypatch.setattr(pipeline_module, "csd_edit_step", spy)
    pipe = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, mode="distill", patch_size=patch,
                                     edit={"align": "depth", "batch": 2}))
    _, losses, _ = pipe.get_train_loss_dict(step=0)
    losses["csd_loss"].backward()
    (warps,) = seen
    assert isinstance(warps, DepthWarps) and warps.n == 2
    if patch is not None:
        assert tuple(warps.depth.shape[1:]) == (patch // pipe.guidance.vae_scale_factor,) * 2
    assert sum(float(p.grad.abs().sum()) for p in pipe.model.field.parameters() if p.grad is not None) > 0


def test_align_is_refused_where_it_does_nothing():
    with pytest.raises(ValueError, match=r"^--pipeline.edit.align: aligns CSD's kernel, which the in2n update"):
        CSDPipelineConfig(update="in2n", edit=dataclasses.replace(CSDPipelineConfig().edit, align="depth"))
    with pytest.raises(ValueError, match=r"--pipeline.edit.align: expected one of \['none', 'depth'\], got 'flow'"):
        dataclasses.replace(CSDPipelineConfig().edit, align="flow")
