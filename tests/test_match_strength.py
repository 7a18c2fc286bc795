"""The 3D evaluation at a matched strength (``--match-strength``) and its collapsed-arm guard."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_evaluate3d import _face_photos
from test_nerfstudio import sphere_scene  # noqa: F401 (fixture)

from csd2d.compare import STRENGTH_TOLERANCE
from csd2d.tiny.edits import hue_rotate
from csd_nerfstudio import evaluate, matching
from csd_nerfstudio.evaluate import view_metrics


def _quantised(images: torch.Tensor) -> torch.Tensor:
    """What the evaluation measures: renders stored as 8-bit (renders.npz)."""
    return evaluate._float(evaluate._to_uint8(images))


# ------------------------------------------------------------------------------------------- collapsed
def test_black_and_flat_renders_are_collapsed_and_kept_edits_are_not():
    photos = _face_photos(6)
    base = photos * torch.linspace(0.9, 1.0, 6)[:, None, None, None]  # a base scene with its own fit residual
    tint = torch.tensor([0.6, 0.7, 1.0])[None, :, None, None]
    kept = {"recolour": hue_rotate(photos, torch.full((6,), math.radians(80))),
            "night (darkened to 25 %, tinted)": photos * 0.25 * tint}
    lost = {"black": photos * 0.003, "flat grey": torch.full_like(photos, 0.4)}
    metrics = {name: view_metrics(_quantised(v), photos, _quantised(v), "make it night", base)
               for name, v in {**kept, **lost}.items()}
    for name in kept:
        assert not metrics[name]["collapsed"], (name, metrics[name])
        assert metrics[name]["structure_r2"] > matching.STRUCTURE_FLOOR + 0.2, (name, metrics[name])
    for name in lost:
        assert metrics[name]["collapsed"], (name, metrics[name])
    # Why the guard is needed: by today's figures the black scene is the most consistent edit of all and keeps
    # the structure better than a recolour (a constant image is an exact affine map of any photo).
    black, night = metrics["black"], metrics["night (darkened to 25 %, tinted)"]
    assert black["edit_inconsistency"] < 0.5 * night["edit_inconsistency"]
    assert black["structure_psnr"] > metrics["recolour"]["structure_psnr"]
    assert black["strength"] > 0.99


# ------------------------------------------------------------------------------------------- the search
def _luma_drop(lr: float, gain: float, cap: float = 1.0) -> float:
    """A darkening's strength as a function of the learning rate: saturating, as the 3D updates' are."""
    return cap * (1 - math.exp(-gain * lr))


def test_search_lands_within_tolerance_or_says_unmatched():
    calls = []

    def measure(gain, cap=1.0):
        def run(lr, seed):
            calls.append((lr, seed))
            return {"strength": _luma_drop(lr, gain, cap) * (1 + 0.01 * seed)}
        return run

    target = _luma_drop(0.1, 8.0)  # the reference arm: 0.55 at lr 0.1
    found = matching.match_arm(measure(20.0), "edit.lr", 0.1, target, target, [0, 1, 2], tries=4)
    assert found["matched"] and abs(found["strength"] / target - 1) <= STRENGTH_TOLERANCE
    assert 1 < len(found["tries"]) <= 4 and found["tries"][0] == {"value": 0.1, "strength": _luma_drop(0.1, 20.0)}
    assert found["value"] == found["tries"][-1]["value"] < 0.06  # weaker lr for the stronger arm
    assert [s for _, s in calls] == [0] * len(found["tries"]) + [1, 2]  # searched on seed 0, then the others
    # An arm that cannot get weak enough (its strength never falls below 0.9): unmatched, with the reason.
    calls.clear()
    stuck = matching.match_arm(lambda lr, seed: {"strength": 0.9 + 0.05 * _luma_drop(lr, 8.0)}, "edit.lr", 0.1,
                               0.5, 0.5, [0, 1], tries=3, knob_range=100.0)
    assert not stuck["matched"] and len(stuck["tries"]) == 3 and "3 tries reached" in stuck["reason"]
    # A run that fails ends the search and the arm is unmatched.
    failed = matching.match_arm(lambda lr, seed: {"error": "boom"}, "edit.lr", 0.1, 0.5, 0.5, [0], tries=4)
    assert not failed["matched"] and failed["tries"] == [{"value": 0.1, "strength": None, "error": True}]
    # Matching the edits (key): the search follows that figure and ignores the renders' strength.
    on_edits = matching.match_arm(lambda lr, seed: {"strength": 0.9, "edits_strength": _luma_drop(lr, 20.0)},
                                  "edit.lr", 0.1, target, target, [0], tries=4, key="edits_strength")
    assert on_edits["matched"] and on_edits["value"] == found["value"]


def test_the_search_stays_within_its_range_and_says_so():
    """An arm that needs its knob far past its setting (IN2N at night went from guidance 7.5 to 159 unbounded) is
    searched only within --match-range of it, and reported unmatched at the bound."""
    tried = []

    def weak(value, seed):  # strength ∝ knob: 0.05 at 7.5, so the target 0.5 needs 75 (10× the start)
        tried.append(value)
        return {"strength": value / 150}

    found = matching.match_arm(weak, "edit.guidance_scale", 7.5, 0.5, 0.5, [0, 1], tries=5)
    assert found["bounds"] == [1.875, 30.0] and max(tried) == 30.0, tried
    assert not found["matched"] and "reached its bound 30" in found["reason"] and "--match-range" in found["reason"]
    assert len(found["tries"]) < 5  # pinned at the bound, the search stops instead of running it again
    assert found["value"] == 30.0 and tried[-2:] == [30.0, 30.0]  # then the other seed at the bound
    tried.clear()
    wide = matching.match_arm(weak, "edit.guidance_scale", 7.5, 0.5, 0.5, [0], tries=5, knob_range=20.0)
    assert wide["matched"] and abs(wide["value"] - 75) < 7.5, wide
    # A strong arm is bounded below as well.
    strong = matching.match_arm(lambda v, seed: {"strength": 100 * v}, "edit.lr", 0.1, 0.5, 0.5, [0], tries=5)
    assert min(t["value"] for t in strong["tries"]) == 0.025 and not strong["matched"], strong
    with pytest.raises(ValueError, match="knob_range"):
        matching.match_arm(weak, "edit.lr", 0.1, 0.5, 0.5, [0], tries=2, knob_range=0.5)


def test_the_knob_follows_the_update_not_the_arm_name():
    from csd_nerfstudio.config import csd_edit_tiny

    pipeline = csd_edit_tiny.config.pipeline
    assert matching.strength_knob(pipeline) == "edit.lr"
    in2n = type(pipeline)(**{**pipeline.__dict__, "update": "in2n"})
    assert matching.strength_knob(in2n) == "edit.guidance_scale"
    assert matching.knob_value(in2n, "edit.guidance_scale") == pipeline.edit.guidance_scale


# ------------------------------------------------------------------------------------------- run_eval
def _fake_arm(calls):
    """A stand-in for evaluate.run_arm: the scene is 6 face photos, and an arm's renders are the base darkened
    by a strength that is a function of its knob (edit.lr, or the in2n arm's text guidance), spread across views
    more when the kernel is off; carry 1 turns the scene black. Writes what run_arm writes."""
    photos = _face_photos(6)
    base = photos * 0.95

    def run_arm(spec):
        calls.append(spec["dir"])
        s = spec["settings"]
        if spec["arm"] == "base":
            views = base
        elif s.get("carry") == 1.0:
            views = base * 0.002
        else:
            drop = (_luma_drop(s["edit.guidance_scale"], 0.2) if s.get("update") == "in2n" else
                    _luma_drop(s.get("edit.lr", 0.1), 8.0 if s.get("edit.coupling", True) else 14.0))
            spread = 0.02 if s.get("edit.coupling", True) and s.get("update") != "in2n" else 0.1
            views = base * (1 - drop * (1 + spread * torch.linspace(-1, 1, 6) + 0.005 * spec["seed"]))[
                :, None, None, None]
        u8 = evaluate._to_uint8(views.clamp(0, 1))
        out = Path(spec["dir"])
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "renders.npz", views=u8, photos=evaluate._to_uint8(photos), train=u8, path=u8[:2])
        (out / "cost.json").write_text(json.dumps({"seconds": 0.1, "checkpoint_dir": str(out)}))

    return run_arm


def test_evaluate_matches_strength_and_reports_collapsed_arms(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "run_arm", _fake_arm(calls))
    monkeypatch.setitem(evaluate.ARMS, "black", {"update": "csd", "carry": 1.0})
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    out = tmp_path / "eval"
    args = evaluate.EvalArgs(data=scene, output=out, prompt="make it night",
                             arms=["in2n", "csd", "independent", "black"], seeds=[0, 1], pretrain_steps=1,
                             iterations=1, isolate=False, match_strength="csd")
    report = evaluate.run_eval(args)
    arms = report["arms"]
    assert list(arms) == ["in2n", "csd", "independent", "black"]  # --arms order kept; csd ran first
    assert arms["csd"]["match"] == {"reference": True}
    ref = arms["csd"]["mean"]["strength"]
    for arm, knob in (("in2n", "edit.guidance_scale"), ("independent", "edit.lr")):
        match = arms[arm]["match"]
        assert match["knob"] == knob and match["matched"], match
        assert abs(arms[arm]["mean"]["strength"] / ref - 1) <= STRENGTH_TOLERANCE
        assert match["tries"][0]["value"] == match["start"] and match["value"] != match["start"]
        for t in match["tries"]:  # every try kept under --output/arms
            assert (out / "arms" / f"{arm}-seed0-{knob}={t['value']:g}" / "renders.npz").exists()
    # The black arm cannot be matched (its strength does not move) and is collapsed: never compared.
    black = arms["black"]
    assert black["collapsed"] and not black["match"]["matched"] and len(black["match"]["tries"]) == 4
    assert not arms["csd"]["collapsed"] and not arms["independent"]["collapsed"]
    assert set(report["excluded_from_ratios"]) == {"black"}
    assert report["ratios"]["edit_inconsistency csd / independent"] < 1  # at a matched strength
    md = (out / "report.md").read_text()
    assert "| black | **collapsed**, **unmatched** |" in md and "collapsed)" in md
    assert f"matched (edit.guidance_scale {arms['in2n']['match']['value']:.4g})" in md
    assert "independent: edit.lr 0.1 → " in md and "unmatched**, strength not within 10%" in md
    saved = json.loads((out / "report.json").read_text())
    assert saved["arms"]["in2n"]["match"]["tries"] == arms["in2n"]["match"]["tries"]
    # --reuse: every finished try and seed is kept, nothing runs again.
    calls.clear()
    again = evaluate.run_eval(dataclasses.replace(args, reuse=True))
    assert calls == [] and again["arms"]["in2n"]["match"] == arms["in2n"]["match"]
    # ...but an arm whose settings changed under the same name (as joint's did) runs again, and only it.
    monkeypatch.setitem(evaluate.ARMS, "black", {"update": "csd", "carry": 0.9})
    evaluate.run_eval(dataclasses.replace(args, reuse=True))
    assert calls and all("/black-seed" in str(c) for c in calls), calls


def test_black_arm_is_no_longer_ranked_consistent(tmp_path, monkeypatch):
    """The real case (``make it night``): independent editing turned every view black and the table ranked it
    the more consistent; now it is collapsed and out of the ratios (no --match-strength: as before otherwise)."""
    monkeypatch.setattr(evaluate, "run_arm", _fake_arm([]))
    monkeypatch.setitem(evaluate.ARMS, "independent", {"update": "csd", "edit.coupling": False, "carry": 1.0})
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    report = evaluate.run_eval(evaluate.EvalArgs(data=scene, output=tmp_path / "eval", prompt="make it night",
                                                 arms=["csd", "independent"], seeds=[0], pretrain_steps=1,
                                                 iterations=1, isolate=False))
    black = report["arms"]["independent"]
    assert black["mean"]["edit_inconsistency"] < report["arms"]["csd"]["mean"]["edit_inconsistency"]
    assert black["collapsed"] and black["mean"]["structure_r2"] < matching.STRUCTURE_FLOOR
    assert not any("independent" in k for k in report["ratios"])
    assert "match" not in report["arms"]["csd"]
    assert "| independent | **collapsed** |" in (tmp_path / "eval" / "report.md").read_text()


# ------------------------------------------------------------------------------------------- bad input
def test_match_strength_must_name_an_arm(tmp_path):
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    args = evaluate.EvalArgs(data=scene, output=tmp_path / "eval", arms=["csd", "in2n"], match_strength="independent")
    with pytest.raises(ValueError) as err:
        evaluate.run_eval(args)
    assert str(err.value) == "--match-strength: expected one of the --arms ['csd', 'in2n'], got 'independent'"
    assert not (tmp_path / "eval").exists()  # refused before anything ran
    assert evaluate.main(["--data", str(scene), "--output", str(tmp_path / "e"), "--arms", "csd",
                          "--match-strength", "in2n"]) == 2
    odd = dataclasses.replace(args, match_strength="csd", match_on="photos")
    with pytest.raises(ValueError, match=r"--match-on: expected one of \['renders', 'edits'\], got 'photos'"):
        evaluate.run_eval(odd)
    narrow = dataclasses.replace(args, match_strength="csd", match_range=0.5)
    with pytest.raises(ValueError, match=r"--match-range: expected a factor >= 1, got 0.5"):
        evaluate.run_eval(narrow)
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_match_strength_end_to_end_on_a_tiny_scene(sphere_scene, tmp_path):  # noqa: F811
    """Real runs (no stand-in): csd as the reference, independent editing searched on edit.lr."""
    out = tmp_path / "eval"
    args = evaluate.EvalArgs(data=sphere_scene, output=out, arms=["csd", "independent"], seeds=[0],
                             pretrain_steps=20, iterations=4, path_frames=2, isolate=False,
                             match_strength="csd", match_tries=2,
                             set=["edit-rate=2", "edit.steps=3", "edit.batch=3"])
    report = evaluate.run_eval(args)
    match = report["arms"]["independent"]["match"]
    assert match["knob"] == "edit.lr" and 1 <= len(match["tries"]) <= 2
    ref = report["arms"]["csd"]["mean"]["strength"]
    got = report["arms"]["independent"]["mean"]["strength"]
    assert match["matched"] == (abs(got / ref - 1) <= STRENGTH_TOLERANCE)
    assert all(t["strength"] > 0 for t in match["tries"])
    md = (out / "report.md").read_text()
    assert ("matched (edit.lr" in md) == match["matched"] and ("**unmatched**" in md) == (not match["matched"])
