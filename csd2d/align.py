"""Aligned kernel mixing: a particle takes another's score only where both show the same content.

CSD's kernel (:func:`csd2d.kernel.csd_gradient`) adds particle j's score at latent pixel p to particle i's pixel p,
whatever each of them shows there. Aligned mixing first resamples j's score onto i's latent grid and masks the
pixels of i that j does not see:

    ``g_i(p) = (1/Z_i(p)) Σ_j k(z_j, z_i) · M_ji(p) · W_j→i(s_j)(p)  −  repulsion · (1/Z_i) Σ_j ∇_{z_j} k(z_j, z_i)``

- ``W_j→i`` samples ``s_j`` bilinearly at the place in j that i's pixel p shows (``torch.nn.functional.grid_sample``).
  Where the warps come from is the caller's: known window offsets for panoramas (:class:`OffsetWarps`), optical flow
  between frames (:mod:`csd2d.flow`), rendered depth and cameras in 3D (``csd_nerfstudio.warps``).
- ``M_ji(p) ∈ [0, 1]`` is 0 where j does not see i's pixel p (outside j, occluded in j, flow that fails its
  forward–backward check). ``M_ii = 1`` and ``W_i→i`` is the identity, always.
- ``Z_i(p)`` follows :attr:`csd2d.config.StepConfig.normalization`: ``row`` divides by the masked row sum
  ``Σ_j k_ji M_ji(p)`` (a kernel-weighted mean of the aligned scores that see p; never below ``k_ii = 1``),
  ``count`` by N (the paper's eq. 6), ``mean`` by the mean of the masked row sums over particles and pixels.
- **The kernel is taken on the unaligned noisy latents, as today.** SVGD's repulsion is the gradient of that same
  kernel in the particles' own coordinates, so it stays ``(2/h) (Σ_j k_ji z_j − z_i Σ_j k_ji)`` divided by the
  unmasked row sum (``row``), N or their mean, exactly :func:`csd2d.kernel.csd_gradient`'s. An aligned distance
  would not be symmetric (``M_ji ≠ M_ij``) and would need the warps' derivatives in the repulsion.
- With identity warps and full masks this is :func:`csd2d.kernel.csd_gradient` (to fp32 rounding: the sums run in
  another order).

With :attr:`csd2d.config.StepConfig.share_grid` as well, :func:`csd2d.csd.csd_edit_step` mixes only the scores'
detail ``s_j − coarse(s_j)`` here, and their coarse part pixel for pixel over every particle: the particles agree on
the edit's overall direction everywhere and share detail only where they show the same content.

Memory is O(N·D): particle i's N warped scores are made, summed and dropped before particle i + 1's.
"""

from __future__ import annotations

import typing
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .config import Normalization
from .kernel import rbf_kernel

__all__ = [
    "Warps",
    "IdentityWarps",
    "GridWarps",
    "OffsetWarps",
    "pixel_grid",
    "to_sample_grid",
    "aligned_csd_gradient",
]

Pair = Tuple[Optional[Float[Tensor, "P h w 2"]], Float[Tensor, "P 1 h w"]]


def pixel_grid(h: int, w: int, device=None) -> Float[Tensor, "h w 2"]:
    """Continuous ``(x, y)`` coordinates of the pixel centres of an ``h × w`` grid (pixel (0, 0) spans [0, 1)²,
    so its centre is (0.5, 0.5))."""
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def to_sample_grid(coords: Float[Tensor, "... h w 2"], h: int, w: int) -> Float[Tensor, "... h w 2"]:
    """Continuous pixel coordinates ``(x, y)`` in an ``h × w`` grid (:func:`pixel_grid`'s convention) as
    ``grid_sample``'s normalised ``[-1, 1]`` coordinates with ``align_corners=False``."""
    scale = torch.tensor([2.0 / w, 2.0 / h], device=coords.device, dtype=torch.float32)
    return coords.float() * scale - 1.0


class Warps:
    """Where each particle's latent pixels are found in every other particle, and whether they are seen there.

    Subclasses give :meth:`pairs`; the mixing never needs more than one particle's row at a time."""

    n: int
    """Number of particles."""

    def pairs(self, i: int) -> Pair:
        """Row i: ``(grid, mask)`` for all j. ``grid[j]`` holds, for each of i's latent pixels, the place in j
        that shows it, in ``grid_sample`` coordinates (:func:`to_sample_grid`); ``None`` means every pair is the
        identity. ``mask[j]`` is 1 where j sees that pixel, 0 where not. Entry ``j = i`` is ignored."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Warps":
        """The warps among the particles ``indices`` (in that order): a video chunk, a panorama step's windows."""
        raise NotImplementedError


class IdentityWarps(Warps):
    """Every particle shows the same content at the same pixel: aligned mixing is plain CSD."""

    def __init__(self, n: int, h: int, w: int) -> None:
        self.n, self.h, self.w = n, h, w

    def pairs(self, i: int) -> Pair:
        return None, torch.ones(self.n, 1, self.h, self.w)

    def subset(self, indices: Sequence[int]) -> "IdentityWarps":
        return IdentityWarps(len(indices), self.h, self.w)


class GridWarps(Warps):
    """Precomputed warps of every pair: ``grid[i, j]`` (``grid_sample`` coordinates) and ``mask[i, j]``.

    Holds ``N² · h · w · 3`` numbers: 16 frames of 64 × 64 latents take 12 MiB. For the many views of a scene,
    ``csd_nerfstudio.warps`` computes each row when it is asked for instead."""

    def __init__(self, grid: Float[Tensor, "N N h w 2"], mask: Float[Tensor, "N N h w"]) -> None:
        n = grid.shape[0]
        if grid.ndim != 5 or grid.shape[1] != n or grid.shape[-1] != 2:
            raise ValueError(f"grid: expected shape [N, N, h, w, 2], got {tuple(grid.shape)}")
        if tuple(mask.shape) != tuple(grid.shape[:-1]):
            raise ValueError(f"mask: expected shape {tuple(grid.shape[:-1])} (grid's without its last axis), "
                             f"got {tuple(mask.shape)}")
        self.n, self.grid, self.mask = n, grid.float(), mask.float()

    def pairs(self, i: int) -> Pair:
        return self.grid[i], self.mask[i][:, None]

    def subset(self, indices: Sequence[int]) -> "GridWarps":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return GridWarps(self.grid[idx][:, idx], self.mask[idx][:, idx])


class OffsetWarps(Warps):
    """Windows cropped from one canvas at known offsets (panoramas): window i's pixel p is the canvas pixel
    ``o_i + p``, which window j holds at ``p + o_i − o_j`` when that lies inside j. Exact whole-pixel shifts."""

    def __init__(self, offsets: Sequence[Tuple[int, int]], window: int) -> None:
        if window < 1:
            raise ValueError(f"window: expected a positive window side in latents, got {window}")
        self.offsets: List[Tuple[int, int]] = [(int(y), int(x)) for y, x in offsets]
        self.n, self.window = len(self.offsets), window

    def pairs(self, i: int) -> Pair:
        s = self.window
        off = torch.tensor(self.offsets, dtype=torch.float32)  # [N, 2] as (y, x)
        shift = (off[i] - off).flip(-1)  # (x, y) of o_i − o_j
        coords = pixel_grid(s, s)[None] + shift[:, None, None, :]  # [N, s, s, 2] in j's pixels
        inside = ((coords >= 0) & (coords < s)).all(-1)
        return to_sample_grid(coords, s, s), inside.float()[:, None]

    def subset(self, indices: Sequence[int]) -> "OffsetWarps":
        return OffsetWarps([self.offsets[i] for i in indices], self.window)


def aligned_csd_gradient(
    scores: Float[Tensor, "N C h w"],
    particles: Float[Tensor, "N C h w"],
    warps: Warps,
    *,
    repulsion: float,
    normalization: Normalization,
    bandwidth: Optional[float] = None,
    bandwidth_scale: Optional[float] = None,
    with_weight: bool = False,
):
    """CSD's descent direction with each score warped onto the receiving particle's grid (module docstring).

    Args:
        scores: per-particle scores ``s_j`` (noise convention, as :func:`csd2d.kernel.csd_gradient`).
        particles: the points the kernel is evaluated on (the noisy target latents), same shape.
        warps: ``N`` particles' warps and masks at the latents' resolution.
        repulsion / normalization / bandwidth / bandwidth_scale / with_weight: as :func:`csd2d.kernel.csd_gradient`;
            the weight is per pixel here (``Σ_j k_ji M_ji / Z_i``, ``[N, 1, h, w]``), as the masks are.

    Returns:
        The descent direction, same shape and dtype as ``scores``; with ``with_weight``, ``(direction, weight)``.
    """
    if scores.shape != particles.shape or scores.ndim != 4:
        raise ValueError(f"scores: expected the shape of particles [N, C, h, w] {tuple(particles.shape)}, "
                         f"got {tuple(scores.shape)}")
    if normalization not in typing.get_args(Normalization):
        raise ValueError(
            f"normalization: expected one of {list(typing.get_args(Normalization))}, got {normalization!r}"
        )
    n = scores.shape[0]
    if warps.n != n:
        raise ValueError(f"warps: expected warps among the {n} particles, got warps among {warps.n}")
    s = scores.float()
    x = particles.float()
    k, h = rbf_kernel(x, bandwidth, bandwidth_scale)  # on the unaligned particles (module docstring)
    drive = torch.empty_like(s)
    z_pix = torch.empty_like(s[:, :1])
    for i in range(n):
        grid, mask = warps.pairs(i)
        mask = mask.to(s.device, torch.float32).clone()
        mask[i] = 1.0
        if grid is None:
            warped = s
        else:
            warped = F.grid_sample(s, grid.to(s.device), mode="bilinear", padding_mode="zeros", align_corners=False)
            warped[i] = s[i]
        weight = k[:, i].view(n, 1, 1, 1) * mask
        drive[i] = (weight * warped).sum(0)
        z_pix[i] = weight.sum(0)
    row_sum = k.sum(dim=1).view(n, 1, 1, 1)
    repel = (2.0 / h) * (torch.einsum("ji,jchw->ichw", k, x) - x * row_sum)
    if normalization == "row":
        g = drive / z_pix + repulsion * repel / row_sum
        weight = z_pix / z_pix
    elif normalization == "mean":
        g = drive / z_pix.mean() + repulsion * repel / row_sum.mean()
        weight = z_pix / z_pix.mean()
    else:
        g = (drive + repulsion * repel) / n
        weight = z_pix / n
    return (g.to(scores.dtype), weight) if with_weight else g.to(scores.dtype)
