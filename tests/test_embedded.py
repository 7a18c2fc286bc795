"""The embedded model: format, loading, size, that it edits, its trainer, and `csd2d demo`."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from csd2d import EMBEDDED_MODEL, CSDEditor, IP2PGuidance
from csd2d.demo import DemoConfig, demo_panorama, demo_video
from csd2d.imaging import pil_to_tensor
from csd2d.sheets import MIN_VIEW_SIDE, upscale_factor
from csd2d.tiny.edits import edit_strength
from csd2d.tiny import WEIGHTS_DIR
from csd2d.tiny.edits import RANDOM_EDITS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedded():
    return CSDEditor.from_pretrained(EMBEDDED_MODEL)


def test_embedded_weights_format_and_size():
    files = sorted(WEIGHTS_DIR.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert not list(WEIGHTS_DIR.rglob("*.bin")) and not list(WEIGHTS_DIR.rglob("*.pt"))
    total = sum(f.stat().st_size for f in files)
    assert total <= 20 * 1024 * 1024, total
    card = json.loads((WEIGHTS_DIR / "model_card.json").read_text())
    assert card["config"]["seed"] == 0 and len(card["unet_loss_curve"]) >= 10
    curve = [loss for _, loss in card["unet_loss_curve"]]
    assert curve[-1] < 0.2 * curve[0]  # it learned
    assert set(card["instructions"].values()) == {"random", "deterministic"}


def test_embedded_loads_like_instruct_pix2pix(embedded):
    g = embedded.guidance
    assert g.unet.config.in_channels == 8 and g.vae_scale_factor == 4
    assert type(g.unet).__name__ == "UNet2DConditionModel" and type(g.vae).__name__ == "AutoencoderKL"
    assert type(g.text_encoder).__name__ == "CLIPTextModel"
    # The same loading path as a local diffusers folder.
    again = IP2PGuidance.from_pretrained(WEIGHTS_DIR)
    sd = load_file(WEIGHTS_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    key = next(iter(sd))
    assert torch.equal(again.unet.state_dict()[key], sd[key])


def test_reconstruct_is_the_zero_edit_and_what_the_demo_measures_against(embedded):
    """``CSDEditor.reconstruct`` (the VAE round trip of editing) keeps size and alpha, is close to the input
    but not equal to it, and the demo's metrics use it as the zero point: the recorded codec floor is the raw
    metric of the reconstruction, and the baseline's metric against it differs from the raw one."""
    from csd2d.compare import compare_video
    from csd2d.metrics import temporal_inconsistency

    rgba = demo_panorama(64).crop((0, 0, 70, 66)).convert("RGBA")  # not a multiple of the VAE factor
    rgba.putalpha(Image.new("L", rgba.size, 128))
    (out,) = embedded.reconstruct([rgba])
    assert out.size == rgba.size and out.mode == "RGBA" and out.getchannel("A").getextrema() == (128, 128)
    x, y = pil_to_tensor(rgba), pil_to_tensor(out)
    psnr = -10 * torch.log10((x - y).pow(2).mean())
    assert 20 < psnr < 60, psnr  # a lossy codec, but a good one

    frames = demo_video(4, 64, 2)
    demo = DemoConfig()
    cfg = demo.configs_for("recolor it")[1]
    entry, _ = compare_video(embedded, frames, "recolor it", dataclasses.replace(cfg, steps=2, batch=4), 2)
    src = torch.cat([pil_to_tensor(f) for f in frames])
    ref = torch.cat([pil_to_tensor(f) for f in embedded.reconstruct(frames, cfg)])
    floor = temporal_inconsistency(ref, src, 2)
    assert floor > 0 and entry["codec_floor"]["temporal_inconsistency"] == pytest.approx(floor)
    base = entry["baseline"]
    assert base["temporal_inconsistency"] != pytest.approx(base["temporal_inconsistency_raw"])
    with pytest.raises(ValueError, match="images: expected a non-empty list"):
        embedded.reconstruct([])


def test_embedded_model_follows_instructions_selectively(embedded):
    """Score distillation with each instruction, then every output measured with every instruction's strength.
    "make it night" and "invert the colors" must move their own measure far more than any other instruction
    does; "recolor it" must turn the hue by more than 60° while keeping the brightness and not inverting.
    ("make it grayscale" is not followed under score distillation by this model; see README.md.)"""
    img = demo_panorama(64).crop((0, 0, 128, 64))
    src = pil_to_tensor(img)[0]
    names = ["recolor it", "make it night", "make it grayscale", "invert the colors"]
    outs = {n: pil_to_tensor(embedded.edit_panorama(img, n, window=16, stride=8, batch=8, steps=40, lr=1.0,
                                                    image_guidance_scale=1.5, t_max=700, vae_tile=0,
                                                    progress=False))[0] for n in names}
    strength = {(made, measured): edit_strength(outs[made], src, measured) for made in names for measured in names}
    print({k: round(v, 3) for k, v in strength.items()})
    for target in ("make it night", "invert the colors"):
        own = strength[target, target]
        others = [strength[n, target] for n in names if n != target]
        assert own > 0.3 and own > 1.5 * max(others), (target, own, others)
    assert strength["recolor it", "recolor it"] > 60
    assert abs(strength["recolor it", "make it night"]) < 0.2  # brightness kept
    assert strength["recolor it", "invert the colors"] < 0.5 * strength["invert the colors", "invert the colors"]


def test_trainer_reproduces_weights_from_the_seed(tmp_path):
    """The training script end to end at a tiny scale: same seed, byte-identical weights; loadable."""
    code = (
        "import sys; from csd2d.tiny.train import TrainConfig, main; from pathlib import Path; "
        "main(TrainConfig(output=Path(sys.argv[1]), crops=24, vae_steps=3, vae_batch=4, unet_steps=3, unet_batch=4))"
    )
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
            for name in ("a", "b")]  # side by side, one core each
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
    for part in ("unet", "vae", "text_encoder"):
        fname = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        a, b = load_file(tmp_path / "a" / part / fname), load_file(tmp_path / "b" / part / fname)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    card = json.loads((tmp_path / "a" / "model_card.json").read_text())
    assert card["config"]["unet_steps"] == 3 and card["weights_bytes"] > 0
    assert IP2PGuidance.from_pretrained(tmp_path / "a").vae_scale_factor == 4


def test_demo_cli_writes_report_and_media(tmp_path):
    from csd2d.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "3", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# CSD vs independent editing")
    for kind, metric in (("panorama", "colour_map_spread"), ("video", "temporal_inconsistency")):
        for instruction in ("recolor it", "make it night"):
            entry = report[kind][instruction]
            b, c = entry["baseline"][metric], entry["csd"][metric]
            assert entry["ratio_csd_over_baseline"][metric] == pytest.approx(c / b)
            assert f"| {kind} | {instruction} | {metric} | {b:.4f} | {c:.4f} | {c / b:.2f} |" in markdown
            assert entry["csd"]["edit_strength"] != entry["baseline"]["edit_strength"]  # two different runs
    pngs, gifs = sorted(out.glob("panorama_*.png")), sorted(out.glob("video_*.gif"))
    assert len(pngs) == 2 and len(gifs) == 2
    pano = demo_panorama(DemoConfig().panorama_height)
    with Image.open(pngs[0]) as sheet:  # input, baseline and CSD rows, each enlarged to >= 256 px, labelled at left
        assert sheet.height >= 3 * MIN_VIEW_SIDE and sheet.width > upscale_factor(pano.size) * pano.width
    with Image.open(gifs[0]) as gif:  # input | baseline | CSD, each frame enlarged, under its label
        assert gif.n_frames > 1 and gif.width >= 3 * MIN_VIEW_SIDE and gif.height > MIN_VIEW_SIDE
    assert main(["demo", "--output", str(out), "--steps", "3", "--no-progress"]) == 2  # exists: refuse
    fixed = tmp_path / "fixed"
    assert main(["demo", "--output", str(fixed), "--steps", "3", "--no-progress", "--no-match-strength"]) == 0
    entry = json.loads((fixed / "report.json").read_text())["video"]["recolor it"]
    assert entry["csd_runs"] == 1 and entry["csd_lr_scale"] == DemoConfig().csd_lr_scale
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _seed_sweep(compare, metric: str, seeds=range(5)):
    """Entries of ``compare(seed)`` over seeds, each at matched edit strength, and the CSD/baseline ratios of
    ``metric``."""
    entries = [compare(seed) for seed in seeds]
    for entry in entries:
        assert entry["matched_strength"], entry  # the comparison is at equal edit strength (within 10 %)
    ratios = [e["ratio_csd_over_baseline"][metric] for e in entries]
    print(f"{metric} CSD/baseline at matched strength:", [round(r, 3) for r in ratios])
    return entries, ratios


@pytest.mark.parametrize("instruction", RANDOM_EDITS)
def test_csd_keeps_video_edits_consistent_across_seeds(embedded, instruction):
    """The method's claim on the embedded model: for a random-outcome edit of a panning video, at matched edit
    strength and with the demo's settings, CSD's temporal inconsistency is at most 0.6× independent editing's
    (the issue's target) in every one of 5 seeds."""
    from csd2d.compare import compare_video

    demo = DemoConfig()
    frames = demo_video(demo.video_frames, demo.video_size, demo.video_shift)
    _, ratios = _seed_sweep(lambda seed: compare_video(
        embedded, frames, instruction, demo.configs_for(instruction, seed)[1], demo.video_shift,
        csd_lr_scale=demo.csd_lr_scale, match_strength=True)[0], "temporal_inconsistency")
    assert max(ratios) <= VIDEO_RATIO_BOUND, ratios


@pytest.mark.parametrize("instruction", RANDOM_EDITS)
def test_csd_keeps_panorama_edits_consistent_across_seeds(embedded, instruction):
    """The same on a panorama, where the effect is smaller: at matched strength, CSD's windows agree on one
    colour map (colour-map spread) better than independently edited windows do in every one of 5 seeds, and
    on average by the margin in :data:`PANORAMA_MEAN_RATIO_BOUND`. CSD adds no seams (borders at most 1.2× as
    visible, relative to the rest of the image, as in the unedited round trip)."""
    from csd2d.compare import compare_panorama

    demo = DemoConfig()
    pano = demo_panorama(demo.panorama_height)
    entries, ratios = _seed_sweep(lambda seed: compare_panorama(
        embedded, pano, instruction, demo.configs_for(instruction, seed)[0], csd_lr_scale=demo.csd_lr_scale,
        match_strength=True)[0], "colour_map_spread")
    assert max(ratios) < 1.0 and sum(ratios) / len(ratios) < PANORAMA_MEAN_RATIO_BOUND[instruction], ratios
    assert max(e["csd"]["seam_inconsistency"] for e in entries) < 1.2, entries


VIDEO_RATIO_BOUND = 0.6
PANORAMA_MEAN_RATIO_BOUND = {"recolor it": 0.85, "make it night": 0.75}
"""Measured on the committed model over seeds 0–4 (CSD/baseline against the codec round trip): video 0.33–0.44
(recolor) and 0.43–0.49 (night); panorama colour-map spread 0.55–0.94, mean 0.76 (recolor) and 0.48–0.78, mean
0.63 (night). See the closing note of issue 5."""


def test_evaluate_sweeps_seeds_and_extra_photos(embedded, tmp_path):
    """``python -m csd2d.evaluate`` end to end at a tiny scale: every case and seed is reported, with the
    strength-matching outcome, and an extra photo is edited as a panorama."""
    from csd2d.compare import STRENGTH_TOLERANCE
    from csd2d.evaluate import EvalConfig, aligned_rows, evaluate, summary_rows

    photo = tmp_path / "wide.png"
    demo_panorama(48).save(photo)
    demo = DemoConfig(instructions=("recolor it",), video_frames=4)
    demo = dataclasses.replace(demo, panorama=dataclasses.replace(demo.panorama, steps=2),
                               video=dataclasses.replace(demo.video, steps=2, batch=4))
    results = evaluate(embedded, EvalConfig(seeds=(0, 1), images=(photo,), demo=demo))
    assert sorted(results["panorama"]) == ["demo | recolor it", "wide.png | recolor it"]
    for runs in list(results["panorama"].values()) + list(results["video"].values()):
        assert len(runs) == 2
        for r in runs:
            assert r["csd_runs"] >= 1 and r["csd_lr_scale"] > 0
            assert r["matched_strength"] == (abs(r["ratio_csd_over_baseline"]["edit_strength"] - 1)
                                             <= STRENGTH_TOLERANCE)
    rows = summary_rows(results)
    assert rows[0].endswith("matched |") and len(rows) == 2 + 2 * 3 + 1
    # The aligned arms (flow for videos, offsets for panoramas) and the fast-pan clip, matched like CSD.
    assert list(results["fast_pan"]) == ["demo 12 px | recolor it"]
    for runs in list(results["panorama"].values()) + list(results["video"].values()) + list(
            results["fast_pan"].values()):
        for r in runs:
            info = r["arms"]["csd_aligned"]
            assert info["runs"] >= 1 and info["matched_strength"] == (
                abs(info["ratio_over_baseline"]["edit_strength"] - 1) <= STRENGTH_TOLERANCE)
            assert r["csd_aligned"]["edit_strength"] > 0
    assert len(aligned_rows(results)) == 2 + 2 + 1 + 1  # two panoramas, the slow clip, the fast pan
