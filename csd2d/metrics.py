"""Consistency metrics for CSD evaluations (used by ``csd2d demo``, ``csd2d.evaluate`` and the benchmarks).

Edit strength depends on what an instruction means, so it lives with the model that knows the instructions:
:func:`csd2d.tiny.edits.edit_strength` for the embedded model.

All images are float tensors in [0, 1], ``[3, H, W]`` (or ``[T, 3, H, W]`` for videos), source and edited of
equal size. Lower inconsistency is better.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

from .paper_metrics import (clip_direction_consistency_appendix, clip_direction_consistency_issue28,
                            clip_directional_similarity, clip_image_consistency, evaluate_frames, lpips_consecutive)
from .views import window_positions

__all__ = [
    "border_discontinuity",
    "interior_discontinuity",
    "seam_inconsistency",
    "window_edit_spread",
    "colour_map_spread",
    "affine_colour_map",
    "fit_colour_map",
    "colour_features",
    "colour_map_degree",
    "COLOUR_MAP_FEATURES",
    "apply_colour_map",
    "map_spread",
    "tint_spread",
    "temporal_inconsistency",
    # the paper's CLIP and LPIPS metrics (csd2d.paper_metrics; models load only when asked for)
    "clip_directional_similarity",
    "clip_image_consistency",
    "clip_direction_consistency_appendix",
    "clip_direction_consistency_issue28",
    "lpips_consecutive",
    "evaluate_frames",
]


def _edges(length: int, window: int, stride: int) -> list:
    """Sorted pixel indices where a window starts or ends, image edges included."""
    return sorted({e for s in window_positions(length, window, stride) for e in (s, s + window)})


def _borders(length: int, window: int, stride: int) -> list:
    """Interior pixel indices where a window starts or ends (a discontinuity there sits between c−1 and c)."""
    return [c for c in _edges(length, window, stride) if 2 <= c <= length - 2]


def _midlines(length: int, window: int, stride: int) -> list:
    """Indices halfway between consecutive window borders (and not on one): lines inside the windows."""
    edges = _edges(length, window, stride)
    mids = {(a + b) // 2 for a, b in zip(edges, edges[1:])} - set(edges)
    return sorted(c for c in mids if 2 <= c <= length - 2)


def _line_jumps(image: Tensor, lines) -> list:
    """Per line ``c`` of the last axis:
    ``mean |I[c] − I[c−1]| + mean |(I[c+1] − I[c]) − (I[c−1] − I[c−2])|``."""
    return [(image[..., c] - image[..., c - 1]).abs().mean()
            + ((image[..., c + 1] - image[..., c]) - (image[..., c - 1] - image[..., c - 2])).abs().mean()
            for c in lines]


def _discontinuity(image: Tensor, window: int, stride: int, where) -> float:
    values = []
    for img in (image, image.transpose(-1, -2)):  # vertical lines, then horizontal ones
        values += _line_jumps(img, where(img.shape[-1], window, stride))
    if not values:
        raise ValueError(f"image: expected at least one interior window border, got shape {tuple(image.shape)}")
    return float(torch.stack(values).mean())


def border_discontinuity(image: Tensor, window: int, stride: int) -> float:
    """Mean colour plus gradient jump across the window borders of ``image`` (``[3, H, W]``).

    For a vertical border between columns ``c − 1`` and ``c``:
    ``colour(c) = mean_{rows, channels} |I[:, c] − I[:, c−1]|`` and
    ``gradient(c) = mean_{rows, channels} |(I[:, c+1] − I[:, c]) − (I[:, c−1] − I[:, c−2])|``;
    likewise for horizontal borders with rows. The result is the mean of ``colour + gradient`` over all
    border lines (borders are those of :func:`csd2d.views.window_positions` with ``window``/``stride`` in pixels).
    """
    return _discontinuity(image, window, stride, _borders)


def interior_discontinuity(image: Tensor, window: int, stride: int) -> float:
    """The same statistic as :func:`border_discontinuity` on the lines halfway between consecutive borders,
    where no window starts or ends: how much the image jumps from pixel to pixel anyway (texture, grain)."""
    return _discontinuity(image, window, stride, _midlines)


def seam_inconsistency(edited: Tensor, source: Tensor, window: int, stride: int) -> float:
    """Panorama seam inconsistency: how much more the window borders jump than the rest of the image, relative to
    the same on the unedited ``source``.

    ``seam(x) = border_discontinuity(x) / interior_discontinuity(x)`` and the result is
    ``seam(edited) / seam(source)``. 1.0 means the borders are no more visible than in the source; above 1 seams
    were added. Dividing by the interior lines makes it blind to changes that affect every line alike: a global
    contrast change (e.g. darkening) or grain all over the image is not a seam.
    """

    def seam(x: Tensor) -> float:
        return border_discontinuity(x, window, stride) / max(interior_discontinuity(x, window, stride), 1e-8)

    return seam(edited) / max(seam(source), 1e-8)


def window_edit_spread(edited: Tensor, source: Tensor, window: int, stride: int) -> float:
    """How much the edit differs between windows: the RMS over windows and channels of
    ``m_w − mean_w(m_w)``, where ``m_w`` is the mean of ``edited − source`` over window ``w`` (in pixels).

    A consistent edit applies the same colour change everywhere (spread ≈ 0 for a global filter); independent
    per-window editing that lands on different outcomes (e.g. different hues) gives a large spread.
    """
    diff = (edited - source).float()
    means = torch.stack([
        diff[:, y : y + window, x : x + window].mean(dim=(-1, -2))
        for y in window_positions(diff.shape[-2], window, stride)
        for x in window_positions(diff.shape[-1], window, stride)
    ])
    return float((means - means.mean(0)).pow(2).mean().sqrt())


COLOUR_MAP_FEATURES = {1: 4, 2: 10}
"""Rows of a colour map of each degree: affine ``[r, g, b, 1]``; quadratic adds ``r², g², b², rg, rb, gb``."""


def colour_features(pixels: Tensor, degree: int = 1) -> Tensor:
    """``pixels`` (``[P, 3]``) as a colour map's inputs: ``[r, g, b, 1]`` (degree 1), then ``r², g², b², rg, rb,
    gb`` (degree 2). The first four columns are the affine map's at every degree."""
    if degree not in COLOUR_MAP_FEATURES:
        raise ValueError(f"degree: expected one of {sorted(COLOUR_MAP_FEATURES)}, got {degree!r}")
    x = _homogeneous(pixels)
    if degree == 1:
        return x
    r, g, b = pixels.unbind(1)
    return torch.cat([x, torch.stack([r * r, g * g, b * b, r * g, r * b, g * b], dim=1)], dim=1)


def fit_colour_map(source: Tensor, edited: Tensor, degree: int = 1, ridge: float = 1e-3) -> Tensor:
    """The colour map ``M`` (``[COLOUR_MAP_FEATURES[degree], 3]``) that best takes ``source``'s pixels to
    ``edited``'s (``[3, ...]`` each; ridge-regularised least squares over :func:`colour_features`, the ridge scaled
    by the pixel count)."""
    a = colour_features(source.float().reshape(3, -1).T, degree)
    b = edited.float().reshape(3, -1).T
    gram = a.T @ a + ridge * a.shape[0] * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(gram, a.T @ b)


def affine_colour_map(source: Tensor, edited: Tensor, ridge: float = 1e-3) -> Tensor:
    """The affine colour map ``M`` (4 × 3) that best takes ``source``'s pixels ``[r, g, b, 1]`` to ``edited``'s
    (``[3, H, W]`` each; :func:`fit_colour_map` of degree 1)."""
    return fit_colour_map(source, edited, 1, ridge)


def colour_map_degree(colour_map: Tensor) -> int:
    """The degree of a colour map from :func:`fit_colour_map`, read off its shape."""
    for degree, rows in COLOUR_MAP_FEATURES.items():
        if tuple(colour_map.shape) == (rows, 3):
            return degree
    raise ValueError(f"colour_map: expected a [4, 3] (affine) or [10, 3] (quadratic) map, "
                     f"got shape {tuple(colour_map.shape)}")


def apply_colour_map(source: Tensor, colour_map: Tensor) -> Tensor:
    """``source`` (``[3, H, W]``) through a colour map from :func:`fit_colour_map` (affine or quadratic, by its
    shape)."""
    pixels = colour_features(source.float().reshape(3, -1).T, colour_map_degree(colour_map)) @ colour_map
    return pixels.T.reshape(source.shape)


def _check_view_stacks(before: Tensor, after: Tensor) -> None:
    if before.shape != after.shape or before.ndim != 4 or before.shape[1] != 3:
        raise ValueError(f"before, after: expected two [V, 3, H, W] stacks of one shape, got {tuple(before.shape)} "
                         f"and {tuple(after.shape)}")


def tint_spread(before: Tensor, after: Tensor, eps: float = 1e-6) -> float:
    """How much the views' edits disagree on their tint: for each view ``v`` (``[V, 3, H, W]`` each, in [0, 1]) the
    per-channel gain of its mean colour, ``mean(after_v) / mean(before_v)``, normalised to sum 1 over the channels;
    return the RMS over views and channels of its deviation from the views' mean.

    A global per-channel gain (any tint at any darkening) scores 0 whatever each view shows, and so does a
    brightness change that differs by view; views tinted differently score above 0. Any other edit that every
    view shares scores above 0 too, by how much each view's colours bend it (a hue rotation; a darkening that
    crushes the shadows). It sees only the mean tint, not where in a view the edit changes: a supplement to the
    spread of affine maps (:func:`map_spread`), which reads both."""
    _check_view_stacks(before, after)
    gain = after.float().mean(dim=(2, 3)) / before.float().mean(dim=(2, 3)).clamp_min(eps)
    tint = gain / gain.sum(1, keepdim=True).clamp_min(eps)
    return float((tint - tint.mean(0)).pow(2).mean().sqrt())


def map_spread(maps: Sequence[Tensor], pixels: Tensor) -> float:
    """How much affine colour maps disagree on the same content: apply every map to ``pixels`` (``[3, ...]``)
    and return ``sqrt(mean_{maps, pixels, channels} (S M − mean_maps S M)²)``. Content-independent: equal
    maps score 0 whatever ``pixels`` holds."""
    src = _homogeneous(pixels.float().reshape(3, -1).T)
    applied = torch.stack([src @ m for m in maps])  # [maps, pixels, 3]
    return float((applied - applied.mean(0)).pow(2).mean().sqrt())


def map_disagreement(before: Tensor, after: Tensor, degree: int = 2, ridge: float = 1e-3,
                     shared_ridge: float = 1e-7) -> float:
    """How much the views' colour edits disagree beyond what one edit of their shape, shared by every view, would
    show: fit one colour map of ``degree`` (:func:`fit_colour_map`) over all the views' pixels, ``before`` →
    ``after`` (``[V, 3, H, W]`` each), the edit every view would show if they agreed; take each view's affine map
    from ``before_v`` to its departure from that shared edit, ``after_v − shared(before_v)``; return the
    :func:`map_spread` of those maps over all of ``before``'s pixels.

    The views' affine maps (the spread :func:`map_spread` reads) differ by content even for one shared edit that is
    no affine map, such as a night that crushes the shadows: each view's colours bend it differently. Least
    squares is linear in its target, so each map here is the view's own affine map less the affine map of the
    shared edit on the same view; a shared edit of ``degree`` scores 0 whatever each view shows, and so does any
    edit the views agree on up to that degree. What the views disagree on, in tint, brightness or where in a view
    the edit changes, scores above 0. ``ridge`` regularises the views' affine maps as :func:`affine_colour_map`
    does; ``shared_ridge``, the shared map's, is near 0, since a ridge there would leave each view a residual that
    follows its colours."""
    _check_view_stacks(before, after)
    pixels = before.transpose(0, 1)  # [3, V, H, W]: every view's pixels, as the fits and map_spread read them
    shared = fit_colour_map(pixels, after.transpose(0, 1), degree, shared_ridge)
    maps = [affine_colour_map(b, a.float() - apply_colour_map(b, shared), ridge) for b, a in zip(before, after)]
    return map_spread(maps, pixels)


def _homogeneous(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def colour_map_spread(edited: Tensor, source: Tensor, window: int, stride: int, ridge: float = 1e-3) -> float:
    """Disagreement between the colour edits applied in different windows, independent of their content.

    For each window ``w`` (in pixels) fit the affine colour map ``M_w`` (:func:`affine_colour_map`) taking the
    source's pixels to the edited ones, and return the :func:`map_spread` of the maps over *all* source pixels.
    A global per-pixel colour filter (hue rotation, tint, grayscale, inversion) gives the same map everywhere
    and scores ≈ 0 whatever the content; windows that landed on different outcomes score high.
    """
    maps = [
        affine_colour_map(source[:, y : y + window, x : x + window], edited[:, y : y + window, x : x + window],
                          ridge)
        for y in window_positions(source.shape[-2], window, stride)
        for x in window_positions(source.shape[-1], window, stride)
    ]
    return map_spread(maps, source)


def temporal_inconsistency(edited: Tensor, source: Tensor, shift: int) -> float:
    """Video temporal inconsistency after aligning a known horizontal pan.

    With ``e_t = edited_t − source_t`` and frames that pan so that ``source_{t+1}[:, :, x] =
    source_t[:, :, x + shift]``, the result is ``mean_t mean_{c, y, x} |e_{t+1}[..., x] − e_t[..., x + shift]|``
    over the columns both frames see. A consistent edit moves with the scene and scores 0.
    """
    if edited.shape != source.shape or edited.ndim != 4 or edited.shape[0] < 2:
        raise ValueError(f"edited/source: expected equal [T >= 2, 3, H, W] tensors, got {tuple(edited.shape)} "
                         f"and {tuple(source.shape)}")
    e = (edited - source).float()
    w = e.shape[-1]
    if not 0 <= shift < w:
        raise ValueError(f"shift: expected 0 <= shift < width ({w}), got {shift}")
    return float((e[1:, ..., : w - shift] - e[:-1, ..., shift:]).abs().mean())


def summarize(values: Sequence[float]) -> Dict[str, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    return {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}
