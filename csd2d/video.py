"""Video editing: frames are the CSD particles, long videos go in overlapping chunks."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from .config import VideoConfig
from .csd import optimize_latents
from .flow import flow_warps
from .guidance import IP2PGuidance
from .imaging import decode_pil, encode_pil, progress_bar
from .io import InputError, check_same_size, split_alpha

__all__ = ["chunk_ranges", "edit_video"]

Callback = Callable[[int, int, torch.Tensor], None]


def chunk_ranges(num_frames: int, batch: int, overlap: int) -> List[Tuple[int, int, int]]:
    """Split ``num_frames`` into chunks of at most ``batch`` frames, consecutive chunks sharing ``overlap``.

    Returns ``(start, end, anchors)`` triples: frames ``[start, start + anchors)`` were edited by an earlier
    chunk and take part in this chunk's kernel as fixed anchors. The last chunk is aligned to the end (so it
    may share more than ``overlap`` frames with the one before).
    """
    if num_frames < 1:
        raise InputError(f"frames: expected at least one frame, got {num_frames}")
    if not 0 <= overlap < batch:
        raise ValueError(f"overlap: expected 0 <= overlap < batch ({batch}), got {overlap}")
    chunks: List[Tuple[int, int, int]] = []
    start, done = 0, 0
    while done < num_frames:
        start = max(0, min(start, num_frames - batch))
        end = min(start + batch, num_frames)
        chunks.append((start, end, done - start))
        done = end
        start = end - overlap
    return chunks


@torch.no_grad()
def edit_video(
    guidance: IP2PGuidance,
    frames: Sequence[Image.Image],
    prompt: str,
    config: VideoConfig,
    callback: Optional[Callback] = None,
    progress: bool = True,
) -> List[Image.Image]:
    """Edit video frames with CSD; returns as many frames as given, each at the input size.

    Frames are resized to the VAE multiple and back (an alpha channel is kept unchanged). Chunks of
    ``config.batch`` frames are optimised one
    after the other for ``config.steps`` steps each; the ``config.overlap`` frames a chunk shares with the
    previous one are already edited and stay fixed, but their noisy latents join the kernel, which pulls the
    new frames toward the edit already made. With a single frame this is plain delta score distillation.
    With ``config.align = "flow"`` the kernel mixes scores aligned by optical flow between the source frames
    (:mod:`csd2d.flow`), computed among a chunk's frames when it starts (``batch²`` flows and memory per chunk
    rather than ``frames²``).
    """
    if len(frames) == 0:
        raise InputError("frames: expected at least one frame, got an empty list")
    rgb, alphas = zip(*[split_alpha(f) for f in frames])
    size = check_same_size(rgb, "frames")
    source = encode_pil(guidance, rgb, config)
    target = source.clone()
    chunks = chunk_ranges(len(rgb), config.batch, config.overlap)
    gen = torch.Generator().manual_seed(config.seed)
    total = len(chunks) * config.steps
    emb = guidance.encode_prompt([prompt]).float()
    src_emb = guidance.encode_prompt([config.source_prompt]).float()
    with progress_bar(total, progress, "video") as bar:
        for c, (start, end, anchors) in enumerate(chunks):
            n = end - start

            def on_step(step: int, c: int = c) -> None:
                bar.update(1)
                if callback is not None:
                    callback(c * config.steps + step, total, target)

            chunk = target[start:end]
            # a chunk mixes only its own frames: their pairs' warps, what Warps.subset would keep of all frames'
            aligned = config.align == "flow" and config.coupling
            warps = flow_warps(rgb[start:end], tuple(source.shape[-2:])) if aligned else None
            optimize_latents(guidance, chunk, source[start:end], emb.expand(n, -1, -1),
                             src_emb.expand(n, -1, -1), config, generator=gen, anchors=anchors, on_step=on_step,
                             warps=warps)
    return decode_pil(guidance, target, size, config, alphas)
