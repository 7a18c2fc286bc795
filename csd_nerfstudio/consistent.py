"""The 3D evaluation's floor: a perfectly consistent edit of the reference arm's strength, fitted the same way.

The evaluation's edit inconsistency (:func:`csd_nerfstudio.evaluate.view_metrics`) is never 0 for a real scene:
the fit that follows an edit leaves its own view-by-view residual, larger the darker or stronger the edit. So a
ratio of two arms' inconsistencies says little once both sit near that floor, and a target such as "≤ 0.8× the
kernel-off arm's" may lie below what any edit can score.

``python -m csd_nerfstudio.evaluate --consistent`` measures the floor. For each seed it reruns the reference arm
(``--match-strength REF``, else the first of ``--arms``) from the same base, with the same schedule, fit steps and
machine seed, but with the edit replaced by one affine colour map shared by every view: the mean over views of
the reference arm's own maps, photo → its edits, on that seed (:func:`shared_colour_map`). Every view is then
edited the same way, at close to the reference's strength, and what its renders still score is the metric's floor
at that strength. The report gives each arm's ``edit_inconsistency_excess`` (its edit inconsistency less the
floor's on the same seed, whose fit drew the same rays) and the ratios of the excesses.

Our measurement (face at 64 px and the made textured scene, csd-edit-tiny-fast's joint arm as the reference, one
round, 200 fit steps, seeds 0–2; README, *The metric's floor*): the floor is 0.0019–0.0034 on both scenes for
'recolor it' and 'make it night', a quarter to a seventh of any arm's edit inconsistency, so what the arms leave is
their edits' disagreement, not the fit's, on 'recolor it'. At night the edit itself is no affine map (it crushes
dark pixels to black: a photo luma of 0.3 keeps 2 %, 0.8 keeps 16 %), and the per-view affine metric scores even a
perfectly consistent such edit above 0. ``--consistent-map quadratic`` fits the floor's one map with the squares and
products of r, g, b over every view: on face at night that floor renders at 0.0050 against 0.0021 affine, half of
the arms' 0.0091–0.0093 (README, *The metric's floor*). (A 113° hue rotation of every photo, an earlier probe,
rendered at 0.0082 on another face base: a hue rotation is not an affine colour map once clipped, and its edits
spread 0.0083.)
"""

from __future__ import annotations

from typing import Callable, Dict, Literal, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from csd2d.metrics import affine_colour_map, apply_colour_map, fit_colour_map

__all__ = ["ConsistentMap", "MAP_LABELS", "shared_colour_map", "consistent_edit", "install", "excess", "EXCESS_KEYS"]

EXCESS_KEYS = ("edit_inconsistency", "edit_inconsistency_own")
"""The render metrics the floor is subtracted from (the edits' own spread has no fit in it: the floor's is 0)."""


ConsistentMap = Literal["affine", "quadratic"]
"""The family of the floor's one colour map (``--consistent-map``)."""

MAP_LABELS: Dict[str, str] = {"affine": "mean colour map", "quadratic": "quadratic colour map"}
"""How the report names the floor of each :data:`ConsistentMap`."""


def shared_colour_map(photos: Float[Tensor, "V 3 H W"], edits: Float[Tensor, "V 3 H W"],
                      kind: ConsistentMap = "affine") -> Float[Tensor, "R 3"]:
    """One colour map for every view.

    - ``affine``: the mean over views of each view's affine map photo → edit
      (:func:`csd2d.metrics.affine_colour_map`), ``[4, 3]``.
    - ``quadratic``: one quadratic map (:func:`csd2d.metrics.fit_colour_map`, degree 2) fitted to every view's
      pixels at once, ``[10, 3]``. Pooled rather than a mean of per-view maps: a quadratic fitted to one view's
      colours can swing far outside them, where another view's pixels lie."""
    if photos.shape != edits.shape or photos.ndim != 4 or photos.shape[1] != 3:
        raise ValueError(f"photos, edits: expected two [V, 3, H, W] stacks of one shape, got {tuple(photos.shape)} "
                         f"and {tuple(edits.shape)}")
    if kind == "affine":
        return torch.stack([affine_colour_map(p, e) for p, e in zip(photos, edits)]).mean(0)
    if kind == "quadratic":
        return fit_colour_map(photos.transpose(0, 1), edits.transpose(0, 1), degree=2)
    raise ValueError(f"kind: expected one of {list(MAP_LABELS)}, got {kind!r}")


def consistent_edit(photos: Float[Tensor, "N 3 h w"], colour_map: Float[Tensor, "R 3"]) -> Float[Tensor, "N 3 h w"]:
    """Every photo through the one colour map, clipped to [0, 1] (an edited image)."""
    return torch.stack([apply_colour_map(p, colour_map.to(p)) for p in photos]).clamp(0, 1)


def install(pipeline, colour_map: Float[Tensor, "R 3"]) -> None:
    """Make ``pipeline`` (a :class:`csd_nerfstudio.pipeline.CSDPipeline` in dataset mode) edit every job with
    :func:`consistent_edit` instead of its update; the schedule, the write-back (and the joint ramp) and the fit
    are its own. No UNet runs."""
    if pipeline.config.mode != "dataset":
        raise ValueError(f"--consistent: expected a dataset-mode reference arm (its edits are images a colour map "
                         f"can stand in for), got mode {pipeline.config.mode!r}")
    colour_map = torch.as_tensor(colour_map, dtype=torch.float32)

    def run_job(job, on_step: Optional[Callable[[int], None]] = None) -> Tensor:
        return consistent_edit(job.originals.float(), colour_map)

    pipeline.run_job = run_job


def excess(arm_seeds: Dict, floor_seeds: Dict, key: str = "edit_inconsistency") -> Dict:
    """``{seed: arm's key − the floor's key}`` over the seeds both have (metrics dicts without ``error``)."""
    return {s: m[key] - floor_seeds[s][key] for s, m in arm_seeds.items()
            if "error" not in m and key in m and s in floor_seeds and key in floor_seeds[s]}


def excess_ratio(first: Sequence[float], other: Sequence[float]) -> Optional[float]:
    """Mean excess of ``first`` over mean excess of ``other``; None when ``other``'s is not above the floor (the
    ratio would say nothing)."""
    a, b = sum(first) / max(len(first), 1), sum(other) / max(len(other), 1)
    return a / b if b > 0 else None
