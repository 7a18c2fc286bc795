"""The evaluation's floor (`--consistent`): one colour map shared by every view, standing in for the edit."""

import pytest
import torch

from csd2d.metrics import apply_colour_map
from csd_nerfstudio import consistent


def test_the_shared_colour_map_is_the_mean_of_the_views_maps():
    gen = torch.Generator().manual_seed(0)
    photos = torch.rand(4, 3, 32, 32, generator=gen)
    mean = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.1, 0.2], [0.1, 0.1, 0.5], [0.05, -0.1, 0.2]])
    offsets = torch.randn(4, 4, 3, generator=gen) * 0.2
    offsets -= offsets.mean(0)  # the views' maps disagree, around `mean`
    edits = torch.stack([apply_colour_map(p, mean + d) for p, d in zip(photos, offsets)])
    shared = consistent.shared_colour_map(photos, edits)
    assert torch.allclose(shared, mean, atol=0.015), (shared, mean)  # the ridge biases a little
    assert (shared - (mean + offsets[0])).abs().max() > 0.05  # not any one view's map
    edited = consistent.consistent_edit(photos, shared)
    assert edited.min() >= 0 and edited.max() <= 1
    assert torch.allclose(edited, torch.stack([apply_colour_map(p, shared) for p in photos]).clamp(0, 1))
    with pytest.raises(ValueError, match="photos, edits"):
        consistent.shared_colour_map(photos, edits[:2])


def test_excess_is_taken_seed_by_seed_and_its_ratio_needs_a_baseline_above_the_floor():
    arm = {0: {"edit_inconsistency": 0.012}, 1: {"edit_inconsistency": 0.011}, 2: {"error": "crashed"}}
    floor = {0: {"edit_inconsistency": 0.008}, 1: {"edit_inconsistency": 0.010}, 2: {"edit_inconsistency": 0.009}}
    got = consistent.excess(arm, floor)
    assert set(got) == {0, 1} and got[0] == pytest.approx(0.004) and got[1] == pytest.approx(0.001)
    assert consistent.excess_ratio([0.002, 0.004], [0.004, 0.008]) == pytest.approx(0.5)
    assert consistent.excess_ratio([0.002], [-0.001]) is None  # the baseline is at the floor: no ratio


def test_the_quadratic_floor_follows_an_edit_that_is_no_affine_map():
    """A night-like edit that every view shares but no affine map is (darken by a power curve, as the embedded
    model's night is bent): the quadratic floor reproduces it, the affine floor cannot, and the affine floor's
    stand-in is not the edit a user got."""
    from csd2d.metrics import map_spread, affine_colour_map

    gen = torch.Generator().manual_seed(1)
    photos = torch.rand(5, 3, 16, 16, generator=gen) ** 0.5
    edits = 0.35 * photos ** 2.2  # one curve for every view: a perfectly consistent edit
    errors = {}
    for kind in ("affine", "quadratic"):
        shared = consistent.shared_colour_map(photos, edits, kind)
        assert shared.shape == ((4, 3) if kind == "affine" else (10, 3))
        errors[kind] = float((consistent.consistent_edit(photos, shared) - edits).pow(2).mean().sqrt())
    assert errors["quadratic"] < 0.3 * errors["affine"], errors  # 0.0045 against 0.020
    assert errors["quadratic"] < 0.006, errors
    # The per-view affine metric scores this consistent edit above 0: each view's histogram bends its fit.
    pool = photos.permute(1, 0, 2, 3).reshape(3, -1)
    assert map_spread([affine_colour_map(p, e) for p, e in zip(photos, edits)], pool) > 1e-3
    with pytest.raises(ValueError, match="kind: expected one of"):
        consistent.shared_colour_map(photos, edits, "cubic")


def test_a_bad_floor_map_is_named_before_anything_runs(tmp_path):
    from csd_nerfstudio import evaluate

    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    args = evaluate.EvalArgs(data=scene, output=tmp_path / "out", arms=["joint"], consistent=True,
                             consistent_map="cubic")
    with pytest.raises(ValueError, match=r"--consistent-map: expected one of \['affine', 'quadratic'\], got 'cubic'"):
        evaluate.run_eval(args)
    assert not (tmp_path / "out").exists()
