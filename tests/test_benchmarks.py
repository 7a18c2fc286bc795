"""Benchmarks stay runnable (the CPU dry run of benchmarks/gpu.sh), the official-structure loop computes the
same gradient as the batched step, and the memory controls leave results unchanged within tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import csd2d.csd as csd_module
from csd2d import IP2PGuidance
from csd2d.csd import StepConfig, csd_edit_step

ROOT = Path(__file__).resolve().parents[1]


def _inputs(guidance, n=3, seed=0):
    from benchmarks.step import make_inputs

    return make_inputs(guidance, n, 32, seed)


def _noise_t(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)), torch.tensor([300])


@pytest.mark.parametrize("coupling", [True, False])
def test_official_structure_loop_gives_the_batched_gradient(guidance, coupling):
    from benchmarks.official_loop import official_structure_step

    inputs = _inputs(guidance)
    noise, t = _noise_t(inputs[0].shape)
    config = StepConfig(coupling=coupling)
    batched = csd_edit_step(guidance, *inputs, config, noise=noise, t=t).grad
    loop = official_structure_step(guidance, *inputs, config, noise, t)
    assert batched.abs().max() > 1e-3  # a real gradient, not zeros on both sides
    torch.testing.assert_close(loop, batched, atol=1e-5, rtol=1e-4)


def test_step_split_times_each_part_and_restores_the_code(guidance):
    from benchmarks.step import bench_n

    kernel, forward = csd_module.csd_gradient, guidance.unet.forward
    row = bench_n(guidance, 2, 32, repeats=1)
    assert row["split_unet_s"] > 0 and row["split_kernel_s"] > 0 and row["split_vae_s"] == 0
    # the parts are timed inside the split's own step (a structural bound: comparing them with step_s, timed in
    # another run, failed once on a box shared by three jobs)
    assert row["split_rest_s"] >= 0
    assert row["overhead"] > 0 and row["unet_rows"] == 12
    assert row["aligned_step_s"] > 0 and "align_cost" in row
    assert csd_module.csd_gradient is kernel and guidance.unet.forward == forward
    assert "forward" not in vars(guidance.unet)


def _grad(g: IP2PGuidance, seed=0):
    inputs = _inputs(g)
    noise, t = _noise_t(inputs[0].shape)
    return csd_edit_step(g, *inputs, StepConfig(), noise=noise, t=t).grad.float()


@pytest.fixture()
def fresh(tiny_model_dir):
    """A model per test: the controls change it in place."""
    return lambda **kw: IP2PGuidance.from_pretrained(tiny_model_dir, device="cpu", **kw)


def test_sliced_attention_keeps_the_gradient(fresh):
    from diffusers.models.attention_processor import AttnProcessor2_0

    base, sliced = fresh(), fresh(attention="sliced")
    assert all(isinstance(p, AttnProcessor2_0) for p in base.unet.attn_processors.values())
    assert not any(isinstance(p, AttnProcessor2_0) for p in sliced.unet.attn_processors.values())
    torch.testing.assert_close(_grad(sliced), _grad(base), atol=1e-5, rtol=1e-4)


def test_offload_keeps_results_and_parks_text_encoder_and_vae_on_cpu(fresh):
    base, off = fresh(), fresh(offload=True)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(off.encode_images(images), base.encode_images(images))
    torch.testing.assert_close(off.decode_latents(base.encode_images(images)), base.decode_latents(base.encode_images(images)))
    torch.testing.assert_close(_grad(off), _grad(base))
    # The hooks ran (forward hooks registered on the text encoder and on every VAE part) and left them on the CPU.
    assert off.text_encoder._forward_pre_hooks and off.vae.decoder._forward_hooks
    assert {p.device.type for m in (off.text_encoder, off.vae) for p in m.parameters()} == {"cpu"}


def test_bfloat16_stays_close(tiny_model_dir, fresh):
    base = fresh()
    half = IP2PGuidance.from_pretrained(tiny_model_dir, device="cpu", torch_dtype=torch.bfloat16)
    a, b = _grad(base).flatten(), _grad(half).flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9  # measured 0.97 (bf16 keeps 3 digits)
    images = torch.rand(1, 3, 32, 32)
    z = base.encode_images(images)
    assert (half.decode_latents(z) - base.decode_latents(z)).abs().max() < 0.05


def test_bad_attention_names_the_argument(tiny_model_dir):
    with pytest.raises(ValueError, match="attention: expected 'sdpa' or 'sliced', got 'flash'"):
        IP2PGuidance.from_pretrained(tiny_model_dir, attention="flash")


def test_cli_flags_reach_the_loader():
    from csd2d.cli import parse

    args = parse(["video", "in.mp4", "--output", "o.gif", "--prompt", "x", "--attention", "sliced", "--offload"])
    assert args.memory_kwargs() == dict(attention="sliced", compile_unet=False, offload=True)
    assert parse(["video", "in.mp4", "--output", "o.gif", "--prompt", "x"]).memory_kwargs()["attention"] == "sdpa"


def test_editor_passes_memory_controls(tiny_model_dir):
    from csd2d import CSDEditor

    editor = CSDEditor.from_pretrained(tiny_model_dir, attention="sliced", offload=True)
    assert editor.guidance.text_encoder._forward_pre_hooks
    assert editor.guidance.unet.attn_processors  # sliced processors installed
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert not any(isinstance(p, AttnProcessor2_0) for p in editor.guidance.unet.attn_processors.values())


@pytest.mark.slow
def test_compiled_unet_keeps_the_gradient(fresh):
    compiled = fresh(compile_unet=True)
    torch.testing.assert_close(_grad(compiled), _grad(fresh()), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_gpu_script_cpu_dry_run(tmp_path):
    """``bash benchmarks/gpu.sh OUT --device cpu --quick``: every benchmark writes its JSON with sane numbers."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path), "--device", "cpu", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = json.loads((tmp_path / "step.json").read_text())
    assert [r["n"] for r in step["rows"]] == [1, 2, 4, 8]
    for r in step["rows"]:
        assert 0 < r["unet_alone_s"] and 0 < r["step_s"] and r["split_unet_s"] > 0
    official = json.loads((tmp_path / "official_loop.json").read_text())
    assert official["rows"][0]["max_abs_grad_diff"] < 1e-4 and official["rows"][0]["speedup"] > 0
    memory = json.loads((tmp_path / "memory.json").read_text())
    assert all(r["max_abs_grad_diff_vs_unchunked"] < 1e-4 for r in memory["sweep"])
    controls = {r["control"]: r for r in memory["controls"]}
    assert controls["attention sliced"]["max_rel_grad_diff"] < 1e-3
    assert controls["offload text encoder + VAE"]["max_rel_grad_diff"] == 0
    scene = json.loads((tmp_path / "scene3d.json").read_text())
    rows = scene["rows"]
    assert list(rows) == ["no-edits", "joint", "csd", "in2n", "distill", "csd-async", "paper-update"]
    assert all(r["s_per_iteration"] > 0 and r["peak_rss_mib"] > 0 for r in rows.values())
    assert rows["no-edits"]["views_edited"] == 0 and rows["csd"]["updates"] == 2  # 2 steps, one update each
    assert rows["csd"]["views_edited"] == 2 * rows["csd"]["batch"] and rows["in2n"]["views_edited"] == 2
    assert rows["paper-update"]["batch"] == 6 and rows["paper-update"]["views_edited"] == 6  # all 6 cameras
    assert rows["csd"]["s_per_edited_view"] > 0 and scene["overrides"] == {"edit.steps": 2, "in2n_ddim_steps": 2}
    est = scene["estimates"]
    assert est["paper_schedule_s"] == pytest.approx(15000 * rows["no-edits"]["s_per_iteration"]
                                                    + 8 * rows["paper-update"]["update_s"])
    assert rows["joint"]["updates"] == 1 and rows["joint"]["views_edited"] == 6  # one round of every view
    assert 0 < rows["joint"]["round_render_s"] and 0 < rows["joint"]["round_edit_s"]
    assert rows["joint"]["round_render_s"] + rows["joint"]["round_edit_s"] <= rows["joint"]["update_s"] + 1e-6
    assert est["joint_schedule_s"] == pytest.approx(est["joint_rounds"] * (
        rows["joint"]["update_s"] + est["joint_fit_steps"] * rows["no-edits"]["s_per_iteration"]))
    assert est["async_speedup"] == pytest.approx(rows["csd"]["s_per_iteration"] / rows["csd-async"]["s_per_iteration"])
    goals = json.loads((tmp_path / "goals.json").read_text())["goals"]
    assert len(goals) == 6 and goals[0]["met"] is None  # the dry run has no N = 16 step: no figure, not "met"
    assert goals[3]["value"] is None  # csd-edit-tiny is not the csd-edit-small of the memory goal
    check_joint_edit(json.loads((tmp_path / "joint_edit.json").read_text()), goals)


def check_joint_edit(joint: dict, goals: list) -> None:
    """gpu.sh's quick joint_edit (6 views, 2 pretrain, 2 CSD and 2 fit steps): every stage timed, every view edited
    in every round, the stages add up to the whole edit, and the goals have its two rows without a figure."""
    from csd_nerfstudio.config import csd_edit_fast

    assert joint["complete"] and joint["model"] == "tiny" and joint["method"] == "csd-edit-tiny"
    assert joint["rounds"] == csd_edit_fast.config.pipeline.joint.rounds  # csd-edit-fast's rounds
    assert (joint["pretrain_steps"], joint["csd_steps"], joint["fit_steps"]) == (2, 2, 2)  # the dry run's
    rounds = joint["rounds_detail"]
    assert joint["training_views"] == joint["views"] == 6 and len(rounds) == joint["rounds"]
    assert joint["views_edited"] == [joint["views"]] * joint["rounds"] == [r["views_edited"] for r in rounds]
    for r in rounds:
        assert r["render_s"] >= 0 and r["edit_s"] > 0 and r["fit_s"] > 0 and r["fit_steps"] == joint["fit_steps"]
        assert r["render_s"] + r["edit_s"] <= r["round_s"] + 1e-6  # the round's own clock inside ours
    stages = joint["stages"]
    assert set(stages) == {"render_s", "edit_s", "fit_s", "final_save_s"} and min(stages.values()) > 0
    for stage in ("render_s", "edit_s", "fit_s"):
        assert stages[stage] == pytest.approx(sum(r[stage] for r in rounds))
    assert joint["whole_edit_s"] > 0
    assert sum(stages.values()) == pytest.approx(joint["whole_edit_s"], rel=0.01, abs=0.05)
    # the base and the edit are the training run (train_measured's own clock); the setup is outside both
    assert 0 < joint["pretrain_s"] and 0 < joint["setup_s"]
    assert joint["pretrain_s"] + joint["whole_edit_s"] == pytest.approx(joint["training_s"], rel=0.01, abs=0.05)
    assert joint["peak"]["peak_rss_mib"] > 0 and "cuda_max_allocated_mib" not in joint["peak"]  # CPU: RSS
    rows = {g["goal"]: g for g in goals if g["source"] == "joint_edit"}
    assert set(rows) == {"whole joint edit, >= 40 views (s)", "joint edit peak memory (GB)"}
    assert all(g["value"] is None and g["met"] is None for g in rows.values())  # tiny, 6 views: not the goals' case


def test_goals_are_judged_from_the_json_and_missing_figures_are_not_met(tmp_path):
    from benchmarks.goals import check

    def write(name, payload):
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))

    write("step", {"rows": [{"n": 8, "overhead": 1.2}, {"n": 16, "overhead": 1.02}]})
    write("official_loop", {"rows": [{"n": 8, "speedup": 2.4}]})
    write("scene3d", {"method": "csd-edit-small", "estimates": {"paper_schedule_s": 1400.0},
                      "rows": {"csd": {"batch": 4, "cuda_max_allocated_mib": 8000.0}}})
    got = {r["source"] + ":" + r["target"]: (r["value"], r["met"]) for r in check(tmp_path)}
    assert got["step:<= 1.03"] == (1.02, True)
    assert got["official_loop:>= 2.5x"] == (2.4, False)
    assert got["scene3d:<= 600 s"] == (1400.0, False)
    assert got["scene3d:<= 12 GB"][1] is True and got["scene3d:<= 12 GB"][0] == pytest.approx(8000 * 2**20 / 1e9)
    (tmp_path / "step.json").unlink()
    assert check(tmp_path)[0]["met"] is None and check(tmp_path)[0]["value"] is None
    assert [r["met"] for r in check(tmp_path) if r["source"] == "joint_edit"] == [None, None]  # no joint_edit.json

    joint = {"model": "full", "complete": True, "rounds": 2, "views": 40, "training_views": 40,
             "views_edited": [40, 40], "whole_edit_s": 250.0,
             "peak": {"cuda_max_allocated_mib": 8000.0, "peak_rss_mib": 5000.0}}

    def judged(**changes):
        write("joint_edit", {**joint, **changes})
        return [(r["value"], r["met"]) for r in check(tmp_path) if r["source"] == "joint_edit"]

    assert judged() == [(250.0, True), (pytest.approx(8000 * 2**20 / 1e9), True)]
    assert judged(whole_edit_s=301.0, peak={"cuda_max_allocated_mib": 12000.0}) == [
        (301.0, False), (pytest.approx(12000 * 2**20 / 1e9), False)]
    assert judged(peak={"peak_rss_mib": 5000.0}) == [(250.0, True), (None, None)]  # CPU: no CUDA figure
    for case in (dict(model="tiny"), dict(complete=False), dict(views=36, training_views=36, views_edited=[36, 36]),
                 dict(views_edited=[40]), dict(views_edited=[40, 39]), dict(training_views=44, views=44)):
        assert judged(**case) == [(None, None), (None, None)], case  # not the goals' case: no figure


def test_gpu_script_rejects_unknown_flags(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path), "--fast"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "got '--fast'" in proc.stderr


def test_step_benchmark_warps_resample_every_pair():
    from benchmarks.step import shifted_warps

    warps = shifted_warps(3, 8)
    grid, mask = warps.pairs(0)
    assert grid.shape == (3, 8, 8, 2) and 0 < float(mask[1].mean()) <= 1
    frac = ((grid[1] + 1) * 4 - 0.5).frac().abs()  # a sub-pixel shift: sample points fall between pixel centres
    assert float(frac.max()) > 0.01
