"""The two dataset updates, as pure functions of a rendered job (they may run on another thread or device).

- ``csd``: CSD-Edit (Kim et al. 2023) of N views jointly, starting from the photos plus a share (``carry``) of the
  scene's current edit, so that repeated updates settle instead of adding up.
- ``in2n``: Instruct-NeRF2NeRF's iterative dataset update (Haque et al. 2023): one view's render noised to a
  random timestep and denoised with DDIM steps of InstructPix2Pix, conditioned on the original photo.

Both score with :class:`csd2d.IP2PGuidance` (one three-way guidance formula).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from csd2d import EditConfig, IP2PGuidance, optimize_latents
from csd2d.align import Warps
from csd2d.ddim import ddim_edit
from csd2d.guided import guided_transfer

__all__ = ["EditJob", "csd_update", "in2n_update", "in2n_timestep"]


@dataclass
class EditJob:
    """Everything a dataset update needs, detached from the scene."""

    update: int
    indices: List[int]
    renders: Tensor  # [N, 3, h, w] in [0, 1]
    originals: Tensor  # [N, 3, h, w] in [0, 1]
    sizes: List[Tuple[int, int]]  # full (H, W) of each training image
    warps: Optional[Warps] = None  # the views' depth warps (edit.align depth, csd_nerfstudio.warps), for csd


def _latents(g: IP2PGuidance, job: EditJob, cfg: EditConfig, renders: bool = True) -> Tuple[Tensor, Tensor]:
    """The photos' and the renders' latents; without ``renders`` the second is the first (not encoded again)."""
    tile = cfg.vae_tile or None
    source = g.encode_images(job.originals.to(g.device), max_batch=cfg.max_batch, tile=tile,
                             overlap=cfg.vae_overlap).float()
    if not renders:
        return source, source
    target = g.encode_images(job.renders.to(g.device), max_batch=cfg.max_batch, tile=tile,
                             overlap=cfg.vae_overlap).float()
    return source, target


def _decode(g: IP2PGuidance, latents: Tensor, cfg: EditConfig) -> Tensor:
    return g.decode_latents(latents, max_batch=cfg.max_batch, tile=cfg.vae_tile or None,
                            overlap=cfg.vae_overlap).cpu()


def _edited_images(g: IP2PGuidance, start: Optional[Tensor], start_latents: Optional[Tensor], edited: Tensor,
                   cfg: EditConfig, guided_radius: int) -> Tensor:
    """The edited latents as images: decoded, or with ``guided_radius`` > 0 the decoded edit carried onto the
    sharp start image ``start`` (csd2d.guided.guided_transfer from the decoded ``start_latents``; both are read only
    then)."""
    after = _decode(g, edited, cfg)
    if guided_radius <= 0:
        return after
    before = _decode(g, start_latents, cfg)
    return guided_transfer(start.float().cpu(), before, after, guided_radius)


def csd_update(g: IP2PGuidance, job: EditJob, cfg: EditConfig, text_emb: Tensor, source_emb: Tensor,
               generator: torch.Generator, carry: float, on_step=None, guided_radius: int = 0) -> Tensor:
    """CSD-Edit the job's views jointly; edited images ``[N, 3, h, w]`` (CPU).

    The latents start at ``z_photo + carry·(z_render − z_photo)`` (a share of the scene's current edit) and take
    ``cfg.steps`` SGD steps. With ``carry < 1`` repeated updates settle instead of adding up. ``on_step(s)`` is
    called after each step (progress). With ``job.warps`` the kernel mixes aligned scores (csd2d.align). With
    ``guided_radius`` > 0 the edit is carried onto ``photo + carry·(render − photo)`` (:func:`_edited_images`)."""
    n = len(job.indices)
    source, render = _latents(g, job, cfg, renders=carry > 0)
    target = torch.lerp(source, render, carry)  # a new tensor: the source stays the photos'
    start = target.clone() if guided_radius > 0 else None  # the optimisation moves target in place
    with torch.no_grad():
        optimize_latents(g, target, source, text_emb.float().expand(n, -1, -1),
                         source_emb.float().expand(n, -1, -1), cfg, generator=generator, on_step=on_step,
                         warps=job.warps)
        start_image = None if start is None else torch.lerp(job.originals.float(), job.renders.float(), carry)
        return _edited_images(g, start_image, start, target, cfg, guided_radius)


def in2n_timestep(t_range: Tuple[int, int], generator: torch.Generator) -> int:
    """IN2N's noise level: an integer timestep uniform in ``t_range`` (IN2N: ``[0.02, 0.98]·T``), inclusive."""
    return int(torch.randint(t_range[0], t_range[1] + 1, (1,), generator=generator))


def in2n_update(g: IP2PGuidance, job: EditJob, cfg: EditConfig, text_emb: Tensor, generator: torch.Generator,
                ddim_steps: int, t_range: Tuple[int, int], guided_radius: int = 0) -> Tensor:
    """IN2N's edit of the job's renders: noise to ``t ~ U[t_range]``, denoise with ``ddim_steps`` DDIM steps
    of the three-way guidance conditioned on the original photos; edited images ``[N, 3, h, w]`` (CPU). With
    ``guided_radius`` > 0 the edit is carried onto the sharp renders (:func:`_edited_images`)."""
    n = len(job.indices)
    source, target = _latents(g, job, cfg)
    t = in2n_timestep(t_range, generator)
    edited = ddim_edit(g, target, source, text_emb.float().expand(n, -1, -1), t_start=t, steps=ddim_steps,
                       guidance_scale=cfg.guidance_scale, image_guidance_scale=cfg.image_guidance_scale,
                       generator=generator, max_batch=cfg.max_batch)
    return _edited_images(g, job.renders, target, edited, cfg, guided_radius)
