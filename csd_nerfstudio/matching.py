"""The 3D evaluation's two guards: arms compared at a matched edit strength, and arms that lost the image.

- **Matched strength** (``python -m csd_nerfstudio.evaluate --match-strength REF``): every other arm's strength
  knob (:func:`strength_knob`) is searched on the first seed until its edit strength is within
  :data:`csd2d.compare.STRENGTH_TOLERANCE` of arm REF's, with :func:`csd2d.compare.match_learning_rate` (secant
  steps on log strength against log knob); all seeds then run at the value found (:func:`match_arm`). An arm
  whose mean strength over the seeds is not within the tolerance of REF's is *unmatched*, and says why.
- **Collapsed**: a render set that kept too little of the photos' structure (:func:`collapse_metrics`). A black
  or flat scene has no colour map to disagree about, so it scores as perfectly consistent; the evaluation reports
  it as collapsed instead and leaves it out of the ratios.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from csd2d.compare import STRENGTH_TOLERANCE, match_learning_rate
from csd2d.metrics import affine_colour_map, apply_colour_map
from csd2d.tiny.edits import LUMA

__all__ = ["STRUCTURE_FLOOR", "CONTRAST_FLOOR", "LR_KNOB", "IN2N_KNOB", "KNOB_RANGE", "structure_r2", "luma_contrast",
           "collapse_metrics", "strength_knob", "match_arm"]

# ------------------------------------------------------------------------------------------------ collapsed
STRUCTURE_FLOOR = 0.45
"""A render set is collapsed when the mean over views of :func:`structure_r2` is below this. Our measurement (face
scene at 64 px, 33 views, csd-edit-tiny, a base fitted for 1,500 steps, 200 editing steps, seed 0): renders that
kept the face score 0.65–0.95 (the unedited scene 0.95; ``recolor it`` csd 0.88, in2n 0.84; ``make it night``
in2n 0.83 and independent 0.65 at luma drops of 80 % and 87 %), the black one 0.23 (``make it night`` csd, luma
drop 99.6 %, which today's table ranked 3.3× more consistent than in2n at a "structure" of 43 dB). The floor sits
between the two groups."""
CONTRAST_FLOOR = 0.1
"""...and also when the mean over views of :func:`luma_contrast` is below this (a backstop for a flat render whose
little variation still follows the photo). The same measurement: kept renders 0.32–1.0 (night independent 0.32,
night in2n 0.36), the black one 0.046."""


def structure_r2(views: Float[Tensor, "V 3 H W"], photos: Float[Tensor, "V 3 H W"]) -> Float[Tensor, "V"]:
    """Per view, the share of the render's variance that its photo explains through the view's affine colour map
    (:func:`csd2d.metrics.affine_colour_map`, the map ``structure_psnr`` uses):
    ``1 − |v − map(p)|² / |v − v̄|²``.
    A recolour or a darkening keeps it near 1; a flat render (no variance) scores 0, where ``structure_psnr`` gives
    it a perfect fit."""
    out = []
    for p, v in zip(photos, views):
        mapped = apply_colour_map(p, affine_colour_map(p, v))
        total = (v - v.mean(dim=(1, 2), keepdim=True)).pow(2).sum()
        residual = (v - mapped).pow(2).sum()
        out.append(torch.clamp(1 - residual / total, min=0.0) if total > 1e-8 * v.numel() else torch.tensor(0.0))
    return torch.stack(out)


def luma_contrast(views: Float[Tensor, "V 3 H W"], photos: Float[Tensor, "V 3 H W"]) -> Float[Tensor, "V"]:
    """Per view, the standard deviation of the render's luma (Rec. 601) over its photo's."""
    luma = lambda x: torch.einsum("c,vchw->vhw", LUMA.to(x), x.float()).flatten(1)
    return luma(views).std(dim=1) / luma(photos).std(dim=1).clamp_min(1e-8)


def collapse_metrics(views: Float[Tensor, "V 3 H W"], photos: Float[Tensor, "V 3 H W"]) -> Dict:
    """``structure_r2`` and ``contrast`` (means over views) and ``collapsed``: either below its floor
    (:data:`STRUCTURE_FLOOR`, :data:`CONTRAST_FLOOR`)."""
    r2, contrast = float(structure_r2(views, photos).mean()), float(luma_contrast(views, photos).mean())
    return {"structure_r2": r2, "contrast": contrast,
            "collapsed": bool(r2 < STRUCTURE_FLOOR or contrast < CONTRAST_FLOOR)}


# ------------------------------------------------------------------------------------------------ matching
LR_KNOB = "edit.lr"
"""The strength knob of the csd-type updates (csd, independent, and any arm that is not in2n's): the learning
rate of the score distillation steps. Strength rises with it (csd-edit-tiny's ``TINY_LR`` measurement)."""
IN2N_KNOB = "edit.guidance_scale"
"""The in2n update's strength knob: the text guidance scale s_T, the control IN2N itself offers (it has no
learning rate). Our measurement (4 face views at 64 px, the embedded model, 4 chained in2n updates, each from the
previous one's output): the strength rises with s_T over a wide range, ``make it night`` luma drop 0.48 / 0.76 /
0.87 / 0.93 / 0.95 and ``recolor it`` 35° / 118° / 153° / 150° / 141° at s_T 1 / 2.5 / 5 / 7.5 / 12, while the
image guidance s_I moves it the other way over a narrower range (night 0.94 / 0.93 / 0.80 / 0.67 at s_I 0.75 /
1.5 / 3 / 6), and ``in2n_noise_range`` is a pair (no single value to search). The rise is not monotone: the hue
shift peaks near s_T 6 (face at 64 px, the in2n arm's 200 editing steps, deterministic fits: 157° at 6.1, 139° at
7.5), which :func:`csd2d.compare.match_learning_rate` handles by stepping past the peak and then bracketing."""


KNOB_RANGE = 4.0
"""How far the search may move an arm's knob from its setting: within ``start / KNOB_RANGE`` to
``start × KNOB_RANGE`` (``--match-range``). Our choice, from what the search did without a bound: on face at 64 px
with 'make it night' (csd-edit-tiny without appearance embeddings), the in2n arm's every try turned the scene
black, its strength never came near the joint arm's, and the search raised the text guidance from IN2N's 7.5 to
159, where no user would set it. Within 4× the knob still spans what the matched arms needed (lr 0.1 → 0.17 for
iterative csd; IN2N's guidance 7.5 → 6.1 or 7.5 on 'recolor it'), and an arm that needs more is reported
unmatched at the bound rather than compared at a setting nobody runs."""


def strength_knob(pipeline) -> str:
    """The setting searched for an arm whose pipeline config is ``pipeline``: :data:`IN2N_KNOB` for the in2n
    update, :data:`LR_KNOB` otherwise (decided by the setting, not by the arm's name)."""
    return IN2N_KNOB if getattr(pipeline, "update", "csd") == "in2n" else LR_KNOB


def knob_value(pipeline, key: str) -> float:
    """The current value of setting ``key`` (``edit.lr`` → ``pipeline.edit.lr``)."""
    value = pipeline
    for part in key.split("."):
        value = getattr(value, part)
    return float(value)


def _relative_error(strength: float, target: float) -> float:
    return abs(strength / target - 1) if target > 0 else math.inf


def match_arm(measure: Callable[[float, int], Dict], knob: str, start: float, target: float,
              reference_mean: float, seeds: Sequence[int], tries: int,
              tolerance: float = STRENGTH_TOLERANCE, key: str = "strength", knob_range: float = KNOB_RANGE) -> Dict:
    """Search ``knob`` from ``start`` on ``seeds[0]`` until ``measure(value, seed)[key]`` (the renders'
    ``strength``, or the edits' ``edits_strength``; the record calls either one ``strength``) is within
    ``tolerance`` of ``target`` (REF's strength on that seed), in at most ``tries`` runs
    (:func:`csd2d.compare.match_learning_rate`) and within ``knob_range`` of ``start`` either way
    (:data:`KNOB_RANGE`); then run the other seeds at the value found.

    ``measure`` returns the metrics of one run (``{"error": ...}`` for a run that failed, which ends the search).
    Returns ``{"knob", "start", "bounds", "value", "target", "reference_strength", "tries": [{"value", "strength"}…],
    "strength", "strength_error", "matched", "reason", "seeds": {seed: metrics}}``: ``matched`` when the mean
    strength over the seeds is within ``tolerance`` of ``reference_mean`` (REF's mean); ``reason`` says why not."""
    if not (isinstance(knob_range, (int, float)) and knob_range >= 1):
        raise ValueError(f"knob_range: expected a factor >= 1, got {knob_range!r}")
    if not start > 0:
        raise ValueError(f"{knob}: expected a positive value to search from, got {start!r}")
    record: List[Dict] = []
    bounds = (float(f"{start / knob_range:.4g}"), float(f"{start * knob_range:.4g}"))
    result: Dict = {"knob": knob, "start": start, "bounds": list(bounds), "target": target,
                    "reference_strength": reference_mean, "tolerance": tolerance, "tries": record, "seeds": {},
                    "matched": False}
    if not (target > 0 and reference_mean > 0):
        result.update(value=start, reason=f"the reference arm has no strength to match: it failed or did not edit "
                                          f"(strength {target:.4g} on seed {seeds[0]}, mean {reference_mean:.4g})")
        return result

    def run(value: float):
        value = float(f"{value:.4g}")  # the value that names the run's folder
        metrics = measure(value, seeds[0])
        strength = metrics.get(key)
        record.append({"value": value, "strength": strength, **({"error": True} if "error" in metrics else {})})
        return (strength if strength is not None else 0.0), (value, metrics)

    _, _, (value, first), _ = match_learning_rate(run, target, start, tolerance, tries,
                                                  bounds=(min(bounds[0], start), max(bounds[1], start)))
    result["value"] = value
    result["seeds"][seeds[0]] = first
    for seed in seeds[1:]:
        result["seeds"][seed] = measure(value, seed)
    ok = [m[key] for m in result["seeds"].values() if "error" not in m]
    if not ok:
        result["reason"] = "every run at the value found failed"
        return result
    result["strength"] = float(sum(ok) / len(ok))
    result["strength_error"] = _relative_error(result["strength"], reference_mean)
    result["matched"] = result["strength_error"] <= tolerance
    if not result["matched"]:
        best = min(record, key=lambda t: _relative_error(t["strength"] or 0.0, target))
        missed = _relative_error(best["strength"] or 0.0, target) > tolerance  # no try came within tolerance
        pinned = [t for t in record if t["value"] in bounds]
        why = ("a run failed" if any("error" in t for t in record) else
               "the edit did not happen" if all((t["strength"] or 0) <= 0 for t in record) else
               f"{knob} reached its bound {pinned[-1]['value']:.4g} ({knob_range:g}× its start {start:.4g}, "
               f"--match-range) at strength {pinned[-1]['strength']:.4g} against {target:.4g}"
               if pinned and missed else
               f"{len(record)} tries reached {best['strength']:.4g} at best against {target:.4g}"
               if missed else
               f"the other seeds' strength moved the mean to {result['strength']:.4g}")
        result["reason"] = f"strength not within {tolerance:.0%} of the reference's: {why}"
    return result
