"""Carry a decoded edit onto the sharp image it started from: a locally affine colour map (the guided filter).

A latent edit comes back through the VAE's decoder, which loses detail: the embedded model's VAE (4× down)
decodes a 64 px face photo's own latents at 24.6 dB, every edge blurred and with halos (our measurement). In
3D every view's blur falls on other surface points, so the scene is fitted to images that disagree in their
detail as well as in their edit.

:func:`guided_transfer` keeps the decoder's colours and the start image's detail. Around each pixel it fits the
colour map ``after ≈ Aᵀ·before + b`` (3 × 3 plus an offset) over a ``(2r + 1)²`` window, from the decoded start
``before = D(z_start)`` to the decoded edit ``after = D(z_edit)``, averages ``A`` and ``b`` over the same window, and
applies them to the sharp start image ``x``: ``out = Āᵀ·x + b̄``. This is the colour guided filter of He, Sun and
Tang (ECCV 2010, §3.5) with ``before`` as its guide, used as edit propagation. Where the edit is a colour filter
(the embedded model's instructions) the output is that filter applied to ``x`` itself; an edit that adds structure
finer than the window (a real model's shape edit) is blurred to the window's size, so the option is off by
default everywhere but the CPU methods (``csd_nerfstudio``'s ``--pipeline.edit.guided-radius``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["guided_transfer", "GUIDED_EPS"]

GUIDED_EPS = 1e-3
"""Ridge on each window's 3 × 3 colour covariance (images in [0, 1]). He et al. use 1e-4 to 1e-2 for colour guides;
ours: 1e-3 kept the face's detail under the embedded model's night edit (64 px, radius 4) without amplifying the
decoder's noise in flat regions (those get ``A → 0``: the decoded colour)."""


def _box(x: Tensor, r: int) -> Tensor:
    """Mean over each pixel's ``(2r + 1)²`` window (edges replicated), ``[B, C, H, W]``: running sums, so O(1) per
    pixel whatever ``r`` is (a pooling kernel of side 2r + 1 took 107 s for one 512 px view at r = 64 on a CPU
    thread), accumulated in float64."""
    k = 2 * r + 1
    padded = F.pad(x, (r, r, r, r), mode="replicate").double()
    sums = F.pad(padded.cumsum(-1), (1, 0))
    rows = sums[..., k:] - sums[..., :-k]
    sums = F.pad(rows.cumsum(-2), (0, 0, 1, 0))
    return ((sums[..., k:, :] - sums[..., :-k, :]) / (k * k)).to(x.dtype)


def _transfer_one(x: Tensor, before: Tensor, after: Tensor, r: int, eps: float) -> Tensor:
    """One view (``[3, H, W]`` each): :func:`guided_transfer`'s map, fitted and applied."""
    _, h, w = before.shape
    a, b, x = before[None], after[None], x[None]
    mu_a, mu_b = _box(a, r), _box(b, r)
    outer = lambda p, q: torch.einsum("bihw,bjhw->bijhw", p, q)  # noqa: E731
    cov_aa = _box(outer(a, a).reshape(1, 9, h, w), r).reshape(1, 3, 3, h, w) - outer(mu_a, mu_a)
    cov_ab = _box(outer(a, b).reshape(1, 9, h, w), r).reshape(1, 3, 3, h, w) - outer(mu_a, mu_b)
    cov_aa = cov_aa + eps * torch.eye(3, dtype=a.dtype, device=a.device)[None, :, :, None, None]
    # per pixel: coefficients [3 in, 3 out] solving cov_aa · A = cov_ab
    coef = torch.linalg.solve(cov_aa.permute(0, 3, 4, 1, 2), cov_ab.permute(0, 3, 4, 1, 2)).permute(0, 3, 4, 1, 2)
    offset = mu_b - torch.einsum("bijhw,bihw->bjhw", coef, mu_a)
    coef = _box(coef.reshape(1, 9, h, w), r).reshape(1, 3, 3, h, w)
    offset = _box(offset, r)
    return (torch.einsum("bijhw,bihw->bjhw", coef, x) + offset)[0]


def guided_transfer(x: Float[Tensor, "N 3 H W"], before: Float[Tensor, "N 3 H W"], after: Float[Tensor, "N 3 H W"],
                    radius: int, eps: float = GUIDED_EPS) -> Float[Tensor, "N 3 H W"]:
    """The edit ``before → after`` (both decoded, in [0, 1]) carried onto the sharp image ``x`` that ``before``
    decodes, as a locally affine colour map fitted over ``(2·radius + 1)²`` windows (module docstring); clamped to
    [0, 1]. A global affine colour map ``after = M(before)`` gives ``M(x)`` exactly, away from the clamp and the
    ridge. One view at a time: memory O(H·W), whatever N is."""
    if x.ndim != 4 or x.shape[1] != 3 or before.shape != x.shape or after.shape != x.shape:
        raise ValueError(f"x, before, after: expected three [N, 3, H, W] images of one shape, got {tuple(x.shape)}, "
                         f"{tuple(before.shape)} and {tuple(after.shape)}")
    if not (isinstance(radius, int) and radius >= 1):
        raise ValueError(f"radius: expected a window radius in pixels >= 1, got {radius!r}")
    if radius >= min(x.shape[-2:]):
        raise ValueError(f"radius: expected less than the image's shorter side ({min(x.shape[-2:])}), got {radius}")
    if not eps > 0:
        raise ValueError(f"eps: expected a ridge > 0, got {eps!r}")
    out = [_transfer_one(xi.float(), b.float(), a.float(), radius, eps) for xi, b, a in zip(x, before, after)]
    return torch.stack(out).clamp(0, 1).to(x.dtype)
