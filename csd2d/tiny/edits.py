"""The embedded model's closed instruction vocabulary and the procedural filters that define it.

Two edits have a random outcome (several right answers for the same source), two are deterministic:

================== ========= ================================================================================
instruction        outcome   filter
================== ========= ================================================================================
``recolor it``     random    hue rotation about the grey axis by a quarter turn either way: ±90° (sign at random)
                             plus a jitter uniform in [−15°, 15°]
``make it night``  random    darken to 35–60 % and multiply by a tint drawn from blue/violet/teal/green hues
``make it grayscale`` fixed  luma (Rec. 601) copied to R, G and B
``invert the colors`` fixed  1 − x
================== ========= ================================================================================

Images are ``[B, 3, H, W]`` tensors in [0, 1]; every filter is per pixel.

The random edits are *multi-modal* on purpose: "recolor it" has two outcomes 180° apart and "make it night" four
tints. (An earlier recolor drew the angle from ±[60°, 180°], which on the circle is a single 240° arc centred
on 180°; score distillation, which seeks modes, then sent every sample to ≈ 180° and the outcome was hardly
random at all.)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

__all__ = ["EDITS", "RANDOM_EDITS", "apply_edit", "edit_strength", "hue_rotate", "chroma_plane", "LUMA"]

LUMA = torch.tensor([0.299, 0.587, 0.114])
_K = torch.ones(3) / math.sqrt(3.0)


def hue_rotate(images: Tensor, angle: Tensor) -> Tensor:
    """Rotate colours about the grey axis (1, 1, 1) by ``angle`` radians (one per image); clamps to [0, 1].

    Rodrigues: ``R = cos θ I + sin θ [k]× + (1 − cos θ) k kᵀ`` with ``k = (1, 1, 1)/√3``.
    """
    angle = angle.reshape(-1, 1, 1).float()
    eye = torch.eye(3)
    cross = torch.tensor([[0.0, -_K[2], _K[1]], [_K[2], 0.0, -_K[0]], [-_K[1], _K[0], 0.0]])
    rot = torch.cos(angle) * eye + torch.sin(angle) * cross + (1 - torch.cos(angle)) * torch.outer(_K, _K)
    out = torch.einsum("bij,bjhw->bihw", rot.to(images.device), images.float())
    return out.clamp(0.0, 1.0)


def chroma_plane(images: Tensor):
    """Project RGB onto the plane orthogonal to grey: returns ``(hue, chroma)`` per pixel.

    ``u = (2R − G − B)/√6``, ``v = (G − B)/√2``, ``hue = atan2(v, u)`` (radians), ``chroma = √(u² + v²)``.
    A :func:`hue_rotate` by θ adds θ to the hue of unclipped pixels.
    """
    r, g, b = images.float().unbind(-3)
    u = (2 * r - g - b) / math.sqrt(6.0)
    v = (g - b) / math.sqrt(2.0)
    return torch.atan2(v, u), torch.sqrt(u * u + v * v)


def _recolor(images: Tensor, gen: torch.Generator) -> Tensor:
    n = images.shape[0]
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    jitter = torch.empty(n).uniform_(-math.radians(15), math.radians(15), generator=gen)
    return hue_rotate(images, sign * math.radians(90) + jitter)


_NIGHT_TINTS = torch.tensor([[0.45, 0.6, 1.0], [0.7, 0.5, 1.0], [0.4, 0.9, 0.9], [0.5, 1.0, 0.6]])


def _night(images: Tensor, gen: torch.Generator) -> Tensor:
    n = images.shape[0]
    pick = torch.randint(0, len(_NIGHT_TINTS), (n,), generator=gen)
    jitter = torch.empty(n, 3).uniform_(-0.08, 0.08, generator=gen)
    tint = (_NIGHT_TINTS[pick] + jitter).clamp(0, 1)
    level = torch.empty(n, 1).uniform_(0.35, 0.6, generator=gen)
    return (images.float() * (level * tint)[:, :, None, None].to(images.device)).clamp(0, 1)


def _grayscale(images: Tensor, gen: Optional[torch.Generator] = None) -> Tensor:
    y = torch.einsum("c,bchw->bhw", LUMA.to(images.device), images.float())
    return y[:, None].expand(-1, 3, -1, -1).contiguous()


def _invert(images: Tensor, gen: Optional[torch.Generator] = None) -> Tensor:
    return 1.0 - images.float()


EDITS: Dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "recolor it": _recolor,
    "make it night": _night,
    "make it grayscale": _grayscale,
    "invert the colors": _invert,
}
RANDOM_EDITS = ("recolor it", "make it night")


def apply_edit(instruction: str, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Apply the procedural filter behind ``instruction`` (see the module table)."""
    if instruction not in EDITS:
        raise ValueError(f"instruction: expected one of {sorted(EDITS)}, got {instruction!r}")
    return EDITS[instruction](images, generator or torch.Generator().manual_seed(0))


def _wrap(angle: Tensor) -> Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def edit_strength(edited: Tensor, source: Tensor, instruction: str) -> float:
    """How far ``edited`` moved toward ``instruction`` (one number per edit type, batched images allowed).

    - ``recolor it``: hue shift in degrees, ``mean |wrap(hue_edited − hue_source)|`` weighted by the
      source's chroma (hue and chroma from :func:`chroma_plane`).
    - ``make it grayscale``: relative saturation drop ``1 − mean chroma(edited) / mean chroma(source)``.
    - ``make it night``: relative luma drop ``1 − mean Y(edited) / mean Y(source)`` (Rec. 601 luma).
    - ``invert the colors``: ``1 − mean |edited − (1 − source)| / mean |source − (1 − source)|``.
    - anything else: mean absolute change ``mean |edited − source|``.
    """
    edited, source = edited.float(), source.float()
    if instruction == "recolor it":
        hue_e, _ = chroma_plane(edited)
        hue_s, chroma_s = chroma_plane(source)
        weight = chroma_s / chroma_s.sum().clamp_min(1e-8)
        return float(math.degrees(float((_wrap(hue_e - hue_s).abs() * weight).sum())))
    if instruction == "make it grayscale":
        return float(1 - chroma_plane(edited)[1].mean() / chroma_plane(source)[1].mean().clamp_min(1e-8))
    if instruction == "make it night":
        luma = lambda x: torch.einsum("c,...chw->...hw", LUMA, x).mean()
        return float(1 - luma(edited) / luma(source).clamp_min(1e-8))
    if instruction == "invert the colors":
        return float(1 - (edited - (1 - source)).abs().mean() / (2 * source - 1).abs().mean().clamp_min(1e-8))
    return float((edited - source).abs().mean())
