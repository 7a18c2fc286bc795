"""3D evidence: the bounded csd update, the evaluation's metrics, and `python -m csd_nerfstudio.evaluate`."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data
from test_nerfstudio import sphere_scene  # noqa: F401 (fixture)

from csd2d import IP2PGuidance
from csd2d.metrics import affine_colour_map, apply_colour_map
from csd2d.sheets import GUTTER, MIN_VIEW_SIDE
from csd2d.tiny.edits import edit_strength, hue_rotate
from csd_nerfstudio import evaluate
from csd_nerfstudio.config import csd_edit_tiny
from csd_nerfstudio.evaluate import view_metrics
from csd_nerfstudio.updates import EditJob, csd_update


def _face_photos(n: int) -> torch.Tensor:
    paths = sorted((shared_data("face") / "images").glob("*"))[:: 65 // n][:n]
    return torch.stack([
        torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((64, 64), Image.BICUBIC))).permute(2, 0, 1)
        for p in paths
    ]).float() / 255


def _structure_psnr(edited: torch.Tensor, photos: torch.Tensor) -> float:
    return view_metrics(edited, photos, edited, "recolor it")["structure_psnr"]


# ------------------------------------------------------------------------------------------- the bounded update
@pytest.fixture(scope="module")
def embedded():
    return IP2PGuidance.from_pretrained("embedded")


def _chain(g, photos, carry, updates):
    """``updates`` csd updates of csd-edit-tiny, each starting from the previous result (the scene's render)."""
    cfg = csd_edit_tiny.config.pipeline.edit
    text, source = g.encode_prompt(["recolor it"]), g.encode_prompt([""])
    current = photos
    for u in range(updates):
        job = EditJob(u, list(range(len(photos))), current, photos, [tuple(photos.shape[-2:])] * len(photos))
        current = csd_update(g, job, cfg, text, source, torch.Generator().manual_seed(u), carry=carry)
    return current


@pytest.mark.slow
def test_repeated_csd_updates_settle_and_keep_the_scene(embedded):
    """The destroyed scene: updates that each start from the render add up without bound (carry 1). With the
    default carry the edit settles, the face survives, and the hue stays near the instruction's range."""
    photos = _face_photos(2)
    carry = csd_edit_tiny.config.pipeline.carry
    assert 0 < carry < 1
    bounded = _chain(embedded, photos, carry, updates=8)
    unbounded = _chain(embedded, photos, 1.0, updates=8)
    kept, destroyed = _structure_psnr(bounded, photos), _structure_psnr(unbounded, photos)
    hue = edit_strength(bounded, photos, "recolor it")
    assert kept > 22.0, kept
    assert kept > destroyed + 4.0, (kept, destroyed)
    assert 40.0 < hue < 150.0, hue  # the unbounded chain loses the face (structure) first


# ------------------------------------------------------------------------------------------- metrics
def test_view_metrics_rank_consistent_edits_and_catch_destroyed_scenes():
    photos = _face_photos(6)
    same = hue_rotate(photos, torch.full((6,), math.radians(80)))
    signs = torch.tensor([1.0, -1, 1, -1, 1, -1])
    mixed = hue_rotate(photos, signs * math.radians(80))
    blobs = torch.nn.functional.interpolate(torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
                                            size=(64, 64), mode="bilinear")
    m_same, m_mixed = view_metrics(same, photos, same, "recolor it"), view_metrics(mixed, photos, same, "recolor it")
    m_blobs = view_metrics(blobs, photos, blobs, "recolor it")
    assert m_same["inconsistency"] < 0.2 * m_mixed["inconsistency"]
    assert abs(m_same["strength"] - 80) < 15 and abs(m_mixed["strength"] - 80) < 15
    assert m_same["structure_psnr"] > 30 and m_blobs["structure_psnr"] < m_same["structure_psnr"] - 10
    assert m_same["fit_psnr"] > 60 and m_mixed["fit_psnr"] < m_same["fit_psnr"] - 30  # renders vs training images
    # The edit alone: against a base scene that differs from the photos view by view (its fit residual).
    base = photos * torch.linspace(0.8, 1.0, 6)[:, None, None, None]
    on_base = hue_rotate(base, torch.full((6,), math.radians(80)))
    m_base = view_metrics(on_base, photos, on_base, "recolor it", base_views=base)
    mixed_on_base = hue_rotate(base, signs * math.radians(80))
    mixed_base = view_metrics(mixed_on_base, photos, on_base, "recolor it", base)
    assert m_base["edit_inconsistency"] < 0.01 < m_base["inconsistency"]
    assert mixed_base["edit_inconsistency"] > 10 * m_base["edit_inconsistency"]
    # The views' mean tints: the same edit everywhere agrees, tints turned either way do not.
    assert m_base["edit_tint_spread"] < 0.2 * mixed_base["edit_tint_spread"], (m_base, mixed_base)
    # Beyond one edit every view shares: the same edit everywhere scores about 0, turned either way does not.
    assert m_base["edit_disagreement"] < 0.1 * mixed_base["edit_disagreement"], (m_base, mixed_base)
    # The same renders with each view's own appearance embedding, which can hold what the mean hides.
    own = view_metrics(on_base, photos, on_base, "recolor it", base, own_views=mixed_on_base, base_own_views=base)
    assert own["edit_inconsistency"] == m_base["edit_inconsistency"]
    assert own["edit_inconsistency_own"] == pytest.approx(mixed_base["edit_inconsistency"])
    assert own["fit_psnr_own"] < own["fit_psnr"] - 10
    colour_map = affine_colour_map(photos[0], same[0])
    assert torch.allclose(apply_colour_map(photos[0], colour_map), same[0], atol=0.08)
    # The edits before the fit: read from the training images, whatever the renders are.
    agreeing, disagreeing = view_metrics(mixed, photos, same, "recolor it"), view_metrics(same, photos, mixed,
                                                                                          "recolor it")
    assert agreeing["edits_inconsistency"] < 0.2 * disagreeing["edits_inconsistency"]
    assert m_same["edits_tint_spread"] < 0.2 * disagreeing["edits_tint_spread"], m_same  # the edits' tints likewise
    assert m_same["edits_disagreement"] < 0.1 * disagreeing["edits_disagreement"], m_same
    assert agreeing["edits_inconsistency"] == pytest.approx(m_same["inconsistency"])
    # Views a schedule never reached keep their photos as training images.
    assert m_same["views_edited"] == 1.0
    half = view_metrics(same, photos, torch.cat([same[:4], photos[4:]]), "recolor it")
    assert half["views_edited"] == pytest.approx(4 / 6)
    assert abs(agreeing["edits_strength"] - 80) < 15


def test_overrides_parse_and_bad_ones_are_named():
    assert evaluate.parse_overrides(["edit.lr=0.1", "carry=0.5", "edit.coupling=false", "update=in2n"]) == {
        "edit.lr": 0.1, "carry": 0.5, "edit.coupling": False, "update": "in2n"}
    with pytest.raises(ValueError, match="--set: expected KEY=VALUE"):
        evaluate.parse_overrides(["carry"])


def test_a_set_value_that_an_arm_replaces_is_named():
    """An arm is its settings, so they win over --set; the report names every value an arm did not take."""
    settings = {"edit.bandwidth_scale": 16.0, "edit.lr": 0.2, "carry": 1.0}
    lines = evaluate.overridden_settings(["joint", "csd", "csd-carry-1"], settings, iterations=200)
    own = evaluate.ARMS["joint"]["edit.bandwidth_scale"]
    assert lines == [f"--set edit.bandwidth_scale=16.0: arm joint keeps its own edit.bandwidth_scale={own!r} "
                     "(csd_nerfstudio.evaluate.ARMS)"]  # csd-carry-1's carry is 1.0 already: taken
    assert evaluate.overridden_settings(["csd"], settings, iterations=200) == []


# ------------------------------------------------------------------------------------------- the command
@pytest.mark.slow
def test_evaluate_writes_report_pictures_and_survives_a_crashed_arm(sphere_scene, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(evaluate.ARMS, "broken", {"edit.lr": -1.0})
    out = tmp_path / "eval"
    args = evaluate.EvalArgs(data=sphere_scene, output=out, arms=["csd", "broken"], seeds=[0], consistent=True,
                             pretrain_steps=20, iterations=4, path_frames=6,
                             set=["edit-rate=2", "edit.steps=3", "edit.batch=3", "edit.lr=0.1",  # broken keeps −1
                                  "model.use-appearance-embedding=true"])  # csd-edit-tiny fits none
    report = evaluate.run_eval(args)
    saved = json.loads((out / "report.json").read_text())
    assert saved["arms"]["broken"]["seeds"]["0"]["error"].count("lr") >= 1
    assert saved["set_overridden"] == ["--set edit.lr=0.1: arm broken keeps its own edit.lr=-1.0 "
                                       "(csd_nerfstudio.evaluate.ARMS)"]
    assert "**Not applied:** --set edit.lr=0.1: arm broken" in (out / "report.md").read_text()
    metrics = saved["arms"]["csd"]["seeds"]["0"]
    assert metrics["updates"] == 2 and metrics["unet_samples"] > 0 and metrics["strength"] > 0
    assert metrics["peak_rss_mib"] > 100 and "edit_inconsistency" in metrics
    assert metrics["edit_inconsistency_own"] > 0 and metrics["fit_psnr_own"] > 0  # own-embedding renders too
    assert report["arms"]["csd"]["mean"]["fit_psnr"] == metrics["fit_psnr"]
    # --consistent: csd's schedule rerun with one colour map for every view in place of the edit, and no UNet.
    floor = saved["consistent"]
    assert floor["reference"] == "csd" and floor["seeds"]["0"]["unet_samples"] == 0
    assert floor["seeds"]["0"]["updates"] == 2
    shared = torch.tensor(floor["colour_maps"]["0"])
    floor_renders = np.load(out / "arms" / floor["seeds"]["0"]["run"] / "renders.npz")
    photos, train = (torch.from_numpy(floor_renders[k]).permute(0, 3, 1, 2).float() / 255 for k in ("photos", "train"))
    mapped = torch.stack([apply_colour_map(p, shared) for p in photos]).clamp(0, 1)
    edited = (train - photos).abs().amax(dim=(1, 2, 3)) > 0.05
    assert edited.any()
    assert (train[edited] - mapped[edited]).abs().mean() < 2 / 255  # every edited view: the one shared map
    assert metrics["edit_inconsistency_excess"] == pytest.approx(
        metrics["edit_inconsistency"] - floor["seeds"]["0"]["edit_inconsistency"])
    assert "consistent (floor: csd's mean colour map)" in (out / "report.md").read_text()
    gif = Image.open(out / "path.gif")
    view = (gif.width - GUTTER) // 2  # original | csd side by side, each enlarged, under its label
    assert gif.n_frames == 6 and view >= MIN_VIEW_SIDE and gif.height > view
    sheet = Image.open(out / "contact_seed0.png")
    assert sheet.height >= 3 * MIN_VIEW_SIDE  # photos, original scene and the arm
    assert "| csd |" in (out / "report.md").read_text()
    assert not list(out.glob(".*tmp*"))
    # A report written in a temporary folder names the folder it is moved to (csd_nerfstudio.demo does this).
    final = tmp_path / "final"
    evaluate.relocate_report(out, final)
    moved = (out / "report.json").read_text()
    assert str(out) not in moved and str(final) in moved and str(out) not in (out / "report.md").read_text()
    assert json.loads(moved)["arms"]["csd"]["seeds"]["0"]["fit_psnr"] == metrics["fit_psnr"]


def test_demo_report_names_its_final_folder_and_command(tmp_path, monkeypatch):
    """The 3D demo writes into a temporary folder and swaps it in; its report must not point at that folder."""
    from csd_nerfstudio import demo

    def fake_eval(args, command=None):  # the report run_eval writes, without the minutes of fitting
        report = {"command": command, "data": str(args.data), "prompt": args.prompt, "method": args.method,
                  "seeds": args.seeds, "iterations": 1, "settings": {}, "arms": {}, "ratios": {},
                  "base": {"metrics": {"fit_psnr": 20.0}, "checkpoint_dir": str(args.output.resolve() / "base")}}
        evaluate._write_report(args.output, report)
        return report

    monkeypatch.setattr(demo, "run_eval", fake_eval)
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--output", "out/scene", "--arms", "csd"]) == 0
    text = (tmp_path / "out" / "scene" / "report.json").read_text() + (tmp_path / "out/scene/report.md").read_text()
    assert "csd2d-tmp" not in text and "out/scene/data" in text and str(tmp_path / "out/scene/base") in text
    assert json.loads((tmp_path / "out/scene/report.json").read_text())["command"] == (
        "python -m csd_nerfstudio.demo --output out/scene --arms csd")


@pytest.mark.slow
def test_csd_edits_a_scene_more_consistently_than_independent_editing(tmp_path):
    """The paper's 3D claim at a CPU size, across seeds: on the project's textured scene, the edit (unedited
    scene's render → edited render) agrees better across views after CSD's update than after the same update
    with the kernel off, and the scene fits its edited training images better. Two seeds, both must win (with
    seeds 0, 1 and 2 csd's edit inconsistency was 0.011–0.013 against 0.021–0.026, our measurement)."""
    from csd_nerfstudio.scenes import write_textured_scene

    scene = write_textured_scene(tmp_path / "scene", views=12, size=64, seed=0)
    seeds = [0, 1]
    report = evaluate.run_eval(evaluate.EvalArgs(
        data=scene, output=tmp_path / "eval", arms=["csd", "independent"], seeds=seeds, pretrain_steps=200,
        iterations=30, path_frames=2, isolate=False))
    csd, independent = (report["arms"][arm]["seeds"] for arm in ("csd", "independent"))
    wins = [csd[s]["edit_inconsistency"] < independent[s]["edit_inconsistency"] for s in seeds]
    assert all(wins), (csd, independent)
    assert report["ratios"]["edit_inconsistency csd / independent"] < 0.8
    means = {arm: report["arms"][arm]["mean"] for arm in ("csd", "independent")}
    assert means["csd"]["fit_psnr"] > means["independent"]["fit_psnr"]
    assert all(abs(csd[s]["strength"]) > 10 for s in seeds)  # an edit happened


@pytest.mark.slow
def test_joint_edits_views_more_consistently_than_unaligned_or_with_the_kernel_off_at_matched_strength(tmp_path):
    """Issues 20's and 23's direction tests at a CI size, on one base: on the project's textured scene (20 views),
    the joint schedule's renders agree better across views than the same schedule's with each view keeping its own
    detail (joint-unaligned: no depth warps) and than with the kernel off (joint-independent), once both arms' lr
    is searched to the joint arm's render strength; two seeds, all must win, and the edits (the training images
    before the fit) must agree better too. csd-edit-tiny fits no appearance embedding
    (csd_nerfstudio.config.TINY_APPEARANCE_EMBEDDING), so the renders show what the edits disagree about; the fit
    is deterministic on a CPU (csd_nerfstudio.benchmark.train_measured). 20 views, not 12: with 30° between
    cameras the warps share little and aligned and unaligned differed by 0.2–2 %. Our measurement at this size
    (csd-edit-tiny-fast's mix: the channel means everywhere, TINY_FAST_SHARE_GRID, and the detail through the
    warps, TINY_FAST_ALIGN; two threads): renders 0.0200 / 0.0198 at 46° / 45°, against 0.0246 / 0.0228 unaligned
    (0.84×, matched at lr 0.1 on its first try) and 0.0379 / 0.0354 with the kernel off (0.54×, matched at lr 0.056
    on its third); edits 0.028 / 0.027 against 0.031 / 0.031 and 0.052 / 0.047. At 12 views the unaligned coarse
    mix had scored 0.59× the kernel-off arm."""
    from csd_nerfstudio.scenes import write_textured_scene

    scene = write_textured_scene(tmp_path / "scene", views=20, size=64, seed=0)
    seeds = [0, 1]
    report = evaluate.run_eval(evaluate.EvalArgs(
        data=scene, output=tmp_path / "eval", arms=["joint", "joint-unaligned", "joint-independent"], seeds=seeds,
        pretrain_steps=200, iterations=60, path_frames=2, isolate=False, match_strength="joint", match_tries=3))
    joint = report["arms"]["joint"]["seeds"]
    for other, margin in (("joint-unaligned", 0.95), ("joint-independent", 0.9)):
        assert report["arms"][other]["match"]["matched"], report["arms"][other]["match"]
        off = report["arms"][other]["seeds"]
        for s in seeds:
            assert abs(joint[s]["strength"]) > 10, joint[s]  # an edit happened
            assert abs(off[s]["strength"] / joint[s]["strength"] - 1) < 0.1, (other, joint[s], off[s])
            assert joint[s]["edit_inconsistency"] < margin * off[s]["edit_inconsistency"], (other, s, joint[s], off[s])
            assert joint[s]["edits_inconsistency"] < 0.97 * off[s]["edits_inconsistency"], (other, s, joint[s], off[s])
    assert report["ratios"]["edit_inconsistency joint / joint-independent"] < 0.8  # issue 20's target
