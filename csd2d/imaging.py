"""Small conversions between PIL images, tensors and model-friendly sizes; the progress bar (labelled pictures
for people are :mod:`csd2d.sheets`)."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ["pil_to_tensor", "tensor_to_pil", "to_model_size", "from_model_size", "encode_pil", "decode_pil",
           "progress_bar"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → ``[1, 3, H, W]`` float tensor in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` tensor in [0, 1] → RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def to_model_size(image: Image.Image, multiple: int) -> Image.Image:
    """Resize to the nearest size whose sides are multiples of ``multiple`` (the VAE factor); no cropping."""
    w, h = image.size
    size = (max(multiple, round(w / multiple) * multiple), max(multiple, round(h / multiple) * multiple))
    return image if size == image.size else image.resize(size, Image.LANCZOS)


def from_model_size(image: Image.Image, size: Tuple[int, int], alpha: Optional[Image.Image] = None) -> Image.Image:
    """Resize back to the original ``size`` and re-attach an alpha channel if there was one."""
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.LANCZOS)
    if alpha is not None:
        image = image.convert("RGBA")
        image.putalpha(alpha)
    return image


def encode_pil(guidance, images: Sequence[Image.Image], config) -> torch.Tensor:
    """RGB images of one size → fp32 scaled latents ``[B, C, h, w]``: each resized to the VAE multiple
    (:func:`to_model_size`) and encoded with ``config``'s ``batch`` / ``vae_tile`` / ``vae_overlap``."""
    f = guidance.vae_scale_factor
    x = torch.cat([pil_to_tensor(to_model_size(image, f)) for image in images]).to(guidance.device)
    return guidance.encode_images(x, max_batch=config.batch, tile=config.vae_tile, overlap=config.vae_overlap).float()


def decode_pil(guidance, latents: torch.Tensor, size: Tuple[int, int], config,
               alphas: Optional[Sequence[Optional[Image.Image]]] = None) -> List[Image.Image]:
    """The inverse of :func:`encode_pil`: decode, resize back to ``size`` and re-attach ``alphas`` (one per image,
    ``None`` for none)."""
    out = guidance.decode_latents(latents, max_batch=config.batch, tile=config.vae_tile, overlap=config.vae_overlap)
    alphas = alphas if alphas is not None else [None] * len(out)
    return [from_model_size(tensor_to_pil(img), size, alpha) for img, alpha in zip(out, alphas)]


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, desc: str) -> Iterator:
    """A tqdm progress bar (a no-op when disabled)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def model_hw(height: int, width: int, multiple: int) -> Tuple[int, int]:
    """The nearest ``(height, width)`` whose sides are positive multiples of ``multiple`` (the VAE factor);
    the size rule of :func:`to_model_size`, for tensors."""
    return max(multiple, round(height / multiple) * multiple), max(multiple, round(width / multiple) * multiple)
