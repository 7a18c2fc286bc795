"""InstructPix2Pix guidance and the CSD-Edit step on tiny random components loaded via from_pretrained."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csd2d import IP2PGuidance, ModelLoadError, StepConfig, csd_edit_step, ip2p_guidance, sds_weight

REPO = Path(__file__).resolve().parents[1]


def _inputs(guidance, n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    source = guidance.encode_images(images)
    target = source + 0.3 * torch.randn(source.shape, generator=g)
    emb_t = guidance.encode_prompt(["make it red"] * n)
    emb_s = guidance.encode_prompt([""] * n)
    return target, source, emb_t, emb_s


def test_roundtrip_loads_the_saved_weights(tiny_model_dir, guidance):
    from diffusers import UNet2DConditionModel

    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list(tiny_model_dir.rglob("*.bin"))
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    for (name, a), (_, b) in zip(unet.state_dict().items(), guidance.unet.state_dict().items()):
        assert torch.equal(a, b), name
    assert guidance.vae_scale_factor == 2
    assert guidance.unet.config.in_channels == 8


def test_default_model_id_loads_offline_from_hf_cache(tiny_model_dir, tmp_path):
    """The real id `timbrooks/instruct-pix2pix` resolves from a Hugging Face cache with HF_HUB_OFFLINE=1."""
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--timbrooks--instruct-pix2pix"
    snapshot = repo / "snapshots" / commit
    snapshot.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    code = (
        "import json, csd2d; g = csd2d.IP2PGuidance.from_pretrained(); "
        "print(json.dumps({'in': g.unet.config.in_channels, 'factor': g.vae_scale_factor}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"in": 8, "factor": 2}


def test_unknown_model_offline_names_the_argument(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"--model: expected .*'nobody/no-such-model'"):
        IP2PGuidance.from_pretrained("nobody/no-such-model", arg_name="--model")
    with pytest.raises(ModelLoadError, match="--model: expected .*existing directory"):
        IP2PGuidance.from_pretrained(str(tmp_path / "missing" / "dir"), arg_name="--model")
    with pytest.raises(ModelLoadError, match="empty"):
        IP2PGuidance.from_pretrained("  ")


def test_three_way_guidance_formula():
    full, image, uncond = torch.randn(3, 2, 4).unbind(0)
    assert torch.allclose(ip2p_guidance(full, image, uncond, 1.0, 1.0), full)
    assert torch.allclose(ip2p_guidance(full, image, uncond, 0.0, 0.0), uncond)
    assert torch.allclose(ip2p_guidance(full, image, uncond, 0.0, 1.0), image)
    out = ip2p_guidance(full, image, uncond, 7.5, 1.5)
    assert torch.allclose(out, uncond + 1.5 * (image - uncond) + 7.5 * (full - image))


def test_timesteps_and_weight(guidance):
    g = torch.Generator().manual_seed(0)
    ts = torch.stack([guidance.sample_timestep(20, 500, g) for _ in range(300)])
    assert ts.min() >= 20 and ts.max() <= 500 and ts.unique().numel() > 100
    w = sds_weight(guidance.alphas_cumprod, ts.flatten())
    assert torch.allclose(w, 1 - guidance.scheduler.alphas_cumprod[ts.flatten()])
    assert (w[ts.flatten().argsort()].diff() >= 0).all()  # more noise, more weight
    with pytest.raises(ValueError, match="t_min/t_max"):
        guidance.sample_timestep(600, 500)


def test_vae_scaling_factor_comes_from_config(guidance):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    z = guidance.encode_images(images)
    sf = guidance.vae.config.scaling_factor
    guidance.vae.register_to_config(scaling_factor=2 * sf)
    try:
        assert torch.allclose(guidance.encode_images(images), 2 * z, atol=1e-5)
    finally:
        guidance.vae.register_to_config(scaling_factor=sf)
    assert guidance.decode_latents(z).shape == images.shape


def test_prompts_change_the_embedding(guidance):
    a, b, a2 = guidance.encode_prompt(["make it red", "make it blue", "make it red"])
    assert torch.equal(a, a2) and not torch.allclose(a, b)


def _settings(config: StepConfig = StepConfig()) -> dict:
    """The step settings ``edit_scores`` takes, from the one config tree."""
    return dict(guidance_scale=config.guidance_scale, image_guidance_scale=config.image_guidance_scale,
                t_min=config.t_min, t_max=config.t_max)


def test_edit_scores_take_their_settings_explicitly(guidance):
    """No defaults that could disagree with StepConfig's."""
    target, source, et, es = _inputs(guidance)
    with pytest.raises(TypeError):
        guidance.edit_scores(target, source, et, es, t=torch.tensor([300]))


def test_max_batch_chunks_give_the_same_scores(guidance):
    target, source, et, es = _inputs(guidance)
    kw = dict(generator=None, noise=torch.randn_like(target), t=torch.tensor([300]), **_settings())
    full = guidance.edit_scores(target, source, et, es, **kw)
    chunked = guidance.edit_scores(target, source, et, es, max_batch=4, **kw)
    # float32 noise of batch-size-dependent kernels (larger with OMP_NUM_THREADS=1), far below the scores (~0.1)
    assert torch.allclose(full.scores, chunked.scores, atol=5e-5, rtol=1e-4)


def test_identical_target_and_source_under_same_prompt_give_zero_score(guidance):
    _, source, _, es = _inputs(guidance)
    res = guidance.edit_scores(source, source, es, es, generator=torch.Generator().manual_seed(0), **_settings())
    assert res.scores.abs().max() < 1e-5


def test_csd_edit_step_shapes_finite_deterministic(guidance):
    target, source, et, es = _inputs(guidance, n=4)
    run = lambda: csd_edit_step(guidance, target, source, et, es, generator=torch.Generator().manual_seed(7))
    a, b = run(), run()
    assert a.grad.shape == target.shape and torch.isfinite(a.grad).all()
    assert torch.equal(a.grad, b.grad) and torch.equal(a.t, b.t)
    c = csd_edit_step(guidance, target, source, et, es, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a.grad, c.grad)


def test_coupling_off_is_per_sample_and_coupling_on_mixes(guidance):
    target, source, et, es = _inputs(guidance, n=3)
    noise, t = torch.randn_like(target), torch.tensor([250])
    moved = target.clone()
    moved[2] += 1.0
    for coupling, expect_independent in ((False, True), (True, False)):
        cfg = StepConfig(coupling=coupling)
        a = csd_edit_step(guidance, target, source, et, es, cfg, noise=noise, t=t).grad
        b = csd_edit_step(guidance, moved, source, et, es, cfg, noise=noise, t=t).grad
        same_01 = torch.allclose(a[:2], b[:2], atol=1e-6)
        assert same_01 == expect_independent
        assert not torch.allclose(a[2], b[2])


def test_single_particle_csd_equals_delta_sds(guidance):
    target, source, et, es = _inputs(guidance, n=1)
    kw = dict(noise=torch.randn_like(target), t=torch.tensor([100]))
    on = csd_edit_step(guidance, target, source, et, es, StepConfig(coupling=True), **kw)
    off = csd_edit_step(guidance, target, source, et, es, StepConfig(coupling=False), **kw)
    assert torch.equal(on.grad, off.grad)
    assert torch.allclose(off.grad, sds_weight(guidance.alphas_cumprod, off.t) * off.scores)  # w(t) s_i


def test_import_does_not_pull_nerfstudio():
    code = "import sys, csd2d; import csd2d.csd, csd2d.guidance; print('nerfstudio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
