"""A controlled 3D comparison: CSD's dataset update against IN2N's update and independent editing.

::

    python -m csd_nerfstudio.evaluate --data SCENE --prompt "recolor it" --model embedded \\
        --arms csd in2n independent --seeds 0 1 2 --output DIR [--load-dir BASE] [--method csd-edit-tiny] \\
        [--match-strength csd [--match-tries 4]]

One base scene is fitted once to the photos (or taken from ``--load-dir``); every arm starts from that checkpoint
and edits for ``--iterations`` steps. Each arm runs in its own process: a crashed arm is reported and the others
still land, and each arm's peak memory is its own. For each arm the script renders every training camera and a
smooth camera path through them, then writes:

- ``report.json`` and ``report.md``: the metrics per arm and seed, their means, each arm's status (collapsed;
  matched or unmatched) and the ratios of CSD to the baselines that are neither (written atomically);
- ``path.gif``: the camera path side by side (original scene | in2n | independent | csd | other arms);
- ``contact_seed{S}.png``: training views (columns) of the photos, the original scene and every arm (rows).

Metrics (:func:`view_metrics`; renders and photos at the edit resolution, in [0, 1]):

- **inconsistency**: the cross-view spread of the edit's colour map. For each training view fit the affine
  colour map photo → render (:func:`csd2d.metrics.affine_colour_map`); apply every view's map to the same pixels
  (all photos) and take the RMS deviation from their mean (:func:`csd2d.metrics.map_spread`). Content-independent,
  like the panorama's colour-map spread: a scene edited the same way in every view scores ≈ 0.
- **edit_inconsistency**: the same spread for the colour map from the *unedited scene's* render to the edited
  render, view by view: the edit alone. ``inconsistency`` also holds the base scene's own fit residual (its
  renders against the photos), which is common to every arm and, on the face scene at 64 px, larger than what
  the edits add; ``edit_inconsistency`` removes it. The headline ratios use both.
- **edits_inconsistency**, **edits_strength**: the same spread and strength for the arm's *edits*, the final
  training images against the photos, before the scene has fitted them. The edits are a deterministic function
  of the seed, and on a CPU so is the nerfacto fit that follows (:func:`csd_nerfstudio.benchmark.train_measured`;
  before it seeded the run, two runs of one arm and seed edited identical views and rendered them 3.2 of 255
  apart on average, face at 64 px); the fit's view-dependent colour absorbs part of the edits' disagreement.
  This is where the kernel acts: on face 'recolor it' (30 views, one joint round at lr 0.1, seeds 0 and 1) the
  kernel's edits spread 0.0155 against 0.0238 with it off at 113–115°, while their renders' ``edit_inconsistency``
  came out 0.0118 against 0.0109 with the unseeded fit, and 0.0098 / 0.0095 against 0.0124 / 0.0116 (seeds 0 /
  1, 0.80×) from a new base with the deterministic one (our measurement; a perfectly consistent 113° hue rotation
  renders at 0.0082 there, the metric's floor).
- **edit_inconsistency_own**, **fit_psnr_own**: ``edit_inconsistency`` and ``fit_psnr`` for the training views
  rendered each with its *own* appearance embedding (nerfacto; :func:`csd_nerfstudio.views.render_view`'s
  ``own_appearance``). Every other render here, like the viewer and any new camera, uses the mean of the
  embeddings (nerfacto's eval mode). A view's embedding is free to take up what its edit disagrees with the
  other views about, and the mean then hides it. Our measurement, face 'recolor it' at 64 px, one joint round,
  200 fit steps, lr 0.1, seeds 0–2: the kernel-off arm's renders spread 0.0130 with the mean and 0.0227 with
  their own embeddings (its edits 0.0234), the joint arm's 0.0142 and 0.0156 (edits 0.0153), and IN2N's (guidance
  7.5, 128°) 0.0173 and 0.116 (edits 0.123). So the mean-embedding figure measures the scene a user sees, and the
  own-embedding one how much disagreement the scene absorbed to show it. A scene fitted without the embeddings
  from its base on has no such place (csd-edit-tiny's default, ``TINY_APPEARANCE_EMBEDDING``; the renders of both
  kinds are then the same and only ``views`` is written): there the joint arm's renders spread 0.0107 against the
  kernel-off arm's 0.0138 (0.78×, 114° and 115°).
- **edit_inconsistency_excess** (``--consistent``): ``edit_inconsistency`` less the floor's on the same seed, the
  floor being the reference arm rerun with one colour map shared by every view in place of its edit
  (:mod:`csd_nerfstudio.consistent`): what the arm's edits add over a perfectly consistent edit of its strength.
  The report's ``…_excess`` ratios compare arms by it.
- **edit_disagreement**, **edits_disagreement**: what the views disagree on beyond one edit they all share
  (:func:`csd2d.metrics.map_disagreement`): one quadratic colour map is fitted over every view (unedited scene's
  render → render; photo → edit), and each view's affine map of its departure from that shared edit is spread as
  ``edit_inconsistency`` spreads its maps. Each view's map is then its ``edit_inconsistency`` map less the shared
  edit's map on the same view, so the content that bends a non-affine edit (the night's crushed shadows) cancels
  view by view, where ``…_excess`` only subtracts one spread from another. Our measurement (face at 64 px,
  ``make it night``, one joint round, 200 fit steps, seeds 0–2, the kernel-off arm matched at lr 0.1, guided
  radius 8): the consistent floor's renders score 0.0010 here against 0.0049 on ``edit_inconsistency``; joint's
  renders 0.0048 against the kernel-off arm's 0.0062 (0.77×), where ``edit_inconsistency`` gives 0.0083 against
  0.0090 (0.93×).
- **edit_tint_spread**, **edits_tint_spread**: how much the views disagree on the edit's mean tint
  (:func:`csd2d.metrics.tint_spread`: each view's per-channel gain of its mean colour, unedited scene's render →
  render, and photo → edit, normalised to sum 1, RMS over views). A supplement to ``edit_inconsistency``: it is
  blind to where in a view the edit changes, and sees the tint the views disagree on apart from their mottling.
  Our measurement (face at 64 px, ``make it night``, one joint round, 200 fit steps, seeds 0–2, the kernel-off arm
  matched at lr 0.1): joint's renders 0.0099 against the kernel-off arm's 0.0156 (0.64×; edits 0.0104 against
  0.0447), where ``edit_inconsistency`` gives 0.0091 against 0.0093. A perfectly consistent edit of the night's
  shape (``--consistent --consistent-map quadratic``) scores 0.0066 here (0.0034 for one affine map): the night
  crushes the shadows, and each view's colours bend its mean gain.
- **strength**: :func:`csd2d.tiny.edits.edit_strength` of the renders against the photos (hue shift in degrees for
  ``recolor it``, relative luma drop for ``make it night``, mean absolute change otherwise).
- **inconsistency_per_strength**: inconsistency ÷ strength (without ``--match-strength`` the arms are compared
  per unit of strength).
- **matched strength** (``--match-strength REF``): every other arm's strength knob (``edit.lr``; the in2n arm's
  text guidance ``edit.guidance_scale``) is searched on the first seed, at most ``--match-tries`` runs, until its
  strength is within 10 % of REF's; all seeds then run at the value found
  (:func:`csd_nerfstudio.matching.match_arm`). ``report["arms"][arm]["match"]`` holds the knob, the value, every
  try (value → strength) and ``matched`` (the mean over seeds within 10 % of REF's); an unmatched arm is marked so
  and left out of the ratios.
- **structure_r2**, **contrast**, **collapsed**: the share of each render's variance its photo explains through
  the view's colour map, and its luma contrast relative to the photo's (means over views;
  :func:`csd_nerfstudio.matching.collapse_metrics`). An arm below either floor has lost the image (a black or flat
  scene) and is *collapsed*: its inconsistency (a constant image has no colour map to disagree about) and
  ``structure_psnr`` (a constant image is an exact affine map of any photo) are not results, and it is left out of
  the ratios (``report["excluded_from_ratios"]`` says why). An arm is collapsed when any of its seeds is.
- **views_edited**: the share of training views whose final training image differs from its photo (by more than
  ``EDITED_VIEW``, a quarter of one 8-bit step on average). A schedule that never reached a view leaves its photo
  there, and the scene shows the photo's colours from that side: in 200 editing steps on face at 64 px (30 views)
  the iterative arms' 20 updates of 4 neighbouring views left 2–3 views unedited on each seed, and IN2N's 20
  updates of one view left 10 (our measurement, README *What the views disagree on*).
- **fit_psnr**: PSNR of the renders against the arm's own final training images (a scene cannot fit edits that
  disagree).
- **structure_psnr**: PSNR of each render against its photo passed through that view's colour map, i.e. what
  is left after removing the colour edit. Compare it with the original scene's figure: a scene whose content
  was destroyed scores far lower, except a black or flat one (see *collapsed*). It measures colour edits
  (recolor, night); for edits that change shapes it only says how far the render is from a recoloured photo.
- **psnr_to_photos**: PSNR of the renders against the photos.
- **clip_***: the paper's CLIP metrics (:func:`csd2d.paper_metrics.evaluate_frames` over the training views in
  camera order) when ``--clip-model`` is given; absent otherwise.
- **cost**: wall seconds of editing, UNet samples evaluated (one three-way guidance of one image counts 3) and
  the arm process's peak memory (RSS, and CUDA max allocated on a GPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence

import numpy as np
import torch
import tyro
from PIL import Image

from csd2d import sheets
from csd2d.io import write_text_atomic

from .benchmark import peak_memory, train_measured
from . import consistent, matching
from .config import (FAST_NORMALIZATION, FAST_ROUNDS, METHODS, TINY_FAST_ALIGN, TINY_FAST_BANDWIDTH_SCALE,
                     TINY_FAST_SHARE_GRID, method_config)

__all__ = ["ARMS", "EvalArgs", "view_metrics", "run_eval"]

_JOINT = {"update": "csd", "schedule": "joint", "joint.rounds": FAST_ROUNDS, "edit.normalization": FAST_NORMALIZATION,
          "edit.share_grid": TINY_FAST_SHARE_GRID, "edit.bandwidth_scale": TINY_FAST_BANDWIDTH_SCALE,
          "edit.align": TINY_FAST_ALIGN}
_WHOLE = {"edit.share_grid": None, "edit.bandwidth_scale": 1.0, "edit.align": "none"}  # the paper's whole score

ALIGNED_BANDWIDTH_SCALE = 16.0
"""The joint-whole-aligned arm's kernel width (csd2d.config.StepConfig.bandwidth_scale). Ours: face at 64 px, 30 views,
joint schedule, 'recolor it', 200 steps: aligned edit inconsistency 0.0124, 0.0119, 0.0109 and 0.0110 at scales 1,
4, 16 and 64 (seed 0, hue 120–124°); unaligned 0.0127, 0.0162 and 0.0186 at 1, 4 and 16. A wide kernel helps
only once the scores it mixes are aligned."""

ARMS: Dict[str, Dict] = {
    "csd": {"update": "csd"},
    "in2n": {"update": "in2n"},
    "independent": {"update": "csd", "edit.coupling": False},
    "csd-random-views": {"update": "csd", "view_selection": "random"},
    "csd-carry-1": {"update": "csd", "carry": 1.0},
    "joint": _JOINT,
    "joint-unaligned": {**_JOINT, "edit.align": "none"},
    "joint-independent": {**_JOINT, "edit.coupling": False},
    "csd-aligned": {"update": "csd", "edit.align": "depth"},
    "joint-whole": {**_JOINT, **_WHOLE},
    "joint-whole-aligned": {**_JOINT, **_WHOLE, "edit.align": "depth", "edit.bandwidth_scale": ALIGNED_BANDWIDTH_SCALE},
}
"""Arms: pipeline settings on top of the method's. ``independent`` is the csd update with the kernel off (the same
views and UNet evaluations); ``csd-random-views`` draws the views at random as the paper's 3D schedule does;
``csd-carry-1`` is the update before it was bounded (each update starts from the render); ``joint`` is
csd-edit-tiny-fast's joint schedule (every training view edited together, csd_nerfstudio.joint; its kernel mixing
the scores' channel means over every view, csd_nerfstudio.config.TINY_FAST_SHARE_GRID, and their detail through
depth warps, TINY_FAST_ALIGN: csd2d.csd.csd_edit_step with share_grid and warps), ``joint-unaligned`` the same
with each view keeping its own detail (``edit.align none``; this was ``joint`` before TINY_FAST_ALIGN) and
``joint-independent`` the same with the kernel off; ``joint-whole`` is joint with the kernel mixing the whole
unaligned score, as the paper and csd-edit-fast do; ``csd-aligned`` is csd with the kernel mixing depth-warped
scores (``edit.align depth``, csd2d.align); ``joint-whole-aligned`` is joint-whole with the whole score warped, at
a wider kernel (:data:`ALIGNED_BANDWIDTH_SCALE`). A joint
arm's rounds share the arm's editing steps (``joint.fit_steps`` = iterations / rounds, see :func:`arm_settings`)."""

PAIRS = (("csd", "in2n"), ("csd", "independent"), ("joint", "in2n"), ("joint", "joint-independent"),
         ("joint", "independent"), ("joint", "csd"), ("joint", "joint-whole"), ("joint-whole", "joint-independent"),
         ("csd-aligned", "csd"), ("joint", "joint-unaligned"), ("joint-whole-aligned", "joint-whole"),
         ("csd-aligned", "independent"), ("joint-unaligned", "joint-independent"),
         ("joint-whole-aligned", "joint-independent"))
"""The ratios the report gives (first / second), where both arms ran and neither is excluded."""

RENAMED = {"joint-aligned": "joint (csd-edit-tiny-fast aligns its detail: TINY_FAST_ALIGN; the old joint is "
                            "joint-unaligned)"}
"""Arm names that an earlier release had, and what runs them now (the unknown-arm error says so)."""


def arm_settings(arm: str, iterations: int) -> Dict:
    """Arm ``arm``'s pipeline settings (ARMS) for ``iterations`` editing steps: a joint arm fits
    ``iterations / rounds`` steps after each round, so that every arm trains the same steps."""
    out = dict(ARMS[arm])
    if out.get("schedule") == "joint" and "joint.fit_steps" not in out:
        out["joint.fit_steps"] = max(1, iterations // out.get("joint.rounds", FAST_ROUNDS))
    return out


def overridden_settings(arms: Sequence[str], settings: Dict, iterations: int) -> List[str]:
    """The ``--set`` values that an arm's own settings (ARMS) replace for that arm, one line each: an arm is defined
    by its settings, so they win, and the report says so rather than let a probe of, say, edit.bandwidth_scale on
    the joint arm silently measure the arm's own value."""
    return [f"--set {key}={value!r}: arm {arm} keeps its own {key}={own[key]!r} (csd_nerfstudio.evaluate.ARMS)"
            for arm in arms for own in [arm_settings(arm, iterations)]
            for key, value in settings.items() if key in own and own[key] != value]


GIF_ORDER = ("in2n", "independent", "csd", "csd-aligned", "joint-independent", "joint-whole", "joint-whole-aligned",
             "joint-unaligned", "joint")


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str]) -> Dict:
    """``["edit.lr=0.1", "edit-rate=10"]`` → ``{"edit.lr": 0.1, "edit_rate": 10}`` (numbers and booleans parsed)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE (e.g. edit.lr=0.1 or carry=0.5), got {item!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())  # flags' dashes are fields' underscores
    return out


# ------------------------------------------------------------------------------------------------ one arm
def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _render_all(pipe, max_side: int, path_frames: int) -> Dict[str, np.ndarray]:
    """Training views, their photos and current training images at the edit resolution, and a camera path."""
    from nerfstudio.cameras.camera_paths import get_interpolated_camera_path

    from .views import has_view_appearance, render_view, resize, view_camera

    cams = pipe.datamanager.train_dataset.cameras
    n = cams.shape[0]
    views, own, photos, train = [], [], [], []
    chunk = pipe.config.render_chunk  # the update renders' bound on memory
    per_view = has_view_appearance(pipe.model)
    pipe.model.eval()
    with torch.no_grad():
        for i in range(n):
            cam = view_camera(cams, i, max_side, pipe.device)
            rgb = render_view(pipe.model, cam, i, chunk=chunk)[None]
            size = tuple(rgb.shape[-2:])
            views.append(rgb.cpu())
            if per_view:
                own.append(render_view(pipe.model, cam, i, chunk=chunk, own_appearance=True)[None].cpu())
            photos.append(resize(pipe.images.original(i).permute(2, 0, 1)[None], size))
            train.append(resize(pipe.images.get(i).permute(2, 0, 1)[None], size))
        steps = max(1, math.ceil(path_frames / max(n - 1, 1)))
        path_cams = get_interpolated_camera_path(cams, steps=steps, order_poses=False)
        pick = np.linspace(0, path_cams.shape[0] - 1, min(path_frames, path_cams.shape[0])).round().astype(int)
        path = [render_view(pipe.model, view_camera(path_cams, int(j), max_side, pipe.device), 0,
                            chunk=chunk)[None].cpu() for j in pick]
    out = {"views": _to_uint8(torch.cat(views)), "photos": _to_uint8(torch.cat(photos)),
           "train": _to_uint8(torch.cat(train)), "path": _to_uint8(torch.cat(path))}
    if per_view:
        out["views_own"] = _to_uint8(torch.cat(own))  # each view with its own appearance embedding
    return out


def _count_unet(guidance, counter: Dict[str, int]) -> None:
    """Add the batch size of every UNet call of ``guidance`` to ``counter["samples"]``."""
    if guidance is None:
        return
    original = guidance.unet.forward

    def forward(sample, *args, **kwargs):
        counter["samples"] += int(sample.shape[0])
        return original(sample, *args, **kwargs)

    guidance.unet.forward = forward


def run_arm(spec: Dict) -> None:
    """Train one arm (or fit the base when ``spec["arm"] == "base"``), render it and write ``renders.npz`` and
    ``cost.json`` into ``spec["dir"]`` (atomically; ``cost.json`` last)."""
    out = Path(spec["dir"])
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(spec["settings"])
    settings["edit.seed"] = spec["seed"]
    if spec["arm"] == "base":
        settings["pretrain_steps"] = spec["iterations"] + 1  # fit only: no edit before the end
    config = method_config(spec["method"], Path(spec["data"]), out / "run", spec["iterations"], settings)
    config.machine = dataclasses.replace(config.machine, seed=spec["seed"])
    if spec.get("load_dir"):
        config.load_dir = Path(spec["load_dir"])
    counter = {"samples": 0}

    def before_train(pipe) -> None:
        _count_unet(pipe.guidance, counter)
        if spec.get("colour_map") is not None:  # the --consistent floor: one colour map stands in for the edit
            consistent.install(pipe, torch.tensor(spec["colour_map"]))

    pipe, cost = train_measured(config, before_train=before_train)
    renders = _render_all(pipe, config.pipeline.render_max_side, spec["path_frames"])
    tmp = out / "renders.tmp.npz"
    np.savez_compressed(tmp, **renders)
    tmp.replace(out / "renders.npz")
    cost.update(iterations=spec["iterations"], unet_samples=counter["samples"], updates=len(pipe.edited_views),
                checkpoint_dir=str(config.get_checkpoint_dir()), **peak_memory())  # the renders' peak included
    write_text_atomic(out / "cost.json", json.dumps(cost, indent=1))


# ------------------------------------------------------------------------------------------------ metrics
EDITED_VIEW = 0.25 / 255
"""Mean absolute difference from its photo above which a training view counts as edited (``views_edited``): a
quarter of one 8-bit step. A view no update reached trains on its photo exactly (difference 0; our measurement, the
runs of README *What the views disagree on*), and the least-changed edited view there moved by 12.8 steps."""


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).mean())


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def view_metrics(views: torch.Tensor, photos: torch.Tensor, train: torch.Tensor, prompt: str,
                 base_views: Optional[torch.Tensor] = None, own_views: Optional[torch.Tensor] = None,
                 base_own_views: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """The module's metrics for renders ``views``, ``photos`` and final training images ``train`` (``[V, 3, h, w]``
    in [0, 1], training views in camera order); ``base_views``, the unedited scene's renders, adds
    ``edit_inconsistency``; ``own_views`` and ``base_own_views``, the same renders with each view's own
    appearance embedding, add ``edit_inconsistency_own`` and ``fit_psnr_own``."""
    from csd2d.metrics import affine_colour_map, apply_colour_map, map_disagreement, map_spread, tint_spread
    from csd2d.tiny.edits import edit_strength

    maps = [affine_colour_map(p, v) for p, v in zip(photos, views)]
    pool = photos.permute(1, 0, 2, 3).reshape(3, -1)
    inconsistency = map_spread(maps, pool)
    strength = edit_strength(views, photos, prompt)
    edits_inconsistency = map_spread([affine_colour_map(p, t) for p, t in zip(photos, train)], pool)
    mapped = torch.stack([apply_colour_map(p, m) for p, m in zip(photos, maps)])
    def edit_spread(before: torch.Tensor, after: torch.Tensor) -> float:
        """The spread of the per-view colour maps ``before`` → ``after``, applied to all of ``before``'s pixels."""
        maps = [affine_colour_map(b, a) for b, a in zip(before, after)]
        return map_spread(maps, before.permute(1, 0, 2, 3).reshape(3, -1))

    extra = {}
    if base_views is not None:
        extra["edit_inconsistency"] = edit_spread(base_views, views)
        extra["edit_disagreement"] = map_disagreement(base_views, views)
        extra["edit_tint_spread"] = tint_spread(base_views, views)
        extra["edit_inconsistency_per_strength"] = extra["edit_inconsistency"] / max(abs(strength), 1e-8)
    if own_views is not None and base_own_views is not None:
        extra["edit_inconsistency_own"] = edit_spread(base_own_views, own_views)
        extra["fit_psnr_own"] = _psnr(own_views, train)
    return {
        **extra,
        "inconsistency": inconsistency,
        "strength": strength,
        "inconsistency_per_strength": inconsistency / max(abs(strength), 1e-8),
        "edits_inconsistency": edits_inconsistency,
        "edits_strength": edit_strength(train, photos, prompt),
        "edits_disagreement": map_disagreement(photos, train),
        "views_edited": float((train.float() - photos.float()).abs().mean(dim=(1, 2, 3)).gt(EDITED_VIEW)
                              .float().mean()),
        "edits_tint_spread": tint_spread(photos, train),
        "fit_psnr": _psnr(views, train),
        "structure_psnr": _psnr(views, mapped),
        "psnr_to_photos": _psnr(views, photos),
        **matching.collapse_metrics(views, photos),
    }


def _clip_metrics(clip, views: torch.Tensor, photos: torch.Tensor, captions) -> Dict[str, float]:
    from csd2d.paper_metrics import evaluate_frames

    kwargs = {}
    if captions:
        kwargs = {"source_caption": captions[0], "target_caption": captions[1]}
    result = evaluate_frames(photos, views, clip=clip, **kwargs)
    return {f"clip_{k}" if not k.startswith("clip") else k: v for k, v in result["metrics"].items()}


# ------------------------------------------------------------------------------------------------ report
@dataclasses.dataclass
class EvalArgs:
    """Compare CSD's 3D update with IN2N's update and independent editing on one scene."""

    data: Path
    """The scene (nerfstudio format: transforms.json + images)."""
    output: Path
    """Folder for the report, GIF, contact sheets and each arm's renders."""
    prompt: str = "recolor it"
    """The edit instruction."""
    model: str = "embedded"
    """InstructPix2Pix model (hub id, local folder or "embedded"); --pipeline.diffusion-model."""
    arms: List[str] = dataclasses.field(default_factory=lambda: ["csd", "in2n", "independent"])
    """Arms to run (see ARMS): csd, in2n, independent, csd-random-views, csd-carry-1, joint, joint-independent,
    joint-unaligned, joint-whole, csd-aligned, joint-whole-aligned."""
    seeds: List[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds: each arm runs once per seed (edit.seed and the machine seed)."""
    method: str = "csd-edit-tiny"
    """The ns-train method whose settings every arm uses."""
    load_dir: Optional[Path] = None
    """A fitted base scene (its nerfstudio_models folder); None fits one for --pretrain-steps first."""
    pretrain_steps: Optional[int] = None
    """Steps that fit the base scene; None: the method's --pipeline.pretrain-steps."""
    iterations: Optional[int] = None
    """Editing steps per arm; None: the method's editing steps (max-num-iterations − pretrain-steps)."""
    set: List[str] = dataclasses.field(default_factory=list)
    """Pipeline settings for every arm, KEY=VALUE (e.g. edit.lr=0.1 carry=0.5 edit-rate=10)."""
    path_frames: int = 36
    """Frames of the rendered camera path (the GIF)."""
    clip_model: Optional[str] = None
    """A CLIP model (local folder, hub id or open_clip:ARCH) for the paper's CLIP metrics; None skips them."""
    captions: Optional[List[str]] = None
    """Source and target captions for the CLIP directional similarity (two strings)."""
    reuse: bool = False
    """Keep arms (and the base) that already finished in --output instead of running them again."""
    isolate: bool = True
    """Run each arm in its own process (a crash is reported and the other arms go on; peak memory per arm).
    False runs them in this process: faster to start, for tests; peak memory is then the process's so far."""
    match_strength: Optional[str] = None
    """An arm of --arms: search every other arm's strength knob (edit.lr; in2n: edit.guidance-scale) on the first
    seed until its edit strength is within 10 % of this arm's, then run all seeds there (csd_nerfstudio.matching).
    None compares the arms at their settings, per unit of strength."""
    match_tries: int = 4
    """Runs of the --match-strength search per arm (on the first seed), at most."""
    match_range: float = matching.KNOB_RANGE
    """How far the --match-strength search may move a knob, as a factor either way of the arm's setting; an arm
    that needs more is reported unmatched at the bound (csd_nerfstudio.matching.KNOB_RANGE names the measurement)."""
    match_on: Literal["renders", "edits"] = "renders"
    """What --match-strength matches: the renders' strength (what a user sees), or the edits' (edits_strength,
    the training images before the fit: a function of the seed and the knob alone, so the search repeats
    exactly; the renders also hold the fit, see edits_inconsistency)."""
    consistent: bool = False
    """Also fit, for each seed, a perfectly consistent edit of the reference arm's strength (--match-strength, else
    the first arm): its schedule with the edit replaced by one colour map shared by all views. Its renders' edit
    inconsistency is the metric's floor there; the report adds each arm's excess over it
    (csd_nerfstudio.consistent)."""
    consistent_map: consistent.ConsistentMap = "affine"
    """The floor's one colour map (--consistent): ``affine`` (the mean of the reference's per-view affine maps), or
    ``quadratic`` (one map with squares and products of r, g, b, fitted to all its views), which also follows an
    edit that is no affine map, such as the embedded model's night (on face at 64 px a quadratic global edit
    shaped like csd-edit-tiny-fast's night edits scored 0.0056 on the edits' affine spread, against 0.0021 affine:
    our measurement, README *The metric's floor*). Affine by default: the README's floors were measured so."""


def _run_child(spec: Dict, log: Path) -> Optional[str]:
    """Run one arm in a fresh process; None on success, else the end of its output."""
    spec_path = _start(spec)
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "csd_nerfstudio.evaluate", "_arm", str(spec_path)],
                              stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode == 0 and (Path(spec["dir"]) / "cost.json").exists():
        return None
    return f"exit {proc.returncode}: " + log.read_text()[-1500:]


def reusable(spec: Dict) -> bool:
    """Whether the run of ``spec`` in ``spec["dir"]`` finished (``cost.json`` and ``renders.npz``) with this very
    spec (``spec.json``, written before it ran): --reuse must not take a folder that an arm of the same name ran
    with other settings, such as ``joint`` before csd-edit-tiny-fast's coarse mix."""
    d = Path(spec["dir"])
    if not ((d / "cost.json").exists() and (d / "renders.npz").exists() and (d / "spec.json").exists()):
        return False
    try:
        saved = json.loads((d / "spec.json").read_text())
    except ValueError:
        return False
    return saved == json.loads(json.dumps(spec))


def _start(spec: Dict) -> Path:
    """Before a run: drop what an earlier run left as finished (``cost.json``, written last) and write the spec
    (:func:`reusable` reads both)."""
    d = Path(spec["dir"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "cost.json").unlink(missing_ok=True)
    write_text_atomic(d / "spec.json", json.dumps(spec, indent=1))
    return d / "spec.json"


def _run(spec: Dict, log: Path, isolate: bool) -> Optional[str]:
    if isolate:
        return _run_child(spec, log)
    _start(spec)
    try:
        run_arm(spec)
    except Exception:  # reported like a crashed process
        return traceback.format_exc()[-1500:]
    return None


def write_gif(path: Path, columns: Dict[str, np.ndarray], fps: float = 1000 / 120) -> None:
    """Side-by-side GIF of camera-path frames at ``fps`` (default 120 ms a frame), one labelled column per entry of
    ``columns``, each view enlarged to at least 256 px (:mod:`csd2d.sheets`)."""
    sheets.write_side_by_side_gif(path, {name: [Image.fromarray(f) for f in frames]
                                         for name, frames in columns.items()}, fps=fps)


def write_contact_sheet(path: Path, rows: Dict[str, np.ndarray], columns: int = 6) -> None:
    """A PNG with one labelled row per entry of ``rows`` and ``columns`` training views spread over the scene,
    each labelled with its view index and enlarged to at least 256 px (:mod:`csd2d.sheets`)."""
    n = min(len(v) for v in rows.values())
    pick = np.linspace(0, n - 1, min(columns, n)).round().astype(int)
    views = {name: [Image.fromarray(images[i]) for i in pick] for name, images in rows.items()}
    sheets.write_contact_sheet(path, views, column_labels=[f"view {i}" for i in pick])


def _mean(entries: List[Dict]) -> Dict[str, float]:
    keys = [k for k in entries[0] if isinstance(entries[0][k], (int, float)) and all(k in e for e in entries)]
    return {k: float(np.mean([e[k] for e in entries])) for k in keys}


def _markdown(report: Dict) -> str:
    cols = ["edit_inconsistency", *(["edit_inconsistency_excess"] if report.get("consistent") else []),
            "edit_disagreement", "inconsistency", "strength", "edit_inconsistency_per_strength",
            "edits_inconsistency", "edits_disagreement", "edits_strength", "views_edited", "edit_tint_spread",
            "edits_tint_spread", "edit_inconsistency_own", "fit_psnr", "fit_psnr_own",
            "structure_psnr", "structure_r2", "contrast", "psnr_to_photos", "seconds", "unet_samples", "peak_rss_mib"]
    ref = next((a for a, e in report["arms"].items() if e.get("match", {}).get("reference")), None)
    compared = (f"the other arms' strength knob was searched to match {ref}'s strength (within "
                f"{matching.STRENGTH_TOLERANCE:.0%}; see below)" if ref else
                "the arms are compared per unit of edit strength (the …_per_strength columns), not at a matched "
                "strength")
    lines = [f"# 3D edit evaluation: {report['prompt']!r} on {report['data']}", "",
             f"Command: `{report['command']}`", "",
             f"Method {report['method']}, seeds {report['seeds']}, {report['iterations']} editing steps per arm "
             f"from one base scene. Means over seeds; {compared}. A **collapsed** arm lost the image (structure r² "
             f"below {matching.STRUCTURE_FLOOR} or contrast below {matching.CONTRAST_FLOOR} of the photos'): its "
             "consistency and structure figures are not results and it is left out of the ratios.", "",
             *[f"- **Not applied:** {line}" for line in report.get("set_overridden", [])],
             *([""] if report.get("set_overridden") else []),
             "| arm | status | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows = {"original scene": ({}, report["base"].get("metrics", {}))}
    rows.update({arm: (entry, entry.get("mean", {})) for arm, entry in report["arms"].items()})
    floor = report.get("consistent")
    if floor:
        label = consistent.MAP_LABELS[floor.get("map", "affine")]
        rows[f"consistent (floor: {floor['reference']}'s {label})"] = ({}, floor.get("mean", {}))
    for name, (entry, m) in rows.items():
        status = _status(entry) if name in report["arms"] else ""
        cells = [f"{m[c]:.4g}" if c in m else "–" for c in cols]
        if entry.get("collapsed"):
            cells[cols.index("structure_psnr")] = f"({cells[cols.index('structure_psnr')]}, collapsed)"
        lines.append(f"| {name} | {status} | " + " | ".join(cells) + " |")
    if report["ratios"]:
        lines += ["", "Ratios of CSD to the baselines (mean over seeds):", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in report["ratios"].items()]
    if report.get("excluded_from_ratios"):
        lines += ["", "Not compared:", ""] + [f"- {a}: {r}" for a, r in report["excluded_from_ratios"].items()]
    searched = {a: e["match"] for a, e in report["arms"].items() if e.get("match", {}).get("knob")}
    if searched:
        lines += ["", f"Matched strength of the {report.get('match_on', 'renders')} (reference {ref}; tries on seed {report['seeds'][0]}, value → "
                  "strength):", ""]
        for arm, match in searched.items():
            tries = ", ".join(f"{t['value']:.4g} → " + ("failed" if t.get("error") else f"{t['strength']:.4g}")
                              for t in match["tries"])
            mean = f", mean strength {match['strength']:.4g}" if "strength" in match else ""
            bounds = f", searched within {match['bounds'][0]:.4g}–{match['bounds'][1]:.4g}" if "bounds" in match else ""
            lines.append(f"- {arm}: {match['knob']} {match['start']:.4g} → {match['value']:.4g} (tries: "
                         f"{tries or 'none'}; target {match['target']:.4g}, reference mean "
                         f"{match['reference_strength']:.4g}{mean}{bounds}): "
                         + ("matched" if match["matched"] else f"**unmatched**, {match['reason']}"))
    failed = {f"{arm} seed {s}": e["error"] for arm, entry in report["arms"].items()
              for s, e in entry["seeds"].items() if "error" in e}
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {k}: `{v.splitlines()[-1] if v else ''}`" for k, v in failed.items()]
    lines += ["", "Metrics are defined in `csd_nerfstudio/evaluate.py`."]
    return "\n".join(lines) + "\n"


def _status(entry: Dict) -> str:
    """An arm's status cell: collapsed, unmatched, matched (its searched value) or the reference."""
    words = []
    if entry.get("collapsed"):
        words.append("**collapsed**")
    match = entry.get("match", {})
    if match.get("reference"):
        words.append("reference")
    elif match:
        words.append(f"matched ({match['knob']} {match['value']:.4g})" if match["matched"] else "**unmatched**")
    return ", ".join(words) or "ok"


def command_line(module: str, argv: List[str]) -> str:
    """``python -m MODULE ARGS…`` as a shell would take it back (what a report says produced it)."""
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in argv)])


def run_eval(args: EvalArgs, command: Optional[str] = None) -> Dict:
    """Run the comparison and write the report; returns the report. ``command`` is the command line the report
    names (default: this module's, with this process's arguments)."""
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        renamed = "".join(f"; {a} is now {RENAMED[a]}" for a in unknown if a in RENAMED)
        raise ValueError(f"--arms: expected names from {sorted(ARMS)}, got {unknown}{renamed}")
    if not (args.data / "transforms.json").is_file():
        raise ValueError(f"--data: expected a nerfstudio scene folder with transforms.json, got {str(args.data)!r}")
    data, output = args.data.resolve(), args.output.resolve()
    if output == data or data in output.parents:
        raise ValueError(f"--output: expected a folder outside the scene (the input is never written to), got "
                         f"{str(args.output)!r}, inside --data {str(args.data)!r}")
    if args.captions is not None and len(args.captions) != 2:
        raise ValueError(f"--captions: expected two captions (source, target), got {len(args.captions)}")
    if args.match_strength is not None and args.match_strength not in args.arms:
        raise ValueError(f"--match-strength: expected one of the --arms {args.arms}, got {args.match_strength!r}")
    if args.match_tries < 1:
        raise ValueError(f"--match-tries: expected a number of runs >= 1, got {args.match_tries}")
    if not args.match_range >= 1:
        raise ValueError(f"--match-range: expected a factor >= 1, got {args.match_range}")
    if args.consistent_map not in consistent.MAP_LABELS:
        raise ValueError(f"--consistent-map: expected one of {list(consistent.MAP_LABELS)}, got "
                         f"{args.consistent_map!r}")
    strength_keys = {"renders": "strength", "edits": "edits_strength"}  # what --match-on reads of the metrics
    if args.match_on not in strength_keys:
        raise ValueError(f"--match-on: expected one of {list(strength_keys)}, got {args.match_on!r}")
    settings = {"prompt": args.prompt, "diffusion_model": args.model, **parse_overrides(args.set)}
    base_cfg = method_config(args.method, args.data, args.output, 1, settings)  # validates method and settings
    pretrain = base_cfg.pipeline.pretrain_steps if args.pretrain_steps is None else args.pretrain_steps
    iterations = args.iterations
    if iterations is None:
        iterations = METHODS[args.method].config.max_num_iterations - METHODS[args.method].config.pipeline.pretrain_steps
    if args.consistent:
        floor_ref = args.match_strength or args.arms[0]
        mode = method_config(args.method, args.data, args.output, 1,
                             {**settings, **arm_settings(floor_ref, iterations)}).pipeline.mode
        if mode != "dataset":
            raise ValueError(f"--consistent: expected a reference arm in dataset mode (its edits are images that one "
                             f"colour map can stand in for), got {floor_ref!r} in mode {mode!r}")
    overridden = overridden_settings(args.arms, settings, iterations)
    for line in overridden:
        print(f"[evaluate] warning: {line}", file=sys.stderr, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    common = {"method": args.method, "data": str(args.data.resolve()), "path_frames": args.path_frames}

    def done(spec: Dict) -> bool:
        return args.reuse and reusable(spec)

    # The base scene: fitted once (or loaded), rendered once.
    base_dir = args.output / "base"
    base_spec = {**common, "arm": "base", "seed": args.seeds[0], "dir": str(base_dir), "settings": settings,
                 "iterations": 0 if args.load_dir else pretrain,
                 "load_dir": str(args.load_dir) if args.load_dir else None}
    report: Dict = {"command": command or command_line("csd_nerfstudio.evaluate", sys.argv[1:]), "data": str(args.data),
                    "prompt": args.prompt, "method": args.method, "seeds": args.seeds, "iterations": iterations,
                    "settings": settings, "set_overridden": overridden, "base": {}, "arms": {}, "ratios": {}}
    error = None if done(base_spec) else _run(base_spec, args.output / "base.log", args.isolate)
    if error is not None:
        report["base"] = {"error": error}
        _write_report(args.output, report)
        raise RuntimeError(f"fitting the base scene failed; see {args.output / 'base.log'}:\n{error}")
    base_cost = json.loads((base_dir / "cost.json").read_text())
    load_dir = str(args.load_dir) if args.load_dir else base_cost["checkpoint_dir"]
    base = dict(np.load(base_dir / "renders.npz"))
    report["base"] = {"cost": base_cost, "load_dir": load_dir,
                      "metrics": view_metrics(_float(base["views"]), _float(base["photos"]), _float(base["train"]),
                                              args.prompt)}
    clip = None
    if args.clip_model:
        from csd2d.paper_metrics import ClipScorer

        clip = ClipScorer.from_pretrained(args.clip_model, arg_name="--clip-model")
    renders: Dict[str, Dict[int, Dict[str, np.ndarray]]] = {}
    loaded: Dict[str, Dict[str, np.ndarray]] = {}

    def measure(arm: str, seed: int, extra: Dict, colour_map: Optional[List] = None) -> Dict:
        """One run of ``arm`` at ``seed`` with settings ``extra`` on top (a --match-strength try): its metrics,
        or ``{"error": ...}``. Runs with other settings get folders of their own, so --reuse skips each. With
        ``colour_map``, the --consistent floor of ``arm`` (:func:`csd_nerfstudio.consistent.install`)."""
        name = ("consistent-" if colour_map is not None else "") + f"{arm}-seed{seed}" + "".join(
            f"-{k}={v:g}" for k, v in extra.items())
        d = args.output / "arms" / name
        if str(d) not in loaded:
            spec = {**common, "arm": arm, "seed": seed, "dir": str(d), "iterations": iterations,
                    "settings": {**settings, **arm_settings(arm, iterations), **extra}, "load_dir": load_dir,
                    "colour_map": colour_map}
            error = None if done(spec) else _run(spec, args.output / "arms" / f"{name}.log", args.isolate)
            if error is not None:
                print(f"[evaluate] {name} failed (reported; the other arms go on)", flush=True)
                return {"error": error}
            loaded[str(d)] = dict(np.load(d / "renders.npz"))
        r = loaded[str(d)]
        views, photos = _float(r["views"]), _float(r["photos"])
        own = {"own_views": _float(r["views_own"]), "base_own_views": _float(base["views_own"])} if (
            "views_own" in r and "views_own" in base) else {}
        metrics = view_metrics(views, photos, _float(r["train"]), args.prompt, _float(base["views"]), **own)
        if clip is not None:
            metrics.update(_clip_metrics(clip, views, photos, args.captions))
        metrics.update({k: v for k, v in json.loads((d / "cost.json").read_text()).items()
                        if isinstance(v, (int, float))})
        metrics["run"] = name
        print(f"[evaluate] {name}: " + ", ".join(
            f"{k} {metrics[k]:.4g}" for k in ("edit_inconsistency", "edit_inconsistency_own", "inconsistency",
                                              "strength", "structure_psnr", "structure_r2", "seconds")
            if k in metrics), flush=True)
        return metrics

    for arm in args.arms:
        report["arms"][arm] = {"settings": arm_settings(arm, iterations), "seeds": {}}
    ref = args.match_strength
    if ref:
        report["match_on"] = args.match_on
    key = strength_keys[args.match_on]
    for arm in ([ref] + [a for a in args.arms if a != ref]) if ref else args.arms:
        entry = report["arms"][arm]
        if ref and arm != ref:
            ref_seeds = report["arms"][ref]["seeds"]
            pipeline = method_config(args.method, args.data, args.output, 1,
                                     {**settings, **arm_settings(arm, iterations)}).pipeline
            knob = matching.strength_knob(pipeline)
            ref_ok = [m[key] for m in ref_seeds.values() if "error" not in m]
            first = ref_seeds.get(args.seeds[0], {})
            match = matching.match_arm(lambda value, seed: measure(arm, seed, {knob: value}), knob,
                                       matching.knob_value(pipeline, knob), first.get(key, 0.0),
                                       float(np.mean(ref_ok)) if ref_ok else 0.0, args.seeds, args.match_tries,
                                       key=key, knob_range=args.match_range)
            entry["seeds"] = match.pop("seeds")
            entry["match"] = match
            print(f"[evaluate] {arm}: {knob} {match['value']:.4g}, "
                  + ("matched" if match["matched"] else f"unmatched ({match['reason']})"), flush=True)
        else:
            entry["seeds"] = {seed: measure(arm, seed, {}) for seed in args.seeds}
            if ref:
                entry["match"] = {"reference": True}
        for seed, m in entry["seeds"].items():
            if "error" not in m:
                renders.setdefault(arm, {})[seed] = loaded[str(args.output / "arms" / m["run"])]
        ok = [m for m in entry["seeds"].values() if "error" not in m]
        if ok:
            entry["mean"] = _mean(ok)
            entry["mean"]["collapsed"] = entry["collapsed"] = any(m["collapsed"] for m in ok)
    renders = {a: renders[a] for a in args.arms if a in renders}  # --arms order for the pictures
    if args.consistent:
        floor_renders = _consistent_floor(report, ref or args.arms[0], renders, measure, loaded, args.output,
                                          args.consistent_map)
    means = {arm: e["mean"] for arm, e in report["arms"].items() if "mean" in e}
    excluded = {arm: reason for arm in means if (reason := _not_comparable(report["arms"][arm]))}
    if excluded:
        report["excluded_from_ratios"] = excluded
    for first, other in PAIRS:
        if all(a in means and a not in excluded for a in (first, other)):
            for key in ("edit_inconsistency", "edit_inconsistency_per_strength", "inconsistency",
                        "inconsistency_per_strength", "edits_inconsistency", "edit_inconsistency_own",
                        "edit_disagreement", "edits_disagreement", "edit_tint_spread", "edits_tint_spread"):
                if key in means[first] and key in means[other]:
                    report["ratios"][f"{key} {first} / {other}"] = means[first][key] / max(means[other][key], 1e-12)
            for key in consistent.EXCESS_KEYS:
                pair = [report["arms"][a].get("excess", {}).get(key) for a in (first, other)]
                if all(pair) and (ratio := consistent.excess_ratio(*pair)) is not None:
                    report["ratios"][f"{key}_excess {first} / {other}"] = ratio
    # Pictures for people: the first seed that every drawn arm finished.
    seed = next((s for s in args.seeds if all(s in renders.get(a, {}) for a in renders)), None)
    if seed is not None and renders:
        order = [a for a in GIF_ORDER if a in renders] + [a for a in renders if a not in GIF_ORDER]
        write_gif(args.output / "path.gif", {"original": base["path"], **{a: renders[a][seed]["path"] for a in order}})
        for s in args.seeds:
            rows = {"photos": base["photos"], "original scene": base["views"],
                    **{a: renders[a][s]["views"] for a in order if s in renders[a]}}
            if args.consistent and s in floor_renders:
                rows["consistent (floor)"] = floor_renders[s]["views"]
            write_contact_sheet(args.output / f"contact_seed{s}.png", rows)
        report["pictures"] = {"gif": "path.gif", "gif_seed": seed,
                              "contact_sheets": [f"contact_seed{s}.png" for s in args.seeds]}
    _write_report(args.output, report)
    return report


def _consistent_floor(report: Dict, ref: str, renders: Dict, measure: Callable, loaded: Dict,
                      output: Path, kind: consistent.ConsistentMap = "affine") -> Dict[int, Dict[str, np.ndarray]]:
    """--consistent: for each seed ``ref`` finished, fit the floor (one colour map for every view, fitted to
    ``ref``'s edits on that seed, :func:`csd_nerfstudio.consistent.shared_colour_map` of ``kind``) and add
    ``report["consistent"]``, each arm's per-seed and mean ``…_excess`` over it, and
    ``report["arms"][arm]["excess"]`` (per-seed lists for the ratios). Returns the floor's renders by seed."""
    floor = {"reference": ref, "map": kind, "seeds": {}, "colour_maps": {}}
    out: Dict[int, Dict[str, np.ndarray]] = {}
    for seed, r in renders.get(ref, {}).items():
        colour_map = consistent.shared_colour_map(_float(r["photos"]), _float(r["train"]), kind)
        floor["colour_maps"][seed] = colour_map.tolist()
        m = measure(ref, seed, {}, colour_map=colour_map.tolist())
        floor["seeds"][seed] = m
        if "error" not in m:
            out[seed] = loaded[str(output / "arms" / m["run"])]
    ok = [m for m in floor["seeds"].values() if "error" not in m]
    if ok:
        floor["mean"] = _mean(ok)
    report["consistent"] = floor
    for entry in report["arms"].values():
        for key in consistent.EXCESS_KEYS:
            per_seed = consistent.excess(entry["seeds"], floor["seeds"], key)
            if not per_seed or "mean" not in entry:
                continue
            for s, value in per_seed.items():
                entry["seeds"][s][f"{key}_excess"] = value
            entry.setdefault("excess", {})[key] = list(per_seed.values())
            entry["mean"][f"{key}_excess"] = float(np.mean(list(per_seed.values())))
    return out


def _not_comparable(entry: Dict) -> Optional[str]:
    """Why an arm's consistency must not be compared (collapsed, or unmatched under --match-strength); None if
    it may."""
    if entry.get("collapsed"):
        m = entry["mean"]
        return (f"collapsed (structure r² {m['structure_r2']:.2f}, floor {matching.STRUCTURE_FLOOR}; contrast "
                f"{m['contrast']:.3f}, floor {matching.CONTRAST_FLOOR})")
    match = entry.get("match", {})
    if match and not match.get("reference") and not match.get("matched"):
        return f"unmatched: {match.get('reason', '')}"
    return None


def _write_report(folder: Path, report: Dict) -> None:
    write_text_atomic(folder / "report.json", json.dumps(report, indent=1, default=str))
    if report.get("base", {}).get("metrics") is not None:
        write_text_atomic(folder / "report.md", _markdown(report))


def relocate_report(folder: Path, final: Path) -> None:
    """Rewrite ``folder``'s report so that its paths name ``final``, where the folder is about to be moved (a run
    written into a temporary folder and swapped into place must not point at a folder that is gone)."""
    pairs = [(str(folder.resolve()), str(final.resolve())), (str(folder), str(final))]

    def move(value):
        if isinstance(value, str):
            for old, new in pairs:
                if value == old or value.startswith(old + os.sep):
                    return new + value[len(old):]
            return value
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    _write_report(folder, move(json.loads((folder / "report.json").read_text())))


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_arm"]:  # internal: one arm in its own process
        try:
            run_arm(json.loads(Path(argv[1]).read_text()))
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    args = tyro.cli(EvalArgs, args=argv)
    try:
        report = run_eval(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((args.output / "report.md").read_text())
    return 0 if report["arms"] else 1


if __name__ == "__main__":
    sys.exit(main())
