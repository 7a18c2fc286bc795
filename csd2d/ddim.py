"""InstructPix2Pix image-to-image sampling with DDIM: Instruct-NeRF2NeRF's dataset-update edit.

The noise prediction is :meth:`csd2d.guidance.IP2PGuidance.predict_noise`, i.e. the one three-way guidance formula
(:func:`csd2d.guidance.ip2p_guidance`) that CSD-Edit also uses.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from .guidance import IP2PGuidance

__all__ = ["ddim_timesteps", "ddim_step", "ddim_edit"]


def ddim_timesteps(t_start: int, steps: int) -> Tensor:
    """``steps`` descending timesteps evenly spaced from ``t_start`` towards 0: ``round(t_start · (S − k) / S)``,
    ``k = 0 … S−1`` (the last step then jumps to the clean sample)."""
    if steps < 1:
        raise ValueError(f"steps: expected a positive number of DDIM steps, got {steps}")
    k = torch.arange(steps)
    return torch.round(t_start * (steps - k).double() / steps).long()


def ddim_step(eps: Tensor, x_t: Tensor, alpha_t: Tensor, alpha_prev: Tensor) -> Tensor:
    """Deterministic DDIM update (Song et al. 2021, eq. 12 with σ = 0):
    ``x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t``, ``x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε``."""
    x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


@torch.no_grad()
def ddim_edit(
    guidance: IP2PGuidance,
    latents: Float[Tensor, "N C h w"],
    source_latents: Float[Tensor, "N C h w"],
    text_emb: Float[Tensor, "N L D"],
    *,
    t_start: int,
    steps: int,
    guidance_scale: float,
    image_guidance_scale: float,
    generator: Optional[torch.Generator] = None,
    max_batch: Optional[int] = None,
) -> Float[Tensor, "N C h w"]:
    """Noise ``latents`` to ``t_start`` and denoise them with ``steps`` DDIM steps of InstructPix2Pix guidance
    conditioned on ``source_latents`` (Instruct-NeRF2NeRF, Haque et al. 2023, Sec. 4: the render is noised, the
    original photo is the image condition).

    Args:
        latents: scaled latents of the current renders.
        source_latents: scaled latents of the original photos (the image condition).
        text_emb: instruction embeddings ``[N, L, D]``.
        t_start: the noise level, an integer timestep of the model's schedule.
        steps: DDIM steps from ``t_start`` to the clean sample.
        generator: random source of the noise.
    Returns:
        The edited scaled latents (fp32).
    """
    num = len(guidance.alphas_cumprod)
    if not 0 < t_start < num:
        raise ValueError(f"t_start: expected 0 < t_start < {num} (the model's schedule), got {t_start}")
    alphas = guidance.alphas_cumprod.to(latents.device)
    timesteps = ddim_timesteps(t_start, steps).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu")
    x = guidance.add_noise(latents.float(), noise.to(latents.device), timesteps[:1]).float()
    cond = guidance.condition_latents(source_latents)
    one = torch.ones((), device=latents.device)
    for i, t in enumerate(timesteps):
        eps = guidance.predict_noise(x, cond, text_emb, t.reshape(1), guidance_scale, image_guidance_scale,
                                     max_batch).to(x.device)
        alpha_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else one
        x = ddim_step(eps, x, alphas[t], alpha_prev)
    return x
