"""Panorama / large-image editing: overlapping latent windows are the CSD particles."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from .align import OffsetWarps
from .config import PanoramaConfig
from .csd import csd_edit_step
from .guidance import IP2PGuidance
from .io import InputError, split_alpha
from .views import crop_windows, region_weights, scatter_average, window_grid
from .imaging import decode_pil, encode_pil, progress_bar

__all__ = ["edit_panorama", "window_prompt_embeddings"]

Callback = Callable[[int, int, torch.Tensor], None]


def window_prompt_embeddings(
    guidance: IP2PGuidance, prompts: Sequence[str], window_centers: Sequence[int], width: int, blend: float
) -> torch.Tensor:
    """Per-window instruction embeddings: the prompts' embeddings mixed by :func:`region_weights` at the
    window's centre column. With one prompt every window gets that prompt's embedding."""
    emb = guidance.encode_prompt(list(prompts)).float()  # [P, L, D]
    weights = region_weights(len(prompts), width, blend)[:, list(window_centers)].to(emb.device)  # [P, n]
    return torch.einsum("pn,pld->nld", weights, emb)


@torch.no_grad()
def edit_panorama(
    guidance: IP2PGuidance,
    image: Image.Image,
    prompts: Sequence[str],
    config: PanoramaConfig,
    callback: Optional[Callback] = None,
    progress: bool = True,
) -> Image.Image:
    """Edit a panorama or large image with CSD over overlapping latent windows.

    The image is resized to the nearest multiple of the VAE factor (and back at the end, so the output has
    the input's exact size); windows of ``config.window`` latents every ``config.stride`` cover the whole
    latent, a last window aligned to each edge. Each step picks ``config.batch`` random windows, noises the
    full latent once (overlapping windows share noise), computes the CSD-Edit gradient over those windows and
    scatter-averages it back onto the full latent. An alpha channel is kept unchanged. With
    ``config.align = "offsets"`` the kernel mixes each window's score where the others show the same canvas
    pixels (:class:`csd2d.align.OffsetWarps`).
    """
    rgb, alpha = split_alpha(image)
    f = guidance.vae_scale_factor
    need = config.window * f
    if min(rgb.size) < need:
        raise InputError(
            f"image: expected at least {need}x{need} px (one window of {config.window} latents × VAE factor {f}), "
            f"got {rgb.size[0]}x{rgb.size[1]}; use a larger image or a smaller window"
        )
    device = guidance.device
    source = encode_pil(guidance, [rgb], config)
    target = source.clone()
    _, _, h, w = source.shape
    offsets = window_grid(h, w, config.window, config.stride)
    win_emb = window_prompt_embeddings(
        guidance, prompts, [x0 + config.window // 2 for _, x0 in offsets], w, config.blend
    )
    src_emb = guidance.encode_prompt([config.source_prompt]).float()
    gen = torch.Generator().manual_seed(config.seed)
    batch = min(config.batch, len(offsets))
    with progress_bar(config.steps, progress, "panorama") as bar:
        for step in range(config.steps):
            pick = torch.randperm(len(offsets), generator=gen)[:batch].tolist()
            chosen = [offsets[i] for i in pick]
            noise = torch.randn(source.shape, generator=gen).to(device)
            res = csd_edit_step(
                guidance,
                crop_windows(target, chosen, config.window),
                crop_windows(source, chosen, config.window),
                win_emb[pick],
                src_emb.expand(batch, -1, -1),
                config,
                generator=gen,
                noise=crop_windows(noise, chosen, config.window),
                warps=OffsetWarps(chosen, config.window) if config.align == "offsets" else None,
            )
            target -= config.lr_at(step) * scatter_average(res.grad.float(), chosen, target.shape)
            bar.update(1)
            if callback is not None:
                callback(step, config.steps, target)
    return decode_pil(guidance, target, rgb.size, config, [alpha])[0]
