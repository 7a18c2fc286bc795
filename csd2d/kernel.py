"""RBF kernel, median bandwidth and the SVGD mixing used by Collaborative Score Distillation.

Pure torch, no models. Every function works for any number of particles ``N >= 1``, on any device and in
fp32, fp16 or bf16: the arithmetic runs in fp32 and results are cast back to the input dtype.

References: Liu & Wang, "Stein Variational Gradient Descent" (2016), eq. (8); Kim et al., "Collaborative
Score Distillation for Consistent Visual Synthesis" (2023), eq. (6).
"""

from __future__ import annotations

import math
import typing
from typing import Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from .config import Normalization

__all__ = [
    "pairwise_sq_dists",
    "median_bandwidth",
    "rbf_kernel",
    "rbf_kernel_grad",
    "csd_gradient",
    "coarse_scores",
]


def _flat32(particles: Tensor) -> Float[Tensor, "N D"]:
    if particles.ndim < 1 or particles.shape[0] < 1:
        raise ValueError(
            f"particles: expected a tensor of shape [N, ...] with N >= 1, got shape {tuple(particles.shape)}"
        )
    return particles.reshape(particles.shape[0], -1).float()


def pairwise_sq_dists(flat: Float[Tensor, "N D"]) -> Float[Tensor, "N N"]:
    """Squared Euclidean distances ``||x_i − x_j||²`` between flattened particles.

    Computed row by row from differences (not the Gram form), so the diagonal is exactly zero and there is
    no cancellation error for large ``D``; peak memory is ``N × D``.
    """
    return torch.stack([(flat - row).pow(2).sum(-1) for row in flat])


def median_bandwidth(sq_dists: Float[Tensor, "N N"]) -> Tensor:
    """Median heuristic ``h = median_{i≠j} ||x_i − x_j||² / log(N + 1)`` (SVGD, Liu & Wang 2016, sec. 5).

    The median runs over the off-diagonal pairs only. Counting the zero diagonal (as the official CSD code
    does) gives ``h = 0`` and a NaN kernel for ``N = 2``. With a single particle there are no pairs and the
    bandwidth is 1 (any positive value gives the same kernel, ``k(x, x) = 1``). A zero median (identical
    particles) is clamped to a tiny positive value so the kernel stays finite.
    """
    n = sq_dists.shape[0]
    if n < 2:
        return torch.ones((), device=sq_dists.device, dtype=torch.float32)
    off_diag = sq_dists[~torch.eye(n, dtype=torch.bool, device=sq_dists.device)]
    h = off_diag.float().median() / math.log(n + 1)
    return h.clamp_min(torch.finfo(torch.float32).tiny)


def _bandwidth(sq_dists: Tensor, bandwidth: Optional[float], scale: Optional[float]) -> Tensor:
    scale = 1.0 if scale is None else scale
    if not scale > 0:
        raise ValueError(f"bandwidth_scale: expected a positive factor, got {scale!r}")
    if bandwidth is None:
        return median_bandwidth(sq_dists) * scale
    if not bandwidth > 0:
        raise ValueError(f"bandwidth: expected a positive number or None (median heuristic), got {bandwidth!r}")
    return torch.tensor(float(bandwidth), device=sq_dists.device)


def rbf_kernel(
    particles: Float[Tensor, "N ..."], bandwidth: Optional[float] = None, bandwidth_scale: Optional[float] = None
) -> Tuple[Float[Tensor, "N N"], Tensor]:
    """RBF kernel matrix ``K[j, i] = k(x_j, x_i) = exp(−||x_j − x_i||² / h)`` on flattened particles.

    Args:
        particles: ``N`` particles of any trailing shape; flattened per particle.
        bandwidth: fixed ``h``; ``None`` uses :func:`median_bandwidth`.
        bandwidth_scale: multiplies the median heuristic's ``h``; None is 1 (a fixed ``bandwidth`` is used as
            given).

    Returns:
        ``(K, h)``: the symmetric ``[N, N]`` kernel in fp32 and the bandwidth used (fp32 scalar).
    """
    d = pairwise_sq_dists(_flat32(particles))
    h = _bandwidth(d, bandwidth, bandwidth_scale)
    return torch.exp(-d / h), h


def rbf_kernel_grad(
    particles: Float[Tensor, "N ..."], bandwidth: Optional[float] = None
) -> Float[Tensor, "N N ..."]:
    """Closed-form ``G[j, i] = ∇_{x_j} k(x_j, x_i) = −(2 / h) (x_j − x_i) k(x_j, x_i)``, ``h`` held constant.

    Materialises ``[N, N, *shape]``; :func:`csd_gradient` uses the summed form instead. Returned in the
    input dtype.
    """
    flat = _flat32(particles)
    k, h = rbf_kernel(particles, bandwidth)
    diff = flat[:, None, :] - flat[None, :, :]
    grad = -(2.0 / h) * diff * k[:, :, None]
    return grad.reshape(k.shape + particles.shape[1:]).to(particles.dtype)


def csd_gradient(
    scores: Float[Tensor, "N ..."],
    particles: Float[Tensor, "N ..."],
    *,
    repulsion: float,
    normalization: Normalization,
    bandwidth: Optional[float] = None,
    bandwidth_scale: Optional[float] = None,
    with_weight: bool = False,
):
    """SVGD descent direction of Collaborative Score Distillation (Kim et al. 2023, eq. 6), normalised per particle.

    ``g_i = (1/Z_i) Σ_j [ k(x_j, x_i) · s_j − repulsion · ∇_{x_j} k(x_j, x_i) ]``

    with ``Z_i = N`` (``normalization="count"``: the paper's eq. 6 and the official code) or ``Z_i = Σ_j k(x_j, x_i)``,
    particle ``i``'s kernel row sum (``normalization="row"``: the drive is a kernel-weighted mean of the scores, so
    the step keeps the size of one score at any ``N``; see :attr:`csd2d.config.StepConfig.normalization`), or
    ``Z_i = mean_l Σ_j k(x_j, x_l)`` (``normalization="mean"``: the paper's relative weights, the mean step kept).
    ``s_j`` is particle ``j``'s score in "noise" convention (``ε̂ − ε`` for SDS, ``ε̂_target − ε̂_source`` for
    CSD-Edit, i.e. proportional to ``−∇ log p``). The update ``x ← x − lr · g`` moves particles toward high density
    while the kernel-gradient term pushes them apart. (The paper writes that term with the ascent sign; this is
    the descent form of the official code.) With ``N = 1`` every form equals ``scores``.

    The summed kernel gradient is evaluated without the ``[N, N, D]`` tensor:
    ``−Σ_j ∇_{x_j} k(x_j, x_i) = (2/h) (Σ_j k_ji x_j − x_i Σ_j k_ji)``.

    Args:
        scores: per-particle scores, same shape as ``particles``.
        particles: the points the kernel is evaluated on (for CSD-Edit, the noisy target latents).
        repulsion: weight of the kernel-gradient (repulsive) term; SVGD proper is 1 (the default of
            :attr:`csd2d.config.StepConfig.repulsion`).
        normalization: ``"row"`` (divide by ``Σ_j k_ji``), ``"mean"`` (by the mean row sum) or ``"count"`` (by
            ``N``); callers pass
            :attr:`csd2d.config.StepConfig.normalization`.
        bandwidth: fixed RBF bandwidth ``h``; ``None`` uses the median heuristic.
        bandwidth_scale: multiplies the median heuristic's ``h``; None is 1
            (:attr:`csd2d.config.StepConfig.bandwidth_scale`).
        with_weight: also return each particle's total weight ``Σ_j k_ji / Z_i`` (1 with ``"row"``), shaped
            ``[N, 1, ...]`` to broadcast against ``scores``: what the drive of a field of ones would be
            (``share_grid`` gives each particle's own detail this weight, :func:`csd2d.csd.csd_edit_step`).

    Returns:
        The descent direction, same shape and dtype as ``scores``; with ``with_weight``, ``(direction, weight)``.
    """
    if scores.shape != particles.shape:
        raise ValueError(
            f"scores: expected the same shape as particles {tuple(particles.shape)}, got {tuple(scores.shape)}"
        )
    if normalization not in typing.get_args(Normalization):
        raise ValueError(
            f"normalization: expected one of {list(typing.get_args(Normalization))}, got {normalization!r}"
        )
    flat_x = _flat32(particles)
    flat_s = _flat32(scores)
    k, h = rbf_kernel(particles, bandwidth, bandwidth_scale)  # symmetric: k[j, i] == k[i, j]
    row_sum = k.sum(dim=1, keepdim=True)  # Σ_j k_ji >= k_ii = 1
    drive = k @ flat_s
    repel = (2.0 / h) * (k @ flat_x - flat_x * row_sum)
    z = {"row": row_sum, "mean": row_sum.mean(), "count": particles.shape[0]}[normalization]
    g = (drive + repulsion * repel) / z
    g = g.reshape(scores.shape).to(scores.dtype)
    if not with_weight:
        return g
    return g, (row_sum / z).reshape((-1,) + (1,) * (scores.ndim - 1))


def coarse_scores(scores: Float[Tensor, "N C h w"], grid: int) -> Float[Tensor, "N C h w"]:
    """Each score's coarse part: its mean over a ``grid × grid`` grid of cells (adaptive average pooling),
    spread back over the latent bilinearly; ``grid = 1`` gives each channel's mean everywhere. The rest,
    ``scores − coarse_scores(scores, grid)``, is the particle's own detail, which
    :attr:`csd2d.config.StepConfig.share_grid` keeps out of the kernel's mixing."""
    if scores.ndim != 4:
        raise ValueError(f"scores: expected a tensor of shape [N, C, h, w], got shape {tuple(scores.shape)}")
    if not (isinstance(grid, int) and grid >= 1):
        raise ValueError(f"grid: expected a grid side >= 1, got {grid!r}")
    flat = scores.float()
    pooled = torch.nn.functional.adaptive_avg_pool2d(flat, min(grid, min(flat.shape[-2:])))
    if pooled.shape[-1] == 1 and pooled.shape[-2] == 1:  # the channel means exactly (bilinear is 1 ulp off)
        return pooled.expand_as(flat).to(scores.dtype)
    return torch.nn.functional.interpolate(pooled, size=flat.shape[-2:], mode="bilinear",
                                           align_corners=False).to(scores.dtype)
