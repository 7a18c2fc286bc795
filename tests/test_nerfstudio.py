"""`ns-train csd-edit`: registration, options, both modes on CPU with the tiny IP2P model, checkpoints."""

import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import shared_data

try:  # nerfstudio is the optional "nerfstudio" extra: skip without it, except in CI, where it must be installed
    import nerfstudio  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("nerfstudio is not installed (pip install 'csd-edit[nerfstudio]')", allow_module_level=True)

from csd_nerfstudio.config import csd_edit, csd_edit_small, csd_edit_splat  # noqa: E402
from csd_nerfstudio.pipeline import CSDPipeline, neighbouring_views  # noqa: E402
from csd_nerfstudio.scenes import write_downscaled_scene, write_sphere_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts (ns-train, ns-render)


@pytest.fixture(scope="module")
def sphere_scene(tmp_path_factory):
    return write_sphere_scene(tmp_path_factory.mktemp("sphere"), views=8, size=32)


@pytest.fixture(scope="module")
def face_scene(tmp_path_factory):
    return write_downscaled_scene(shared_data("face"), tmp_path_factory.mktemp("face"), max_side=48, every=4)


def fast_config(scene, model_dir, out_dir, mode="dataset", iterations=4, edit=None, **pipeline):
    """csd-edit-small shrunk for CPU tests: few rays and samples, 24 px renders, 3 views, 2 CSD steps per update,
    no pretraining; ``edit`` overrides fields of ``pipeline.edit``."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    base = csd_edit_small.config
    dm = dataclasses.replace(
        base.pipeline.datamanager, data=scene, train_num_rays_per_batch=128, eval_num_rays_per_batch=128,
        dataparser=NerfstudioDataParserConfig(data=scene, eval_mode="all"),
    )
    model = dataclasses.replace(
        base.pipeline.model, eval_num_rays_per_chunk=1024, num_proposal_samples_per_ray=(16, 8),
        num_nerf_samples_per_ray=8, camera_optimizer=dataclasses.replace(base.pipeline.model.camera_optimizer),
    )
    settings = dict(diffusion_model=str(model_dir), diffusion_dtype="float32", mode=mode, edit_rate=2,
                    render_max_side=24, pretrain_steps=0,
                    edit=dataclasses.replace(base.pipeline.edit, **{"batch": 3, "steps": 2, **(edit or {})}))
    settings.update(pipeline)
    return dataclasses.replace(
        base, output_dir=Path(out_dir), vis="tensorboard", max_num_iterations=iterations, mixed_precision=False,
        steps_per_eval_batch=10**6, steps_per_eval_image=10**6, steps_per_eval_all_images=10**6,
        steps_per_save=2, machine=dataclasses.replace(base.machine, device_type="cpu"),
        pipeline=dataclasses.replace(base.pipeline, datamanager=dm, model=model, **settings),
    )


def make_pipeline(config) -> CSDPipeline:
    return config.pipeline.setup(device="cpu", test_mode="val")


def train(config):
    """Run ns-train's own entry (``nerfstudio.scripts.train.main``) in process; return the run directory."""
    from nerfstudio.scripts.train import main

    config.set_timestamp()
    main(config)
    return config.get_base_dir()


# ------------------------------------------------------------------------------------------- registration
def test_methods_are_discovered_and_derived_from_nerfstudio():
    from nerfstudio.configs.method_configs import all_methods

    for name in ("csd-edit", "csd-edit-small", "csd-edit-splat"):
        assert name in all_methods and all_methods[name].method_name == name
    nerfacto = all_methods["nerfacto"]
    full, small, splat = csd_edit.config, csd_edit_small.config, csd_edit_splat.config
    assert full.pipeline.model.num_nerf_samples_per_ray == nerfacto.pipeline.model.num_nerf_samples_per_ray
    assert full.optimizers == nerfacto.optimizers
    assert full.viewer.websocket_host == "127.0.0.1" and nerfacto.viewer.websocket_host == "0.0.0.0"
    assert type(full.pipeline.datamanager).__name__ == "VanillaDataManagerConfig"
    assert small.pipeline.diffusion_dtype == "float16" and small.pipeline.model.lpips is False
    assert full.pipeline.model.lpips is True
    assert dataclasses.replace(small.pipeline, diffusion_dtype="float32", model=full.pipeline.model) == full.pipeline
    assert type(splat.pipeline.model).__name__ == "CSDSplatfactoModelConfig"
    assert splat.optimizers.keys() == all_methods["splatfacto"].optimizers.keys()


def test_ns_train_help_lists_the_options():
    out = subprocess.run([str(BIN / "ns-train"), "csd-edit", "--help"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, COLUMNS="200"))
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ["--pipeline.prompt", "--pipeline.edit.guidance-scale", "--pipeline.edit.image-guidance-scale",
                 "--pipeline.diffusion-model", "--pipeline.diffusion-device", "--pipeline.edit.batch",
                 "--pipeline.edit-rate", "--pipeline.mode", "--pipeline.edit.t-min", "--pipeline.edit.t-max",
                 "--pipeline.edit.coupling", "--pipeline.edit.max-batch", "--pipeline.distill-loss-mult",
                 "--pipeline.update", "--pipeline.pretrain-steps", "--pipeline.patch-size", "--pipeline.carry",
                 "--pipeline.in2n-noise-range", "--pipeline.memory.attention", "--pipeline.memory.compile",
                 "--pipeline.memory.offload", "--pipeline.diffusion-dtype", "--pipeline.edit.vae-tile"]:
        assert flag in out.stdout, flag
    for renamed in ["--pipeline.num-views", "--pipeline.kernel ", "--pipeline.edit-steps", "--pipeline.t-max"]:
        assert renamed not in out.stdout, renamed  # one name per setting: csd2d's, under --pipeline.edit
    assert "nearest cameras" in out.stdout  # view-selection's help text


def test_prompts_with_braces_and_quotes_parse():
    import tyro
    import yaml
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    prompt = 'make the {left} "sign" say \'hi\' {{x}}'
    cfg = tyro.cli(AnnotatedBaseConfigUnion, args=["csd-edit", "--pipeline.prompt", prompt])
    assert cfg.pipeline.prompt == prompt
    assert yaml.load(yaml.dump(cfg), Loader=yaml.Loader).pipeline.prompt == prompt  # config.yml round trip


def test_neighbouring_views_are_the_nearest_cameras():
    angles = torch.arange(12) * (2 * torch.pi / 12)
    c2w = torch.eye(4).repeat(12, 1, 1)
    c2w[:, 0, 3], c2w[:, 1, 3] = 3 * torch.cos(angles), 3 * torch.sin(angles)
    assert sorted(neighbouring_views(c2w, 3, anchor=5)) == [4, 5, 6]
    assert neighbouring_views(c2w, 1, anchor=7) == [7]


# ------------------------------------------------------------------------------------------- behaviour
def test_start_offline_without_lpips_download_and_missing_model_is_named(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path))
    lpips = pipeline.model.lpips
    assert type(lpips).__name__ == "LazyLPIPS" and not lpips.built
    assert not any("lpips" in k for k in pipeline.model.state_dict())
    bad = fast_config(sphere_scene, tiny_model_dir, tmp_path, diffusion_model=str(tmp_path / "no-model"))
    with pytest.raises(ValueError, match="--pipeline.diffusion-model: expected"):
        make_pipeline(bad)


def test_dataset_update_changes_exactly_the_chosen_views(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, edit={"batch": 3}))
    before = [pipeline.images.get(i).clone() for i in range(len(pipeline.images))]
    pipeline.get_train_loss_dict(step=0)
    (chosen,) = pipeline.edited_views
    assert len(set(chosen)) == 3
    for i, img in enumerate(before):
        changed = not torch.equal(pipeline.images.get(i), img)
        assert changed == (i in chosen), i
        assert torch.equal(pipeline.images.original(i), img)  # originals kept for conditioning
    pipeline.get_train_loss_dict(step=1)  # not an edit step (edit_rate 2)
    assert len(pipeline.edited_views) == 1


def test_distill_gradient_reaches_the_field(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path, mode="distill", edit={"batch": 2}))
    before = [pipeline.images.get(i).clone() for i in range(len(pipeline.images))]
    _, losses, _ = pipeline.get_train_loss_dict(step=0)
    assert len(pipeline.edited_views) == 1
    assert "csd_loss" in losses and torch.isfinite(losses["csd_loss"])
    pipeline.model.zero_grad(set_to_none=True)
    losses["csd_loss"].backward()
    grads = [p.grad for p in pipeline.model.field.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(torch.equal(pipeline.images.get(i), b) for i, b in enumerate(before))  # distill leaves data alone


def test_async_updates_equal_sync_updates_one_step_later(sphere_scene, tiny_model_dir, tmp_path):
    sync = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path / "s", asynchronous=False))
    asyn = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path / "a", asynchronous=True,
                                     diffusion_device="cpu"))
    assert asyn.asynchronous and not sync.asynchronous
    asyn.load_state_dict(sync.state_dict())
    job_s, job_a = sync.make_job(0), asyn.make_job(0)
    assert job_s.indices == job_a.indices and torch.equal(job_s.renders, job_a.renders)
    edited_sync = sync.run_job(job_s)
    edited_async = asyn._executor.submit(asyn.run_job, job_a).result()  # on the diffusion thread
    assert torch.equal(edited_sync, edited_async)
    # Ordering: the async update submitted at an edit step lands at the next one.
    before = asyn.images.get(job_a.indices[0]).clone()
    asyn._dataset_update(step=0)
    assert asyn.edited_views == [] and torch.equal(asyn.images.get(job_a.indices[0]), before)
    asyn._dataset_update(step=2)
    assert asyn.edited_views == [job_a.indices]
    asyn.finish_pending()
    assert len(asyn.edited_views) == 2


def test_viewer_controls_update_the_pipeline(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path))
    old = pipeline.text_emb.clone()
    pipeline.viewer_prompt.value = "make it blue"
    pipeline.viewer_prompt.cb_hook(pipeline.viewer_prompt)
    assert pipeline.config.prompt == "make it blue"
    assert not torch.equal(pipeline.text_emb, old)
    assert torch.equal(pipeline.text_emb, pipeline.guidance.encode_prompt(["make it blue"]))
    for element, value in ((pipeline.viewer_guidance, 3.0), (pipeline.viewer_image_guidance, 2.0),
                           (pipeline.viewer_views, 2), (pipeline.viewer_mode, "distill"), (pipeline.viewer_pause, True)):
        element.value = value
        element.cb_hook(element)
    c = pipeline.config
    e = c.edit
    assert (e.guidance_scale, e.image_guidance_scale, e.batch, c.mode, pipeline.paused) == (3.0, 2.0, 2, "distill", True)
    pipeline.get_train_loss_dict(step=0)
    assert pipeline.edited_views == []  # paused


def test_viewer_status_shows_prompt_updates_and_time(sphere_scene, tiny_model_dir, tmp_path):
    pipeline = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path))
    status = pipeline.viewer_status
    assert status.name == "CSD status" and status.disabled
    assert "updates: 0" in status.value and "last update: -" in status.value
    pipeline.viewer_prompt.value = "make it blue"
    pipeline.viewer_prompt.cb_hook(pipeline.viewer_prompt)
    assert "prompt: make it blue |" in status.value
    pipeline.get_train_loss_dict(step=0)
    assert "updates: 1" in status.value
    seconds = float(status.value.split("last update: ")[1].split(" s")[0])
    assert seconds == round(pipeline.last_update_seconds, 2) and seconds > 0


@pytest.mark.slow
def test_training_never_binds_all_interfaces(sphere_scene, tiny_model_dir, tmp_path, monkeypatch):
    bound = []
    real_bind = socket.socket.bind

    def record(self, address):
        bound.append(address)
        return real_bind(self, address)

    monkeypatch.setattr(socket.socket, "bind", record)
    train(fast_config(sphere_scene, tiny_model_dir, tmp_path, iterations=2))
    assert not [a for a in bound if isinstance(a, tuple) and a[0] in ("0.0.0.0", "", "::")], bound


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dataset", "distill"])
def test_face_scene_trains_in_both_modes(face_scene, tiny_model_dir, tmp_path, mode):
    run = train(fast_config(face_scene, tiny_model_dir, tmp_path, mode=mode, iterations=3, edit={"batch": 2}))
    ckpts = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    weights = [v for k, v in state["pipeline"].items() if "field" in k and torch.is_tensor(v) and v.is_floating_point()]
    assert weights and all(torch.isfinite(w).all() for w in weights)


def test_train_measured_repeats_under_the_machine_seed(sphere_scene, tiny_model_dir, tmp_path):
    """Two in-process runs at one machine seed, on two threads and from differently left RNGs, train the same
    weights bit for bit (the image cache's order and the hash grid's backward differed from run to run); torch's
    deterministic setting is as it was after."""
    from csd_nerfstudio.benchmark import train_measured

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    states = []
    try:
        for k in range(2):
            random.seed(k)  # what the process did before
            config = fast_config(sphere_scene, tiny_model_dir, tmp_path / str(k), iterations=4, pretrain_steps=10**9)
            pipe, _ = train_measured(config)
            states.append(pipe.model.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


@pytest.mark.slow
def test_resume_and_render_from_checkpoint(sphere_scene, tiny_model_dir, tmp_path):
    first = train(fast_config(sphere_scene, tiny_model_dir, tmp_path / "a", iterations=3))
    ckpt_dir = first / "nerfstudio_models"
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    resumed_cfg = fast_config(sphere_scene, tiny_model_dir, tmp_path / "b", iterations=5)
    resumed_cfg = dataclasses.replace(resumed_cfg, load_dir=ckpt_dir)
    second = train(resumed_cfg)
    steps = sorted(int(p.stem.split("-")[1]) for p in (second / "nerfstudio_models").glob("*.ckpt"))
    assert steps and steps[-1] >= 4  # continued from the loaded step, not from zero

    # What ns-viewer / ns-eval do: rebuild the scene from config.yml in test mode, without the diffusion model.
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(second / "config.yml", test_mode="test")
    assert isinstance(pipeline, CSDPipeline) and pipeline.guidance is None and step == steps[-1]

    c2w = json.loads((sphere_scene / "transforms.json").read_text())["frames"]
    path = {"camera_type": "perspective", "render_height": 16, "render_width": 16, "fps": 2, "seconds": 1,
            "camera_path": [{"camera_to_world": sum(f["transform_matrix"], []), "fov": 50, "aspect": 1}
                            for f in c2w[:2]]}
    path_file = tmp_path / "path.json"
    path_file.write_text(json.dumps(path))
    # ns-render checks for an ffmpeg binary on PATH even for image output; imageio-ffmpeg ships one.
    import imageio_ffmpeg

    ffmpeg_dir = tmp_path / "ffmpeg-bin"
    ffmpeg_dir.mkdir()
    (ffmpeg_dir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PATH=f"{ffmpeg_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(
        [str(BIN / "ns-render"), "camera-path", "--load-config", str(second / "config.yml"), "--camera-path-filename",
         str(path_file), "--output-path", str(tmp_path / "render"), "--output-format", "images"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    frames = sorted((tmp_path / "render").glob("*.jpg")) + sorted((tmp_path / "render").glob("*.png"))
    assert len(frames) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="splatfacto (gsplat) needs CUDA")
def test_splat_variant_trains_on_gpu(sphere_scene, tiny_model_dir, tmp_path):
    base = csd_edit_splat.config
    cfg = fast_config(sphere_scene, tiny_model_dir, tmp_path)
    cfg = dataclasses.replace(base, output_dir=tmp_path, vis="tensorboard", max_num_iterations=3,
                              pipeline=dataclasses.replace(base.pipeline, diffusion_model=str(tiny_model_dir),
                                                           datamanager=dataclasses.replace(
                                                               base.pipeline.datamanager, data=sphere_scene,
                                                               dataparser=cfg.pipeline.datamanager.dataparser),
                                                           pretrain_steps=0, edit_rate=2))
    run = train(cfg)
    (ckpt,) = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1:]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
    gaussians = [v for k, v in state.items() if k.endswith("gauss_params.means")]
    assert gaussians and torch.isfinite(gaussians[0]).all()
    assert int(ckpt.stem.split("-")[1]) == 2  # trained three steps (0, 1, 2), with an update at steps 0 and 2


def test_loads_a_nerfacto_checkpoint_with_lpips_weights(sphere_scene, tiny_model_dir, tmp_path):
    """--load-dir from a trained nerfacto: its checkpoint also holds LPIPS weights, which csd-edit's lazy LPIPS
    does not have; the scene's weights must still load."""
    source = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path / "src"))
    with torch.no_grad():
        for p in source.model.field.parameters():
            p.add_(0.25)  # a "trained" scene that differs from a fresh one
    state = dict(source.state_dict())
    state["_model.lpips.net.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)  # as in nerfacto checkpoints
    target = make_pipeline(fast_config(sphere_scene, tiny_model_dir, tmp_path / "dst"))
    first = next(iter(source.model.field.parameters()))
    assert not torch.equal(first, next(iter(target.model.field.parameters())))
    target.load_pipeline(state, step=0)
    loaded, expected = target.model.field.state_dict(), source.model.field.state_dict()
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
