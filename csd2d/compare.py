"""The comparison harness: CSD against independent editing on one input, at matched edit strength.

Used by ``csd2d demo``, ``python -m csd2d.evaluate`` and the 3D evaluation. Both arms run through the same
editor call with the same seed; the baseline is ``coupling=False``. Inconsistency metrics come from
:mod:`csd2d.metrics`, edit strength from the model's own instruction semantics
(:func:`csd2d.tiny.edits.edit_strength` for the embedded model).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image

from .config import PanoramaConfig, VideoConfig
from .editor import CSDEditor
from .imaging import pil_to_tensor
from .metrics import colour_map_spread, seam_inconsistency, temporal_inconsistency, window_edit_spread
from .tiny.edits import edit_strength

PANORAMA_METRICS = ("colour_map_spread", "seam_inconsistency", "window_edit_spread")
"""Panorama inconsistency metrics reported (lower is better); colour_map_spread is the primary one."""
VIDEO_METRICS = ("temporal_inconsistency",)

__all__ = ["PANORAMA_METRICS", "VIDEO_METRICS", "STRENGTH_TOLERANCE", "compare_panorama", "compare_video",
           "match_learning_rate", "raw_key"]


def _t(images) -> torch.Tensor:
    return torch.cat([pil_to_tensor(i) for i in images])


STRENGTH_TOLERANCE = 0.1
"""CSD and the baseline count as matched when their edit strengths differ by at most this fraction."""


def _strength_error(strength: float, target: float) -> float:
    """Relative distance of ``strength`` from ``target`` (infinite when the target edit did not happen)."""
    return abs(strength / target - 1) if target > 0 else math.inf


def match_learning_rate(run: Callable[[float], Tuple[float, object]], target: float, scale: float,
                        tolerance: float = STRENGTH_TOLERANCE, tries: int = 4,
                        bounds: Optional[Tuple[float, float]] = None) -> Tuple[float, float, object, int]:
    """Find a learning-rate scale at which ``run(scale) -> (strength, output)`` reaches ``target`` strength
    within ``tolerance`` (relative), by secant steps on ``log strength`` against ``log scale`` (:func:`_next_scale`:
    once runs have landed on both sides of the target, every step stays inside the narrowest bracket).

    Starts at ``scale``; returns ``(scale, strength, output, runs)`` of the closest run. With a non-positive
    target or strength (an edit that did not happen) it stops after the first run. With ``bounds = (lo, hi)``
    every step is clamped into them, and the search stops when its next step is a bound it has already run.
    """
    if bounds is not None and not 0 < bounds[0] <= scale <= bounds[1]:
        raise ValueError(f"bounds: expected 0 < low <= scale ({scale:.4g}) <= high, got {bounds!r}")
    best = None
    history: List[Tuple[float, float]] = []
    for attempt in range(tries):
        strength, output = run(scale)
        error = _strength_error(strength, target)
        if best is None or error < best[0]:
            best = (error, scale, strength, output)
        if error <= tolerance or target <= 0 or strength <= 0:
            break
        history.append((math.log(scale), math.log(strength)))
        scale = math.exp(_next_scale(history, math.log(target)))
        if bounds is not None:
            scale = min(max(scale, bounds[0]), bounds[1])
            if any(abs(math.log(scale) - x) < 1e-9 for x, _ in history):
                break  # pinned at a bound that has been run: another run there tells nothing new
    _, scale, strength, output = best
    return scale, strength, output, attempt + 1


def _next_scale(history: List[Tuple[float, float]], log_target: float) -> float:
    """The next log scale to try, from the runs so far (``(log scale, log strength)``, in order).

    - **A bracket** (runs on both sides of the target): the narrowest one, a run below and a run above with the
      closest scales. The step interpolates log strength linearly between them, so it lands inside the bracket
      and the next bracket is narrower: the search closes in on a crossing even where the strength is not
      monotone in the knob, or is flat on a plateau beyond the target.
    - **No bracket:** a secant step from the last run, with the slope of the last two runs (clamped to
      [0.2, 3]), or 1 (strength ∝ scale) after one run. Where that slope is not positive (strength fell as the knob
      rose), the knob is taken to rise with strength over the wider range, and the step goes a factor 2 past the
      tried values on the target's side.

    Our measurement: IN2N's text guidance on face at 64 px (``recolor it``, deterministic fits) gave 139° at 7.5
    and 157° at 6.1, where 4 chained updates gave 35° at 1 and 118° at 2.5. On a curve through those points, the
    secant alone (slope clamped, no bracket) stepped from 6.1 to 1.2 and needed 6 runs to reach 113° from 7.5;
    this search needs 5 (``tests/test_metrics.py``).
    """
    below = [p for p in history if p[1] < log_target]
    above = [p for p in history if p[1] > log_target]
    if below and above:
        (xa, ya), (xb, yb) = min(((a, b) for a in below for b in above), key=lambda ab: abs(ab[0][0] - ab[1][0]))
        return xa + (log_target - ya) * (xb - xa) / (yb - ya)
    x1, y1 = history[-1]
    slope = 1.0
    if len(history) >= 2:
        x0, y0 = history[-2]
        if abs(x1 - x0) > 1e-6:
            measured = (y1 - y0) / (x1 - x0)
            if measured <= 0:
                tried = [x for x, _ in history]
                return min(tried) - math.log(2) if above else max(tried) + math.log(2)
            slope = min(max(measured, 0.2), 3.0)
    return x1 + (log_target - y1) / slope


def _compare(edit: Callable[[object], object], as_tensor: Callable[[object], torch.Tensor], source: torch.Tensor,
             reference: torch.Tensor, metrics: Dict[str, Callable], instruction: str, config, csd_lr_scale: float,
             match_strength: bool, arms: Optional[Dict[str, Dict[str, Any]]] = None) -> Tuple[Dict, Dict]:
    """Run the independent baseline (``coupling=False``) and CSD (same seed) through ``edit(config)`` and measure
    both: every inconsistency metric ``metrics[name](edited, reference)`` against the codec ``reference``, and as
    ``<name>_raw`` against ``source``; edit strength against ``source``. ``entry["codec_floor"]`` holds the
    metrics of the reference itself (an edit that changes nothing) against ``source``.

    CSD's learning rate is ``csd_lr_scale`` × the baseline's, adjusted by :func:`match_learning_rate` when
    ``match_strength``. ``arms`` names further CSD arms by the settings they change (``{"csd_aligned": {"align":
    "flow"}}``); each is run and matched the same way, starting from CSD's scale, and kept as ``entry[name]`` with
    ``entry["arms"][name]`` holding its scale, runs, matching and ratios over the baseline and over CSD."""

    def run(arm):
        t0 = time.time()
        out = edit(arm)
        edited = as_tensor(out)
        values = {name: fn(edited, reference) for name, fn in metrics.items()}
        values.update({raw_key(name): fn(edited, source) for name, fn in metrics.items()})
        values["edit_strength"] = edit_strength(edited, source, instruction)
        values["seconds"] = round(time.time() - t0, 2)
        return values, out

    entry: Dict = {"codec_floor": {name: fn(reference, source) for name, fn in metrics.items()}}
    outs: Dict = {}
    entry["baseline"], outs["baseline"] = run(dataclasses.replace(config, coupling=False))
    target = entry["baseline"]["edit_strength"]

    def run_matched(settings: Dict[str, Any], start: float):
        def run_csd(scale: float):
            values, out = run(dataclasses.replace(config, coupling=True, lr=config.lr * scale, **settings))
            return values["edit_strength"], (values, out)

        if match_strength:
            scale, _, (values, out), runs = match_learning_rate(run_csd, target, start)
        else:
            scale, runs = start, 1
            _, (values, out) = run_csd(scale)
        matched = _strength_error(values["edit_strength"], target) <= STRENGTH_TOLERANCE
        return values, out, {"lr_scale": round(scale, 4), "runs": runs, "matched_strength": matched}

    entry["csd"], outs["csd"], info = run_matched({}, csd_lr_scale)
    start = info["lr_scale"] if match_strength else csd_lr_scale
    keys = tuple(metrics)
    ratio_keys = keys + tuple(raw_key(k) for k in keys) + ("edit_strength",)
    entry["ratio_csd_over_baseline"] = _ratios(entry["csd"], entry["baseline"], ratio_keys)
    entry["csd_lr_scale"], entry["csd_runs"], entry["matched_strength"] = (
        info["lr_scale"], info["runs"], info["matched_strength"])
    if arms:
        entry["arms"] = {}
        for name, settings in arms.items():
            entry[name], outs[name], info = run_matched(settings, start)
            info["ratio_over_baseline"] = _ratios(entry[name], entry["baseline"], ratio_keys)
            info["ratio_over_csd"] = _ratios(entry[name], entry["csd"], ratio_keys)
            entry["arms"][name] = info
    return entry, outs


def raw_key(metric: str) -> str:
    """Name under which ``metric`` measured against the unedited input itself (codec loss included) is kept."""
    return f"{metric}_raw"


def compare_panorama(editor: CSDEditor, image: Image.Image, instruction: str, config: PanoramaConfig,
                     progress: bool = False, csd_lr_scale: float = 1.0, match_strength: bool = False,
                     arms: Optional[Dict[str, Dict[str, Any]]] = None) -> Tuple[Dict, Dict[str, Image.Image]]:
    """Edit ``image`` with the independent baseline and with CSD (same seed); return metrics and outputs.

    Inconsistency metrics compare the output with :meth:`CSDEditor.reconstruct` of the input (what an edit
    that changes nothing outputs), so the VAE's own loss, identical in both arms, is not counted; the same
    metrics against the input itself are kept as ``<metric>_raw``, and the reconstruction's raw metrics as
    ``entry["codec_floor"]``. Edit strength is measured against the input.

    With ``match_strength`` CSD's learning rate is searched (from ``csd_lr_scale`` × the baseline's) until its
    edit strength is within :data:`STRENGTH_TOLERANCE` of the baseline's; ``entry["matched_strength"]`` says
    whether that was reached, ``entry["csd_lr_scale"]`` which scale was used. ``arms``: further CSD arms named
    by the settings they change, e.g. ``{"csd_aligned": {"align": "offsets"}}`` (see ``_compare``).
    """
    f = editor.guidance.vae_scale_factor
    win, stride = config.window * f, config.stride * f
    metrics = {  # the order of PANORAMA_METRICS
        "colour_map_spread": lambda e, s: colour_map_spread(e, s, win, stride),
        "seam_inconsistency": lambda e, s: seam_inconsistency(e, s, win, stride),
        "window_edit_spread": lambda e, s: window_edit_spread(e, s, win, stride),
    }
    return _compare(lambda arm: editor.edit_panorama(image, instruction, config=arm, progress=progress),
                    lambda out: _t([out])[0], _t([image])[0], _t(editor.reconstruct([image], config))[0], metrics,
                    instruction, config, csd_lr_scale, match_strength, arms)


def compare_video(editor: CSDEditor, frames: List[Image.Image], instruction: str, config: VideoConfig, shift: int,
                  progress: bool = False, csd_lr_scale: float = 1.0, match_strength: bool = False,
                  arms: Optional[Dict[str, Dict[str, Any]]] = None) -> Tuple[Dict, Dict[str, List[Image.Image]]]:
    """Edit a panning video with the baseline and with CSD (same seed); return metrics and outputs
    (codec reference, ``_raw`` metrics, ``match_strength`` and ``arms`` as in :func:`compare_panorama`)."""
    metrics = {"temporal_inconsistency": lambda e, s: temporal_inconsistency(e, s, shift)}
    return _compare(lambda arm: editor.edit_video(frames, instruction, config=arm, progress=progress), _t,
                    _t(frames), _t(editor.reconstruct(frames, config)), metrics, instruction, config,
                    csd_lr_scale, match_strength, arms)


def _ratios(arm: Dict, reference: Dict, keys) -> Dict[str, float]:
    return {k: arm[k] / max(reference[k], 1e-8) for k in keys}


