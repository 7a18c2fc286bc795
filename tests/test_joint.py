"""The joint schedule (--pipeline.schedule joint): every chosen view edited together once per round, after the
pretraining and never before; rounds fall in noise; max_batch chunks change nothing; progress that names the
views and an ETA; resume between rounds; a plain nerfacto checkpoint as the base."""

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from conftest import shared_data

try:
    import nerfstudio  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("nerfstudio is not installed (pip install 'csd-edit[nerfstudio]')", allow_module_level=True)

from csd_nerfstudio.benchmark import tiny_config  # noqa: E402
from csd_nerfstudio.joint import JointConfig, JointProgress, round_due, round_plan, spread_views  # noqa: E402
from csd_nerfstudio.scenes import write_downscaled_scene  # noqa: E402
from csd_nerfstudio.updates import EditJob, csd_update  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The face scene at 32 px, 9 frames, all training views."""
    return write_downscaled_scene(shared_data("face"), tmp_path_factory.mktemp("face32j"), max_side=32, every=8)


def joint_config(scene, out, iterations, pretrain=2, **joint):
    cfg = tiny_config(scene, out, iterations=iterations, pretrain_steps=pretrain, schedule="joint",
                      edit={"steps": 3}, **{f"joint.{k}": v for k, v in {"fit_steps": 3, **joint}.items()})
    cfg.set_timestamp()
    return cfg


def trained(cfg, monkeypatch=None, record=None):
    from csd_nerfstudio.pipeline import CSDPipeline

    if record is not None:
        original = CSDPipeline._joint_round

        def spy(self, step):
            before = [self.images.get(i).clone() for i in range(len(self.images))]
            original(self, step)
            changed = [i for i in range(len(self.images)) if not torch.equal(before[i], self.images.get(i))]
            record.append((step, changed))

        monkeypatch.setattr(CSDPipeline, "_joint_round", spy)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer


# ------------------------------------------------------------------------------------------- pure parts
def test_spread_views_are_distinct_spread_and_deterministic():
    """Cameras on a circle looking at its centre, in order: 4 of 16 spread views are a quarter turn apart."""
    angles = torch.arange(16) * (2 * torch.pi / 16)
    c2w = torch.zeros(16, 3, 4)
    for i, a in enumerate(angles):
        centre = torch.tensor([torch.cos(a), torch.sin(a), 0.0]) * 3
        back = centre / centre.norm()  # OpenGL cameras look down −z: +z points away from the target
        up = torch.tensor([0.0, 0.0, 1.0])
        right = torch.linalg.cross(up, back)
        c2w[i] = torch.stack([right, up, back, centre], dim=1)
    views = spread_views(c2w, 4)
    assert views == spread_views(c2w, 4) and len(set(views)) == 4
    gaps = sorted((b - a) % 16 for a, b in zip(views, views[1:] + views[:1]))
    assert gaps == [4, 4, 4, 4], views
    assert spread_views(c2w, None) == list(range(16)) == spread_views(c2w, 40)


def test_rounds_start_from_the_photos_then_the_renders_with_less_noise():
    joint = JointConfig(rounds=3, carry=1.0)
    plans = [round_plan(joint, 20, 500, r) for r in range(3)]
    assert plans == [(500, 0.0), (375, 1.0), (250, 1.0)]
    assert round_plan(JointConfig(rounds=2, last_t_max=100, carry=0.5), 20, 400, 1) == (100, 0.5)
    assert round_plan(JointConfig(rounds=2, last_t_max=5), 20, 400, 1) == (20, 1.0)  # never below t_min
    due = [s for s in range(0, 30) if round_due(JointConfig(rounds=2, fit_steps=10), s, 5, 0 if s < 6 else
                                                (1 if s < 16 else 2), None if s < 6 else (5 if s < 16 else 15))]
    assert due[:1] == [5] and 15 in due and all(s >= 5 for s in due)
    with pytest.raises(ValueError, match=r"--pipeline\.joint\.fit-steps: expected a positive integer, got 0"):
        JointConfig(fit_steps=0)
    with pytest.raises(ValueError, match=r"--pipeline\.joint\.carry: expected a number in \[0, 1\], got 2"):
        JointConfig(carry=2)


def test_progress_names_the_views_and_an_eta_of_the_edit(monkeypatch):
    monkeypatch.setattr(JointProgress, "step_seconds", None)
    said, shown = [], []
    progress = JointProgress(0, 2, views=30, steps=20, say=said.append, show=shown.append)
    for k in range(1, 31):
        progress.rendered(k)
    for s in range(20):
        progress.stepped(s)
    progress.finished()
    # no CSD step timed yet in this process: the ETA covers the renders and names the steps to follow
    assert "rendering views 1/30, renders ETA 0:" in shown[0] and "then 20 CSD steps" in shown[0]
    assert "rendering views 30/30, renders ETA 0:00, then 20 CSD steps" in shown[29]
    assert "editing views 1–30/30 together, CSD step 20/20, ETA 0:00" in shown[-2]
    assert "CSD step 1/20, ETA 0:" in shown[30]
    assert shown[-1].startswith("joint round 1/2: 30 views edited together in")
    assert 16 <= len(said) <= 24  # a console line at each tenth of each phase, not one per view or step
    assert all(line.startswith("csd-edit: joint round 1/2") for line in said)
    second = JointProgress(1, 2, views=30, steps=20, say=said.append, show=shown.append)
    second.rendered(1)
    assert "rendering views 1/30, ETA 0:" in shown[-1]  # the first round's step time makes an ETA
    photos = JointProgress(0, 2, views=30, steps=20, say=said.append, show=shown.append)
    photos.from_photos()  # a round that edits the photos renders nothing, and says so
    assert "joint round 1/2: starts from the photos (30 views, nothing to render), ETA 0:" in shown[-1]
    assert photos.render_seconds < 1.0 and said[-1] == f"csd-edit: {shown[-1]}"


def test_max_batch_chunks_give_the_same_joint_edit(scene):
    """N = 9 views edited together with the UNet in chunks of 4 rows and in one batch: the same edit."""
    from csd2d import IP2PGuidance
    from csd_nerfstudio.pipeline import SceneEditConfig
    from PIL import Image
    import numpy as np

    g = IP2PGuidance.from_pretrained("embedded")
    photos = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((32, 32)))).permute(2, 0, 1)
                          for p in sorted((scene / "images").glob("*.png"))]).float() / 255
    job = EditJob(0, list(range(len(photos))), photos, photos, [(32, 32)] * len(photos))
    emb, src = g.encode_prompt(["recolor it"]), g.encode_prompt([""])
    out = {}
    for max_batch in (None, 4):
        cfg = SceneEditConfig(steps=3, lr=0.3, max_batch=max_batch)
        out[max_batch] = csd_update(g, job, cfg, emb, src, torch.Generator().manual_seed(0), carry=0.0)
    assert (out[None] - photos).abs().mean() > 0.01  # it edited
    torch.testing.assert_close(out[4], out[None], atol=2e-4, rtol=0)


# ------------------------------------------------------------------------------------------- in a run
@pytest.mark.slow
def test_each_round_edits_every_view_once_after_the_pretraining(scene, tmp_path, monkeypatch):
    import csd_nerfstudio.pipeline as pipeline_module

    rounds, renders = [], []
    render_view = pipeline_module.render_view

    def counted(model, camera, index, **kwargs):
        renders.append((len(rounds), index))
        return render_view(model, camera, index, **kwargs)

    monkeypatch.setattr(pipeline_module, "render_view", counted)
    cfg = joint_config(scene, tmp_path, iterations=2 + 2 * 3, rounds=2)
    trainer = trained(cfg, monkeypatch, rounds)
    pipe = trainer.pipeline
    n = len(pipe.images)
    assert [step for step, _ in rounds] == [2, 5]  # at the end of the pretraining, then fit_steps later
    assert all(changed == list(range(n)) for _, changed in rounds)
    # the first round edits the photos and renders nothing; the second starts from every view's render
    assert renders == [(1, i) for i in range(n)]
    assert pipe.round_seconds[0]["render"] < pipe.round_seconds[1]["render"]
    assert pipe.edited_views == [list(range(n))] * 2 and pipe.updates == 2
    assert "joint round 2/2: 9 views edited together" in pipe.progress.lines[-1]
    assert "joint round 2/2" in pipe.status_text()


@pytest.mark.slow
def test_joint_views_k_edits_those_views_and_no_others(scene, tmp_path, monkeypatch):
    """Only the K spread views change, and each holds what the joint CSD edit of the K made of it."""
    import csd_nerfstudio.pipeline as pipeline_module

    edits = []

    def recorded(*args, **kwargs):
        edits.append(csd_update(*args, **kwargs))
        return edits[-1]

    monkeypatch.setattr(pipeline_module, "csd_update", recorded)
    rounds = []
    cfg = joint_config(scene, tmp_path, iterations=2 + 3, rounds=1, views=3)
    trainer = trained(cfg, monkeypatch, rounds)
    c2w = trainer.pipeline.datamanager.train_dataset.cameras.camera_to_worlds
    chosen = spread_views(c2w, 3)
    assert [changed for _, changed in rounds] == [chosen] and len(edits) == 1 and len(edits[0]) == 3
    images = trainer.pipeline.images
    for i in range(len(images)):
        assert torch.equal(images.get(i), images.original(i)) == (i not in chosen)
    for k, i in enumerate(chosen):  # 32 px views, edited at 32 px: the edit itself, to 8 bits
        torch.testing.assert_close(images.get(i)[..., :3], edits[0][k].permute(1, 2, 0), atol=1 / 255 + 1e-6, rtol=0)


@pytest.mark.slow
def test_a_resumed_joint_run_goes_on_with_the_next_round(scene, tmp_path, monkeypatch):
    """Stopped after round 1 of 2: the checkpoint holds the round, and the resumed run makes round 2 fit_steps after
    round 1, not at once and not round 1 again."""
    first = trained(joint_config(scene, tmp_path / "a", iterations=2 + 2, rounds=2))  # steps 0-3: round 1 at 2
    assert first.pipeline.updates == 1
    ckpt_dir = first.checkpoint_dir
    rounds = []
    cfg = joint_config(scene, tmp_path / "b", iterations=4, rounds=2)
    cfg.load_dir = ckpt_dir
    second = trained(cfg, monkeypatch, rounds)  # steps 4-7
    assert [step for step, _ in rounds] == [5]
    assert second.pipeline.updates == 2 and second.pipeline.last_update_step == 5


@pytest.mark.slow
def test_load_dir_of_a_plain_nerfacto_checkpoint_is_edited_at_once(scene, tmp_path, monkeypatch):
    """The user's usual first step: `ns-train nerfacto`, then csd-edit --load-dir. The base here is nerfstudio's
    nerfacto method config, offline (LPIPS off: csd-edit's model class, which nerfacto's checkpoint keys match)."""
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    from csd_nerfstudio.models import CSDNerfactoModelConfig

    tiny = tiny_config(scene, tmp_path, iterations=1)
    nerfacto = method_configs["nerfacto"]
    dm = dataclasses.replace(tiny.pipeline.datamanager, dataparser=NerfstudioDataParserConfig(data=scene))
    model = CSDNerfactoModelConfig(**{f.name: getattr(tiny.pipeline.model, f.name)
                                      for f in dataclasses.fields(tiny.pipeline.model) if f.name != "_target"})
    base = dataclasses.replace(
        nerfacto, output_dir=tmp_path / "nerfacto", vis="tensorboard", max_num_iterations=20, mixed_precision=False,
        steps_per_save=19, steps_per_eval_batch=10**6, steps_per_eval_image=10**6, steps_per_eval_all_images=10**6,
        machine=dataclasses.replace(nerfacto.machine, device_type="cpu"),
        pipeline=VanillaPipelineConfig(datamanager=dm, model=model))
    assert type(base) is TrainerConfig
    base.set_timestamp()
    base_trainer = base.setup(local_rank=0, world_size=1)
    base_trainer.setup()
    base_trainer.train()
    state = torch.load(sorted(base_trainer.checkpoint_dir.glob("*.ckpt"))[-1], map_location="cpu")["pipeline"]
    assert not any(k.startswith("_csd.") for k in state)  # a plain nerfstudio checkpoint
    rounds = []
    cfg = joint_config(scene, tmp_path / "edit", iterations=3, pretrain=1500, rounds=1)
    cfg.load_dir = base_trainer.checkpoint_dir
    trainer = trained(cfg, monkeypatch, rounds)
    assert [step for step, _ in rounds] == [20]  # the first step after the loaded step 19: no pretraining
    assert rounds[0][1] == list(range(len(trainer.pipeline.images)))
    # ns-train's step table counts to the run's last step (20 + 3), not to max_num_iterations (3): its "% done"
    # stays under 100 and its ETA is not negative.
    from nerfstudio.utils import writer

    assert writer.GLOBAL_BUFFER["max_iter"] == 23
    assert writer.GLOBAL_BUFFER["step"] / writer.GLOBAL_BUFFER["max_iter"] <= 1


def test_joint_needs_the_dataset_mode(scene, tmp_path):
    with pytest.raises(ValueError, match=r"--pipeline\.schedule: joint edits the training views .* got 'distill'"):
        tiny_config(scene, tmp_path, iterations=1, schedule="joint", mode="distill")


def test_joint_arms_of_the_evaluation_share_the_editing_steps(scene, tmp_path):
    """evaluate's joint arms: csd-edit-fast's rounds and normalisation, the arm's steps split over the rounds, and
    the kernel off in joint-independent only; the settings build a valid pipeline."""
    from csd_nerfstudio.config import (FAST_NORMALIZATION, FAST_ROUNDS, csd_edit_fast, csd_edit_tiny_fast,
                                       method_config)
    from csd_nerfstudio.evaluate import PAIRS, EvalArgs, arm_settings, run_eval

    joint, off = arm_settings("joint", 200), arm_settings("joint-independent", 200)
    assert joint["joint.fit_steps"] == 200 // FAST_ROUNDS and joint["edit.normalization"] == FAST_NORMALIZATION
    assert {k: v for k, v in off.items() if k != "edit.coupling"} == joint and off["edit.coupling"] is False
    pipe = method_config("csd-edit-tiny", scene, tmp_path, 200, joint).pipeline
    assert (pipe.schedule, pipe.joint.rounds, pipe.edit.normalization) == ("joint", FAST_ROUNDS, FAST_NORMALIZATION)
    # The joint arm is csd-edit-tiny-fast's edit (the coarse mix, the detail through depth warps); joint-whole is
    # csd-edit-fast's (the whole score, unaligned); joint-unaligned is joint with each view keeping its detail.
    tiny_fast, fast = csd_edit_tiny_fast.config.pipeline.edit, csd_edit_fast.config.pipeline.edit
    mix = ("share_grid", "bandwidth_scale", "align")
    assert [getattr(pipe.edit, k) for k in mix] == [getattr(tiny_fast, k) for k in mix]
    assert tiny_fast.share_grid is not None and tiny_fast.align == "depth"
    assert fast.share_grid is None and fast.bandwidth_scale == 1.0 and fast.align == "none"
    whole = method_config("csd-edit-tiny", scene, tmp_path, 200, arm_settings("joint-whole", 200)).pipeline.edit
    assert [getattr(whole, k) for k in mix] == [getattr(fast, k) for k in mix]
    unaligned = method_config("csd-edit-tiny", scene, tmp_path, 200, arm_settings("joint-unaligned", 200)).pipeline
    assert unaligned.edit.align == "none" and {**arm_settings("joint-unaligned", 200), "edit.align": "depth"} == joint
    assert ("joint", "joint-unaligned") in PAIRS and ("joint-whole-aligned", "joint-whole") in PAIRS
    with pytest.raises(ValueError, match=r"--arms: .* got \['joint-aligned'\]; joint-aligned is now joint"):
        run_eval(EvalArgs(data=scene, output=tmp_path / "eval", arms=["joint-aligned"]))
    assert csd_edit_fast.config.pipeline.joint.rounds == FAST_ROUNDS
    assert ("joint", "joint-independent") in PAIRS and ("joint", "in2n") in PAIRS and ("joint", "joint-whole") in PAIRS


@pytest.mark.slow
def test_ctrl_c_during_a_joint_round_gives_it_up_and_saves(scene, tmp_path, monkeypatch):
    """A stop asked in the middle of a round's CSD steps (what Ctrl-C does: CSDTrainer._ask_stop) ends the round at
    the next step instead of after all of them; nothing of it is written back, and the checkpoint says no round is
    done, so a resumed run makes it again."""
    import signal

    stepped, steps_seen = JointProgress.stepped, []

    def stop_at_step_1(self, step):
        steps_seen.append(step)
        if step == 1:
            trainer._ask_stop(signal.SIGINT, None)
        stepped(self, step)

    monkeypatch.setattr(JointProgress, "stepped", stop_at_step_1)
    cfg = joint_config(scene, tmp_path, iterations=2 + 3, rounds=1)
    cfg.pipeline.edit.steps = 6
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    with pytest.raises(KeyboardInterrupt):  # in process; under ns-train it exits 130
        trainer.train()
    pipe = trainer.pipeline
    assert steps_seen == [0, 1] and pipe.updates == 0 and pipe.edited_views == []
    assert all(torch.equal(pipe.images.get(i), pipe.images.original(i)) for i in range(len(pipe.images)))
    (ckpt,) = sorted(trainer.checkpoint_dir.glob("step-*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["pipeline"]
    import json

    assert json.loads(bytes(state["_csd.meta"].tolist()).decode())["updates"] == 0



def _recording_training_images(monkeypatch, record):
    """Record, at each training step, the images the step trains on (after the pipeline's own edits and ramp)."""
    from nerfstudio.pipelines.base_pipeline import VanillaPipeline

    original = VanillaPipeline.get_train_loss_dict

    def spy(self, step):
        record[step] = [self.images.get(i).clone() for i in range(len(self.images))]
        return original(self, step)

    monkeypatch.setattr(VanillaPipeline, "get_train_loss_dict", spy)


@pytest.mark.slow
def test_a_round_s_edits_reach_the_training_images_over_the_ramp(scene, tmp_path, monkeypatch):
    """joint.ramp 1 with 4 fit steps: the round's 4 steps train on photo + k/4 · (edit − photo), k = 1…4, to 8
    bits; the edit itself from the fourth on, and it is what the run ends with."""
    seen = {}
    _recording_training_images(monkeypatch, seen)
    trainer = trained(joint_config(scene, tmp_path, iterations=2 + 4, rounds=1, fit_steps=4, ramp=1.0))
    pipe = trainer.pipeline
    assert pipe.config.joint.ramp_steps == 4 and pipe.ramp is None
    photos = [pipe.images.original(i) for i in range(len(pipe.images))]
    edits = [pipe.images.get(i) for i in range(len(pipe.images))]
    assert all((e - p).abs().max() > 0.05 for e, p in zip(edits, photos))  # the edit moved every view
    assert all(torch.equal(seen[1][i], photos[i]) for i in range(len(photos)))  # pretraining: the photos
    for k, step in enumerate(range(2, 6), 1):
        for i in range(len(photos)):
            torch.testing.assert_close(seen[step][i], torch.lerp(photos[i], edits[i], k / 4),
                                       atol=1 / 255 + 1e-6, rtol=0)


@pytest.mark.slow
def test_a_run_stopped_during_a_ramp_resumes_the_same_blend(scene, tmp_path, monkeypatch):
    """Stopped halfway through a round's ramp: the checkpoint's views and OUTPUT/edited hold the round's edits (not
    the blend), and the resumed run trains on the blend's next steps and ends on the same edits as a run that was
    never stopped."""
    whole = trained(joint_config(scene, tmp_path / "whole", iterations=2 + 4, rounds=1, fit_steps=4, ramp=1.0))
    edits = [whole.pipeline.images.get(i) for i in range(len(whole.pipeline.images))]
    first = trained(joint_config(scene, tmp_path / "a", iterations=2 + 2, rounds=1, fit_steps=4, ramp=1.0))
    pipe = first.pipeline
    assert pipe.ramp is not None and pipe.ramp.share(3) == 0.5
    for i, out in enumerate(pipe.edited_images()):  # the product is the edit, not the blend
        torch.testing.assert_close(out[..., :3].float() / 255, edits[i], atol=1 / 255 + 1e-6, rtol=0)
    (ckpt,) = sorted(first.checkpoint_dir.glob("step-*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["pipeline"]
    photos = [pipe.images.original(i) for i in range(len(pipe.images))]
    for i in range(len(photos)):
        torch.testing.assert_close(state[f"_csd.view.{i}"].float() / 255, edits[i], atol=1 / 255 + 1e-6, rtol=0)
        assert torch.equal(state[f"_csd.ramp.{i}"].float() / 255, photos[i])
    seen = {}
    _recording_training_images(monkeypatch, seen)
    cfg = joint_config(scene, tmp_path / "b", iterations=2, rounds=1, fit_steps=4, ramp=1.0)
    cfg.load_dir = first.checkpoint_dir
    second = trained(cfg)  # steps 4-5
    assert sorted(seen) == [4, 5]
    for k, step in ((3, 4), (4, 5)):
        for i in range(len(photos)):
            torch.testing.assert_close(seen[step][i], torch.lerp(photos[i], edits[i], k / 4),
                                       atol=2 / 255 + 1e-6, rtol=0)
    assert second.pipeline.ramp is None and second.pipeline.updates == 1
    for i in range(len(photos)):
        torch.testing.assert_close(second.pipeline.images.get(i), edits[i], atol=1 / 255 + 1e-6, rtol=0)
