"""The CSD-Edit step: InstructPix2Pix scores of all particles, mixed by the SVGD kernel.

This is the one loop body shared by panorama, video and the nerfstudio pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from .config import EditConfig, StepConfig
from .guidance import IP2PGuidance
from .kernel import csd_gradient

__all__ = ["StepResult", "csd_edit_step", "optimize_latents"]


@dataclass
class StepResult:
    grad: Tensor
    """Descent direction on the target latents (``x ← x − lr · grad``)."""
    scores: Tensor
    """The uncoupled per-particle scores ``w(t)(ε̂_tgt − ε̂_src)``."""
    t: Tensor
    """Timestep used."""


def csd_edit_step(
    guidance: IP2PGuidance,
    target_latents: Float[Tensor, "N C h w"],
    source_latents: Float[Tensor, "N C h w"],
    target_emb: Float[Tensor, "N L D"],
    source_emb: Float[Tensor, "N L D"],
    config: Optional[StepConfig] = None,
    *,
    generator: Optional[torch.Generator] = None,
    noise: Optional[Tensor] = None,
    t: Optional[Tensor] = None,
) -> StepResult:
    """One CSD-Edit step (Kim et al. 2023, eqs. 6 and 8): the gradient on the target latents.

    The kernel is evaluated on the noisy target latents ``z_t`` (as in the paper); the scores are
    ``w(t)(ε̂_tgt − ε̂_src)``. With ``config.coupling = False`` every particle gets its own score only
    (independent delta score distillation).

    Args:
        guidance: the InstructPix2Pix scorer.
        target_latents: the ``N`` particles (scaled latents).
        source_latents: per-particle source latents (scaled), also the image condition.
        target_emb: per-particle instruction embeddings ``[N, L, D]``.
        source_emb: per-particle source-prompt embeddings ``[N, L, D]``.
        config: guidance scales, timestep range, coupling and kernel options (default :class:`StepConfig`).
        generator: random source for the timestep and the noise.
        noise / t: explicit noise and timestep (for tests and for reusing draws).
    """
    config = StepConfig() if config is None else config
    res = guidance.edit_scores(
        target_latents,
        source_latents,
        target_emb,
        source_emb,
        guidance_scale=config.guidance_scale,
        image_guidance_scale=config.image_guidance_scale,
        t_min=config.t_min,
        t_max=config.t_max,
        generator=generator,
        noise=noise,
        t=t,
        max_batch=config.max_batch,
    )
    if config.coupling:
        grad = csd_gradient(res.scores, res.noisy_targets, bandwidth=config.bandwidth, repulsion=config.repulsion)
    else:
        grad = res.scores
    return StepResult(grad=grad.to(target_latents.dtype), scores=res.scores, t=res.t)


def optimize_latents(
    guidance: IP2PGuidance,
    target: Float[Tensor, "N C h w"],
    source: Float[Tensor, "N C h w"],
    target_emb: Float[Tensor, "N L D"],
    source_emb: Float[Tensor, "N L D"],
    config: EditConfig,
    *,
    generator: Optional[torch.Generator] = None,
    anchors: int = 0,
    on_step: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Run ``config.steps`` CSD-Edit steps of SGD on ``target`` in place: ``x ← x − lr(step) · g``.

    The first ``anchors`` particles take part in the kernel but are not updated (already edited frames or
    views that the rest should agree with). Returns ``target``.

    Args:
        config: an :class:`csd2d.config.EditConfig` (steps, learning-rate schedule and the step's knobs).
        on_step: called with the step index after every update (progress bars, callbacks).
    """
    if not 0 <= anchors < target.shape[0]:
        raise ValueError(f"anchors: expected 0 <= anchors < N = {target.shape[0]}, got {anchors}")
    for step in range(config.steps):
        res = csd_edit_step(guidance, target, source, target_emb, source_emb, config, generator=generator)
        target[anchors:] -= config.lr_at(step) * res.grad[anchors:].to(target.dtype)
        if on_step is not None:
            on_step(step)
    return target
