"""``CSDEditor``: the diffusers-style entry point for panorama and video editing."""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Union

import torch
from PIL import Image

from .config import EditConfig, PanoramaConfig, VideoConfig, with_overrides
from .guidance import DEFAULT_MODEL, IP2PGuidance
from .imaging import decode_pil, encode_pil
from .io import InputError, check_same_size, match_mode, split_alpha
from .panorama import edit_panorama
from .video import edit_video

__all__ = ["CSDEditor", "check_prompts"]


def check_prompts(prompt: Optional[str], prompts: Optional[Sequence[str]]) -> List[str]:
    """The instructions to use: exactly one of ``prompt`` / ``prompts``, each non-empty."""
    if prompt is not None and prompts:
        raise InputError("prompt: expected either prompt or prompts, got both")
    chosen = [prompt] if prompt is not None else list(prompts or [])
    if not chosen:
        raise InputError("prompt: expected an instruction, got none")
    for p in chosen:
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt: expected a non-empty instruction, got {p!r}")
    return chosen


class CSDEditor:
    """Consistent text-instructed editing of panoramas and videos with Collaborative Score Distillation.

    Example::

        editor = CSDEditor.from_pretrained("timbrooks/instruct-pix2pix", device="cuda", torch_dtype=torch.float16)
        out = editor.edit_panorama(image, prompt="turn into van gogh style painting")
        frames = editor.edit_video(frames, prompt="make his shirt yellow")
    """

    def __init__(self, guidance: IP2PGuidance) -> None:
        self.guidance = guidance

    @classmethod
    def from_pretrained(
        cls,
        model: Union[str, os.PathLike] = DEFAULT_MODEL,
        *,
        device: Union[str, torch.device] = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        arg_name: str = "model",
        consistency_decoder: Optional[Union[str, os.PathLike]] = None,
        consistency_decoder_arg: str = "consistency_decoder",
        attention: str = "sdpa",
        compile_unet: bool = False,
        offload: bool = False,
    ) -> "CSDEditor":
        """Load an InstructPix2Pix model (hub id or local directory, safetensors only).

        ``consistency_decoder`` (e.g. ``openai/consistency-decoder``) decodes the edits instead of the VAE.
        ``attention`` (``"sdpa"`` or ``"sliced"``), ``compile_unet`` and ``offload`` (text encoder and VAE on the
        CPU between uses) are the memory controls of :meth:`IP2PGuidance.configure_memory`.
        """
        guidance = IP2PGuidance.from_pretrained(
            model,
            device=device,
            torch_dtype=torch_dtype,
            arg_name=arg_name,
            consistency_decoder=consistency_decoder,
            consistency_decoder_arg=consistency_decoder_arg,
            attention=attention,
            compile_unet=compile_unet,
            offload=offload,
        )
        return cls(guidance)

    def edit_panorama(
        self,
        image: Image.Image,
        prompt: Optional[str] = None,
        *,
        prompts: Optional[Sequence[str]] = None,
        config: Optional[PanoramaConfig] = None,
        callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
        progress: bool = True,
        **overrides,
    ) -> Image.Image:
        """Edit a panorama or large image; returns an image of the same size and mode family (grayscale of any
        bit depth → ``L``, colour → ``RGB``, an alpha channel kept exactly).

        Args:
            image: PIL image (RGB, RGBA, grayscale, …).
            prompt: the instruction. Or ``prompts``: several instructions laid out left to right across the
                width with smooth transitions (region editing).
            config: all knobs (:class:`PanoramaConfig`); keyword ``overrides`` replace single fields,
                e.g. ``steps=100, seed=3, coupling=False``.
            callback: called as ``callback(step, total, latents)`` after every step.
            progress: show a progress bar.
        """
        if not isinstance(image, Image.Image):
            raise InputError(f"image: expected a PIL.Image, got {type(image).__name__}")
        cfg = with_overrides(config or PanoramaConfig(), **overrides)
        out = edit_panorama(self.guidance, image, check_prompts(prompt, prompts), cfg, callback, progress)
        return match_mode(out, image)

    def edit_video(
        self,
        frames: Sequence[Image.Image],
        prompt: str,
        *,
        config: Optional[VideoConfig] = None,
        callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
        progress: bool = True,
        **overrides,
    ) -> List[Image.Image]:
        """Edit video frames (list of PIL images of one size); returns the same number of frames, each in its
        input's mode family (grayscale stays grayscale, alpha is kept exactly, as for :meth:`edit_panorama`).

        ``config`` is a :class:`VideoConfig`; keyword ``overrides`` replace single fields.
        """
        (prompt,) = check_prompts(prompt, None)
        frames = list(frames)
        if not all(isinstance(f, Image.Image) for f in frames):
            raise InputError("frames: expected a list of PIL images")
        cfg = with_overrides(config or VideoConfig(), **overrides)
        out = edit_video(self.guidance, frames, prompt, cfg, callback, progress)
        return [match_mode(o, f) for o, f in zip(out, frames)]

    @torch.no_grad()
    def reconstruct(self, images: Sequence[Image.Image], config: Optional[EditConfig] = None) -> List[Image.Image]:
        """What an edit that changes nothing outputs: each image through the VAE and back, with the same
        resizing, tiling and alpha handling as :meth:`edit_panorama` and :meth:`edit_video`.

        The VAE's own loss is the same for every editing method; :mod:`csd2d.demo` measures edits against this
        round trip so that the codec does not count as inconsistency (see :func:`csd2d.compare.compare_video`).
        ``config`` supplies ``vae_tile``/``vae_overlap``/``batch`` (default :class:`PanoramaConfig`).
        """
        images = list(images)
        if not images or not all(isinstance(i, Image.Image) for i in images):
            raise InputError("images: expected a non-empty list of PIL images")
        cfg = config or PanoramaConfig()
        split = [split_alpha(i) for i in images]
        size = check_same_size([rgb for rgb, _ in split], "images")
        latents = encode_pil(self.guidance, [rgb for rgb, _ in split], cfg)
        out = decode_pil(self.guidance, latents, size, cfg, [alpha for _, alpha in split])
        return [match_mode(o, i) for o, i in zip(out, images)]
