"""Building particles from large images: window positions, scatter-averaging, tiled VAE, region weights."""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "window_positions",
    "window_grid",
    "crop_windows",
    "scatter_average",
    "tiled_apply",
    "region_weights",
]


def window_positions(length: int, window: int, stride: int, name: str = "length") -> List[int]:
    """Start offsets of windows of size ``window`` every ``stride`` along an axis of size ``length``.

    Unlike a plain ``range`` (which silently drops the remainder), a final window is aligned to the end
    so that every position is covered.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window/stride: expected positive sizes, got window={window}, stride={stride}")
    if length < window:
        raise ValueError(f"{name}: expected at least one window ({window}), got {length}")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_grid(height: int, width: int, window: int, stride: int) -> List[Tuple[int, int]]:
    """All ``(top, left)`` window offsets covering a ``height × width`` grid."""
    return [
        (y, x)
        for y in window_positions(height, window, stride, "height")
        for x in window_positions(width, window, stride, "width")
    ]


def crop_windows(x: Float[Tensor, "1 C H W"], offsets: Sequence[Tuple[int, int]], window: int) -> Tensor:
    """Stack the ``window × window`` crops of ``x`` at ``offsets`` into ``[len(offsets), C, window, window]``."""
    return torch.cat([x[:, :, y : y + window, x0 : x0 + window] for y, x0 in offsets])


def scatter_average(
    values: Float[Tensor, "B C w w"], offsets: Sequence[Tuple[int, int]], shape: Sequence[int]
) -> Float[Tensor, "1 C H W"]:
    """Average per-window tensors back onto the full grid; positions no window touches get 0."""
    window = values.shape[-1]
    total = values.new_zeros((1, values.shape[1], shape[-2], shape[-1]))
    count = values.new_zeros((1, 1, shape[-2], shape[-1]))
    for v, (y, x0) in zip(values, offsets):
        total[0, :, y : y + window, x0 : x0 + window] += v
        count[0, :, y : y + window, x0 : x0 + window] += 1
    return total / count.clamp_min(1)


def _ramp(n: int, overlap: int, device) -> Tensor:
    """1-D feathering weights: rising over ``overlap`` samples at both ends, 1 in between (never 0)."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    edge = torch.minimum(i + 1, n - i)
    return (edge / (overlap + 1)).clamp(max=1.0)


def tiled_apply(
    fn: Callable[[Tensor], Tensor], x: Float[Tensor, "B C H W"], tile: int, overlap: int, scale: float
) -> Tensor:
    """Apply a spatial map ``fn`` (e.g. VAE encode, ``scale = 1/8``, or decode, ``scale = 8``) tile by tile.

    Tiles of ``tile`` input pixels overlap by ``overlap``; outputs are blended with linear feathering so
    no seam shows. Peak memory is that of one tile. Inputs that fit in one tile go through ``fn`` whole.
    """
    _, _, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    tile_h, tile_w = min(tile, h), min(tile, w)
    stride = max(1, tile - overlap)
    out = weight = None
    for y in window_positions(h, tile_h, stride, "height"):
        for x0 in window_positions(w, tile_w, stride, "width"):
            part = fn(x[:, :, y : y + tile_h, x0 : x0 + tile_w]).float()
            if out is None:
                out_h, out_w = round(h * scale), round(w * scale)
                out = part.new_zeros((x.shape[0], part.shape[1], out_h, out_w))
                weight = part.new_zeros((1, 1, out_h, out_w))
            ph, pw = part.shape[-2:]
            oy, ox = round(y * scale), round(x0 * scale)
            ov = max(1, round(overlap * scale))
            wgt = _ramp(ph, ov, part.device)[:, None] * _ramp(pw, ov, part.device)[None, :]
            out[:, :, oy : oy + ph, ox : ox + pw] += part * wgt
            weight[:, :, oy : oy + ph, ox : ox + pw] += wgt
    return out / weight


def _smoothstep(u: Tensor) -> Tensor:
    u = u.clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def region_weights(num_prompts: int, width: int, blend: float) -> Float[Tensor, "P W"]:
    """Weights of ``num_prompts`` prompts laid left to right across ``width`` columns.

    Prompt ``p`` owns the ``p``-th of ``P`` equal bands. Around each of the ``P − 1`` borders ``b`` the
    weight passes from one prompt to the next with a smoothstep ``S`` spanning ``blend`` of a band:
    ``w_p(x) = S_p(x) − S_{p+1}(x)`` with ``S_0 = 1``, ``S_P = 0`` and ``S_p(x) = smoothstep((x − b_p)/τ + ½)``.
    The sum telescopes to exactly 1 at every column and every weight lies in [0, 1].
    """
    if num_prompts < 1:
        raise ValueError(f"prompts: expected at least one prompt, got {num_prompts}")
    if not 0.0 < blend <= 1.0:
        raise ValueError(f"blend: expected a fraction in (0, 1], got {blend}")
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    band = 1.0 / num_prompts
    tau = blend * band
    steps = [torch.ones(width)]
    steps += [_smoothstep((x - p * band) / tau + 0.5) for p in range(1, num_prompts)]
    steps += [torch.zeros(width)]
    return torch.stack([steps[p] - steps[p + 1] for p in range(num_prompts)])
