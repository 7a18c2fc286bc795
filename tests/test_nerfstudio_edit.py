"""3D editing: one config tree, pretraining, IN2N's update, the paper's schedule, distill patches, csd-edit-tiny."""

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest
import torch

from test_nerfstudio import REPO, face_scene, fast_config, make_pipeline, sphere_scene  # noqa: F401 (fixtures)

import csd2d.guidance as guidance_module
from csd2d import EditConfig
from csd2d.ddim import ddim_step, ddim_timesteps
from csd_nerfstudio import config as method_module
from csd_nerfstudio.config import csd_edit, csd_edit_paper, csd_edit_tiny
from csd_nerfstudio.pipeline import CSDPipelineConfig, SceneEditConfig
from csd_nerfstudio.views import render_view


# ------------------------------------------------------------------------------------------- configuration
def test_scene_edit_config_overrides_only_defaults_that_differ():
    """One tree: SceneEditConfig restates no csd2d default, and the pipeline config repeats no csd2d field."""
    base = {f.name: f.default for f in dataclasses.fields(EditConfig)}
    own = SceneEditConfig.__dict__["__annotations__"]
    assert own, "SceneEditConfig sets the 3D defaults"
    # 3D-only editing settings: depth warps need a scene; the guided write-back is wired into the scene updates only
    scene_only = {"align", "guided_radius"}
    for name in own:
        if name in scene_only:
            assert name not in base, name
            continue
        assert name in base, name
        assert getattr(SceneEditConfig(), name) != base[name], f"{name} restates csd2d's default"
    pipeline_fields = {f.name for f in dataclasses.fields(CSDPipelineConfig)}
    assert not pipeline_fields & set(base), pipeline_fields & set(base)
    assert isinstance(csd_edit.config.pipeline.edit, SceneEditConfig)


def test_pipeline_config_is_validated_when_built(sphere_scene, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"^--pipeline.prompt: expected a non-empty instruction, got '  '"):
        CSDPipelineConfig(prompt="  ")
    with pytest.raises(ValueError, match=r"^--pipeline.update: in2n is a dataset update"):
        CSDPipelineConfig(update="in2n", mode="distill")
    with pytest.raises(ValueError, match=r"^--pipeline.pretrain-steps: expected a non-negative"):
        CSDPipelineConfig(pretrain_steps=-1)
    with pytest.raises(ValueError, match=r"^--pipeline.carry: expected a number in \[0, 1\], got 1.5"):
        CSDPipelineConfig(carry=1.5)
    with pytest.raises(ValueError, match=r"^--pipeline.in2n-noise-range: expected 0 <= low <= high < 1"):
        CSDPipelineConfig(in2n_noise_range=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"^--pipeline.distill-loss-mult: expected a finite"):
        CSDPipelineConfig(distill_loss_mult=math.nan)
    with pytest.raises(ValueError, match=r"^--pipeline.edit.lr: expected a finite number, got nan"):
        SceneEditConfig(lr=math.nan)  # csd2d's own checks, named as ns-train's flag
    # The timestep range is checked against the model's schedule when the model loads, before any step.
    bad = fast_config(sphere_scene, tiny_model_dir, tmp_path, edit={"t_max": 5000})
    with pytest.raises(ValueError, match=r"^--pipeline.edit.t-max: expected .* < 1000"):
        make_pipeline(bad)


def test_methods_are_registered_as_entry_points_under_their_names():
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["nerfstudio.method_configs"]
    methods = {name: getattr(method_module, name) for name in method_module.__all__
               if isinstance(getattr(method_module, name), method_module.DerivedMethod)}
    assert set(entry.values()) == {f"csd_nerfstudio.config:{name}" for name in methods}
    for ep_name, target in entry.items():
        assert methods[target.split(":")[1]].config.method_name == ep_name


def test_tiny_variant_is_derived_small_and_offline():
    tiny, full = csd_edit_tiny.config, csd_edit.config
    m = tiny.pipeline.model
    assert (m.num_levels, m.log2_hashmap_size, m.max_res, m.hidden_dim) == (8, 15, 256, 32)
    assert (tuple(m.num_proposal_samples_per_ray), m.num_nerf_samples_per_ray, m.lpips) == ((32, 16), 16, False)
    assert not m.use_appearance_embedding and full.pipeline.model.use_appearance_embedding  # measured; plain loads
    assert tiny.pipeline.datamanager.train_num_rays_per_batch == 512
    assert tiny.pipeline.diffusion_model == "embedded" and tiny.machine.device_type == "cpu"
    assert tiny.max_num_iterations > tiny.pipeline.pretrain_steps > 0
    # Derived: every other setting is csd-edit's.
    assert tiny.pipeline.edit.lr == method_module.TINY_LR  # measured for the embedded model
    assert tiny.pipeline.edit.guided_radius == method_module.TINY_GUIDED_RADIUS  # its VAE blurs (csd2d.guided)
    assert tiny.optimizers == full.optimizers
    assert dataclasses.replace(tiny.pipeline.edit, lr=full.pipeline.edit.lr,
                               guided_radius=full.pipeline.edit.guided_radius) == full.pipeline.edit
    assert m.near_plane == full.pipeline.model.near_plane


def test_paper_preset_lists_16_views_and_2000_steps_in_config_yml(face_scene, tiny_model_dir, tmp_path):
    import yaml

    cfg = csd_edit_paper.config
    cfg = dataclasses.replace(cfg, output_dir=tmp_path, pipeline=dataclasses.replace(
        cfg.pipeline, datamanager=dataclasses.replace(cfg.pipeline.datamanager, data=face_scene)))
    cfg.set_timestamp()
    cfg.save_config()  # what ns-train writes
    saved = yaml.load((cfg.get_base_dir() / "config.yml").read_text(), Loader=yaml.Loader)
    p = saved.pipeline
    assert (p.edit.batch, p.edit_rate, p.view_selection, p.pretrain_steps) == (16, 2000, "random", 30000)
    assert saved.max_num_iterations > p.pretrain_steps
    # It builds, and an update draws 16 distinct views at random (without replacement).
    small = fast_config(face_scene, tiny_model_dir, tmp_path / "run", edit={"batch": 16, "steps": 1},
                        view_selection="random", edit_rate=2000)
    pipeline = make_pipeline(small)
    n = len(pipeline.images)
    views = pipeline.select_views(0)
    assert len(views) == min(16, n) == len(set(views)) and views != sorted(views)
    pipeline.get_train_loss_dict(step=1)
    assert pipeline.edited_views == []  # not an edit step
    pipeline.get_train_loss_dict(step=2000)
    assert len(pipeline.edited_views) == 1


# ------------------------------------------------------------------------------------------- pretraining
def test_pretraining_leaves_training_images_alone_until_it_ends(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, pretrain_steps=4, edit_rate=2))
    originals = [pipeline.images.get(i).clone() for i in range(len(pipeline.images))]
    for step in range(4):
        pipeline.get_train_loss_dict(step)
        assert all(torch.equal(pipeline.images.get(i), o) for i, o in enumerate(originals)), step
    assert pipeline.edited_views == []
    pipeline.get_train_loss_dict(4)
    (chosen,) = pipeline.edited_views
    assert all(not torch.equal(pipeline.images.get(i), originals[i]) for i in chosen)
    # A loaded checkpoint whose edits had started (--load-dir) edits on at once, from its saved update counter.
    loaded = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path / "l", pretrain_steps=4, edit_rate=2))
    loaded.load_pipeline(pipeline.state_dict(), step=0)
    assert all(torch.equal(loaded.images.get(i), pipeline.images.get(i)) for i in range(len(pipeline.images)))
    loaded.get_train_loss_dict(0)
    assert loaded.edited_views == [chosen, pipeline.select_views(1)]


# ------------------------------------------------------------------------------------------- IN2N's update
def test_ddim_step_recovers_the_clean_sample_from_the_true_noise():
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    a, a_prev = torch.tensor(0.3), torch.tensor(0.8)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(ddim_step(eps, x_t, a, a_prev), a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=1e-6)
    assert torch.allclose(ddim_step(eps, x_t, a, torch.tensor(1.0)), x0, atol=1e-5)
    assert ddim_timesteps(980, 20).tolist()[:2] == [980, 931] and ddim_timesteps(980, 20)[-1] == 49


def _in2n(scene, model_dir, tmp_path, seed=0, **pipeline):
    return make_pipeline(fast_config(scene, model_dir, tmp_path, update="in2n", in2n_ddim_steps=3,
                                     edit={"seed": seed}, **pipeline))


def test_memory_controls_reach_the_diffusion_model(sphere_scene, tiny_model_dir, tmp_path):
    """--pipeline.memory.* are csd2d's controls (one MemoryConfig): sliced attention and offloading apply."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from csd2d.config import MemoryConfig

    cfg = fast_config(sphere_scene, tiny_model_dir, tmp_path, memory=MemoryConfig(attention="sliced", offload=True))
    g = make_pipeline(cfg).guidance
    assert not any(isinstance(p, AttnProcessor2_0) for p in g.unet.attn_processors.values())
    assert g.vae.encoder._forward_pre_hooks and g.text_encoder._forward_pre_hooks  # moved onto the device per call


def test_in2n_noise_level_comes_from_its_own_range_not_the_csd_timesteps(sphere_scene, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    """IN2N noises to U[0.02, 0.98]·T (its own setting); csd's SDS timesteps stay csd2d's [t_min, t_max]."""
    import csd_nerfstudio.updates as updates

    starts = []
    real = updates.ddim_edit
    monkeypatch.setattr(updates, "ddim_edit", lambda *a, **k: starts.append(k["t_start"]) or real(*a, **k))
    pipeline = _in2n(sphere_scene, tiny_model_dir, tmp_path, in2n_noise_range=(0.7, 0.7))
    pipeline.run_job(pipeline.make_job(0))
    assert starts == [700]
    assert CSDPipelineConfig().in2n_noise_range == (0.02, 0.98)
    assert SceneEditConfig().t_max == EditConfig().t_max  # not IN2N's 980: SDS at high t over-edits (issue 11)


def test_csd_update_starts_from_a_share_of_the_render(sphere_scene, tiny_model_dir, tmp_path, monkeypatch):
    """carry 0 edits the photos afresh (the render does not matter), carry 1 starts from the render."""
    import csd_nerfstudio.updates as updates

    starts = []
    real = updates.optimize_latents
    monkeypatch.setattr(updates, "optimize_latents",
                        lambda g, target, *a, **k: starts.append(target.clone()) or real(g, target, *a, **k))
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path))
    job = pipeline.make_job(0)
    source, render = updates._latents(pipeline.guidance, job, pipeline.config.edit)
    for carry in (0.0, 0.5, 1.0):
        pipeline.config.carry = carry
        pipeline.run_job(job)
        assert torch.allclose(starts[-1], source + carry * (render - source), atol=1e-5), carry


def test_in2n_changes_one_view_per_update_cycling_through_the_dataset(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = _in2n(sphere_scene, tiny_model_dir, tmp_path)
    n = len(pipeline.images)
    photos = [pipeline.images.original(i).clone() for i in range(n)]
    for update in range(3):
        before = [pipeline.images.get(i).clone() for i in range(n)]
        pipeline.get_train_loss_dict(step=2 * update)
        changed = [i for i in range(n) if not torch.equal(pipeline.images.get(i), before[i])]
        assert changed == [update] and pipeline.edited_views[-1] == [update]
    assert all(torch.equal(pipeline.images.original(i), photos[i]) for i in range(n))  # conditioning kept


def test_in2n_uses_the_shared_guidance_formula_and_is_deterministic(sphere_scene, tiny_model_dir, tmp_path,
                                                                    monkeypatch):
    calls = {"n": 0}
    real = guidance_module.ip2p_guidance

    def spy(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(guidance_module, "ip2p_guidance", spy)
    a = _in2n(sphere_scene, tiny_model_dir, tmp_path / "a")
    job = a.make_job(0)
    edited = a.run_job(job)
    assert calls["n"] == 3  # one guided prediction per DDIM step, through csd2d's one formula
    calls["n"] = 0
    csd = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path / "c"))
    csd.run_job(csd.make_job(0))
    assert calls["n"] == 2  # CSD-Edit: one per SGD step, the same function
    # Same seed, same edit (in another pipeline); another seed, another edit.
    b = _in2n(sphere_scene, tiny_model_dir, tmp_path / "b")
    assert torch.equal(b.run_job(job), edited)
    other = _in2n(sphere_scene, tiny_model_dir, tmp_path / "o", seed=1)
    assert not torch.equal(other.run_job(job), edited)
    # The result depends on that formula: a different formula gives a different edit.
    monkeypatch.setattr(guidance_module, "ip2p_guidance", lambda full, image, uncond, s_t, s_i: uncond)
    assert not torch.equal(a.run_job(job), edited)


# ------------------------------------------------------------------------------------------- distill patches
def test_distill_patches_render_only_the_patch_and_reach_the_field(sphere_scene, tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    import csd_nerfstudio.pipeline as pipeline_module

    shapes = []
    real = pipeline_module.render_view

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(pipeline_module, "render_view", spy)
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, mode="distill", patch_size=8,
                                         edit={"batch": 2}))
    _, losses, _ = pipeline.get_train_loss_dict(step=0)
    assert shapes == [(3, 8, 8), (3, 8, 8)]
    losses["csd_loss"].backward()
    assert sum(float(p.grad.abs().sum()) for p in pipeline.model.field.parameters() if p.grad is not None) > 0


def test_update_renders_in_chunks_of_render_chunk_rays_with_the_same_image(sphere_scene, tiny_model_dir, tmp_path):
    """--pipeline.render-chunk bounds the rays of each no-gradient render of an update (the peak memory of
    nerfstudio's torch hash grid grows with it) and leaves the rendered view unchanged."""
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, render_chunk=100))
    model = pipeline.model
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        job = pipeline.make_job(0)
    finally:
        hook.remove()
    camera = pipeline._camera(job.indices[0])
    rays = int(camera.height) * int(camera.width)
    assert seen and max(seen) == 100 and sum(seen) == rays * len(job.indices)
    model.eval()
    whole = render_view(model, camera, job.indices[0])  # the model's own chunks (eval_num_rays_per_chunk)
    torch.testing.assert_close(render_view(model, camera, job.indices[0], chunk=100), whole, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="render-chunk: expected a positive integer, got 0"):
        fast_config(sphere_scene, tiny_model_dir, tmp_path, render_chunk=0)


def test_own_appearance_renders_each_view_with_its_own_embedding(sphere_scene, tiny_model_dir, tmp_path):
    """In eval mode nerfacto renders every camera with the mean appearance embedding; ``own_appearance`` renders
    a training view with its own (what the evaluation's ``…_own`` metrics read) and leaves the model in eval mode."""
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path))
    model = pipeline.model
    model.eval()
    cams = {i: pipeline._camera(i) for i in (0, 1)}

    def renders():
        return {k: render_view(model, cams[i], i, own_appearance=own) for k, (i, own) in
                {"own0": (0, True), "own1": (1, True), "mean1": (1, False)}.items()}

    before = renders()
    with torch.no_grad():
        model.field.embedding_appearance.embedding.weight[0] += 3.0  # view 0's embedding (and so the mean) moves
    after = renders()
    assert not model.field.training and not model.training
    torch.testing.assert_close(after["own1"], before["own1"])  # view 1's own embedding did not change
    assert (after["own0"] - before["own0"]).abs().max() > 1e-3
    assert (after["mean1"] - before["mean1"]).abs().max() > 1e-3


def test_csd_edit_distills_in_patches_and_tiny_in_whole_views():
    """csd-edit's distill renders 128 px patches (whole 512 px views ran out of memory on an H200); csd-edit-tiny
    renders its 64 px views whole."""
    assert csd_edit.config.pipeline.patch_size == method_module.DISTILL_PATCH == 128
    assert csd_edit_paper.config.pipeline.patch_size == 128
    assert csd_edit_tiny.config.pipeline.patch_size is None


# ------------------------------------------------------------------------------------------- async shutdown
def test_training_end_applies_the_pending_update_and_stops_the_thread(sphere_scene, tiny_model_dir, tmp_path):
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, asynchronous=True))
    callbacks = pipeline.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, None))
    pipeline.get_train_loss_dict(step=0)
    assert pipeline.edited_views == [] and pipeline._pending is not None
    for callback in callbacks:
        callback.run_callback_at_location(step=1, location=TrainingCallbackLocation.AFTER_TRAIN)
    assert len(pipeline.edited_views) == 1 and pipeline._executor is None


# ------------------------------------------------------------------------------------------- csd-edit-tiny
@pytest.mark.slow
@pytest.mark.parametrize("update", ["csd", "in2n"])
def test_tiny_trains_and_edits_the_face_scene(face_scene, tmp_path, update):
    """ns-train's Trainer on csd-edit-tiny (embedded model) with a short pretrain, then edits."""
    from csd_nerfstudio.benchmark import tiny_config

    cfg = tiny_config(face_scene, tmp_path, iterations=5, pretrain_steps=2, edit_rate=2, update=update,
                      in2n_ddim_steps=4, edit={"steps": 4, "batch": 2})
    cfg.pipeline.datamanager.dataparser.eval_mode = "all"
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    pipeline = trainer.pipeline
    assert len(pipeline.edited_views) == 2  # steps 2 and 4: none during the pretrain (steps 0, 1)
    if update == "in2n":
        assert pipeline.edited_views == [[0], [1]]
    else:
        assert all(len(set(views)) == 2 for views in pipeline.edited_views)
    edited = {i for views in pipeline.edited_views for i in views}
    for i in range(len(pipeline.images)):
        changed = not torch.equal(pipeline.images.get(i), pipeline.images.original(i))
        assert changed == (i in edited), i
    ckpt = sorted((cfg.get_base_dir() / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
    assert all(torch.isfinite(v).all() for k, v in state.items() if "field" in k and v.is_floating_point())
