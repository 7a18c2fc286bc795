"""Optical-flow warps between video frames, for aligned kernel mixing (:mod:`csd2d.align`).

Frame i's latent pixel p shows the content that frame j shows at ``p + f_i→j(p)``, where ``f_i→j`` is the dense
optical flow from i to j (OpenCV's DIS flow, Kroeger et al. 2016, on the grayscale source frames at their own
resolution, small ones enlarged), averaged down to the latent grid and divided by the image-to-latent scale. The
pair's mask keeps the pixels that land inside frame j and pass the forward–backward check
``|f_i→j(p) + f_j→i(p + f_i→j(p))| < tolerance`` (Sundaram et al. 2010): an occluded or mismatched pixel's flow
does not come back to where it started.

Every ordered pair gets its own flow, computed directly between the two frames: neighbours from scratch, a
pair ``gap`` frames apart starting from the chained estimate ``f_i→j∓1 ∘ f_j∓1→j`` (:func:`compose_flows`),
which DIS refines. Direct flow from scratch fails beyond the pyramid's reach (on 64 px frames of the demo pan, from
scratch at 2 px per frame: 100 % of pixels within 0.5 latent px for pairs up to 3 frames apart, 0 % from 7
frames on); seeded, every gap is found (100 % at 2 px per frame, 97–100 % at 12 px). Small frames are enlarged
to :data:`FLOW_MIN_SIDE` first.

Cost: N (N − 1) flows per chunk, once per chunk. One CPU thread, DIS ``medium``: a 12-frame chunk takes 1.1 s at
64 px (enlarged to 256 px) and 4.0 s at 512 px; the warps hold ``N² · h · w · 3`` floats
(:class:`csd2d.align.GridWarps`: 12 frames of 64 × 64 latents, 7 MiB).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from .align import GridWarps, pixel_grid, to_sample_grid

__all__ = ["FLOW_TOLERANCE", "FLOW_PRESET", "FLOW_MIN_SIDE", "image_flow", "compose_flows", "flow_warps",
           "warps_from_flow"]

FLOW_TOLERANCE = 0.5
"""Forward–backward tolerance in latent pixels. Ours: on the demo pans (``csd2d.demo.demo_video``, 12 frames of
64 px, 16 × 16 latents) the mask keeps 97.9 % (2 px per frame) and 91.5 % (12 px per frame) of the pixels a pair
truly shares, and of the kept pixels 0 % and 0.9 % warp more than 0.5 latent px off the true pan; 0.25 keeps
97.7 % / 91.2 % (0 % / 0.3 % off), 1.0 keeps 97.9 % / 92.0 % (0 % / 2.8 % off)."""

FLOW_PRESET = "medium"
"""DIS preset (``ultrafast``, ``fast``, ``medium``). Ours: on the 12 px per frame demo pan, pixels that a pair
truly shares warp within 0.5 latent px of the pan in 98.4 % (medium), 61.6 % (fast), 49.2 % (ultrafast) of the
cases, for 1.2 s, 0.4 s and 0.3 s per 12-frame chunk (at 2 px per frame all three reach 100 %)."""

FLOW_MIN_SIDE = 256
"""Frames whose short side is smaller are enlarged to it before the flow. Ours: DIS's pyramid depth follows the
image size, and on 64 px frames panning 12 px per frame it found the pan in 66 % of the neighbours' pixels at
64 px against 97 % at 256 px (within 0.5 latent px)."""

_PRESETS = ("ultrafast", "fast", "medium")

_EDGE = 1e-3
"""Slack on the frame border test, for pixel centres that land on the border's centres exactly (a static video)."""


def image_flow(source: np.ndarray, target: np.ndarray, init: Optional[np.ndarray] = None,
               preset: str = FLOW_PRESET) -> np.ndarray:
    """Dense DIS optical flow from ``source`` to ``target`` (uint8 grayscale ``[H, W]``): ``[H, W, 2]`` float32
    ``(dx, dy)`` in pixels, such that ``source[y, x]`` shows what ``target`` shows at ``(x + dx, y + dy)``.
    ``init``: a flow to start from (DIS refines it from its coarsest scale on)."""
    import cv2  # opencv-python-headless: only video alignment needs it

    if preset not in _PRESETS:
        raise ValueError(f"preset: expected one of {list(_PRESETS)}, got {preset!r}")
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    start = None if init is None else np.ascontiguousarray(init, dtype=np.float32).copy()
    return dis.calc(np.ascontiguousarray(source), np.ascontiguousarray(target), start)


def compose_flows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The flow a → c from ``first`` (a → b) and ``second`` (b → c), ``[H, W, 2]`` pixels:
    ``f_ac(p) = f_ab(p) + f_bc(p + f_ab(p))``, ``f_bc`` sampled bilinearly (edge values beyond the frame)."""
    import cv2

    height, width = first.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    landed = cv2.remap(second, xs + first[..., 0], ys + first[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return first + landed


def _working_gray(frames: Sequence[Image.Image]) -> List[np.ndarray]:
    """The frames in grayscale, enlarged (bicubic) so that the short side is at least :data:`FLOW_MIN_SIDE`."""
    gray = [f.convert("L") for f in frames]
    if not gray:
        raise ValueError("frames: expected at least one frame, got none")
    sizes = {g.size for g in gray}
    if len(sizes) > 1:
        raise ValueError(f"frames: expected frames of one size, got sizes {sorted(sizes)}")
    width, height = gray[0].size
    scale = max(1.0, FLOW_MIN_SIDE / min(width, height))
    if scale > 1:
        size = (round(width * scale), round(height * scale))
        gray = [g.resize(size, Image.BICUBIC) for g in gray]
    return [np.asarray(g, dtype=np.uint8) for g in gray]


def _to_latent(flow: np.ndarray, h: int, w: int) -> Float[Tensor, "2 h w"]:
    """An image-resolution flow averaged over each latent pixel's footprint, in latent pixels."""
    height, width = flow.shape[:2]
    t = torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="area")[0]
    return t / torch.tensor([width / w, height / h]).view(2, 1, 1)


def flow_warps(
    frames: Sequence[Image.Image],
    latent_hw: Tuple[int, int],
    *,
    tolerance: float = FLOW_TOLERANCE,
    preset: str = FLOW_PRESET,
) -> GridWarps:
    """Warps among ``frames`` on their ``latent_hw`` latent grid from the optical flow of every ordered pair
    (module docstring: how far pairs are seeded, and the cost).

    Args:
        frames: the source frames, one size (any mode; the flow runs on their grayscale).
        latent_hw: ``(h, w)`` of the frames' latents; flows are averaged down to it.
        tolerance: forward–backward tolerance in latent pixels (:data:`FLOW_TOLERANCE`).
        preset: DIS preset (:data:`FLOW_PRESET`).

    Returns:
        :class:`csd2d.align.GridWarps` with ``grid[i, j]`` the place in j of i's latent pixels and ``mask[i, j]``
        1 where j sees them (inside j and forward–backward consistent).
    """
    gray = _working_gray(frames)
    h, w = latent_hw
    n = len(gray)
    flow = torch.zeros(n, n, 2, h, w)
    near: Dict[Tuple[int, int], np.ndarray] = {}  # neighbours' flows k → k ± 1, at the working resolution
    last: Dict[Tuple[int, int], np.ndarray] = {}  # the previous gap's flows
    for gap in range(1, n):
        this: Dict[Tuple[int, int], np.ndarray] = {}
        for i in range(n):
            for j in (i - gap, i + gap):
                if not 0 <= j < n:
                    continue
                step = 1 if j > i else -1
                init = None if gap == 1 else compose_flows(last[i, j - step], near[j - step, j])
                this[i, j] = image_flow(gray[i], gray[j], init, preset)
                flow[i, j] = _to_latent(this[i, j], h, w)
        if gap == 1:
            near = this
        last = this
    return warps_from_flow(flow, tolerance)


def warps_from_flow(flow: Float[Tensor, "N N 2 h w"], tolerance: float = FLOW_TOLERANCE) -> GridWarps:
    """Warps from the latent flows ``flow[i, j] = f_i→j`` (``(dx, dy)`` in latent pixels): i's pixel p is j's
    ``p + f_i→j(p)``, seen where that lies within j's pixel centres and ``|f_i→j(p) + f_j→i(p + f_i→j(p))|`` is
    below ``tolerance``. The diagonal is the identity, fully seen."""
    if tolerance <= 0:
        raise ValueError(f"tolerance: expected a positive tolerance in latent pixels, got {tolerance}")
    n, _, _, h, w = flow.shape
    fwd = flow.float().permute(0, 1, 3, 4, 2)  # [N, N, h, w, 2]
    coords = pixel_grid(h, w) + fwd
    grid = to_sample_grid(coords, h, w)
    size = torch.tensor([w, h], dtype=torch.float32)
    inside = ((coords >= 0.5 - _EDGE) & (coords <= size - 0.5 + _EDGE)).all(-1)
    back_field = flow.float().transpose(0, 1).reshape(n * n, 2, h, w)  # entry (i, j) holds f_j→i
    back = F.grid_sample(back_field, grid.reshape(n * n, h, w, 2), mode="bilinear", padding_mode="border",
                         align_corners=False).reshape(n, n, 2, h, w).permute(0, 1, 3, 4, 2)
    consistent = (fwd + back).norm(dim=-1) < tolerance
    mask = (inside & consistent).float()
    eye = torch.arange(n)
    grid[eye, eye] = to_sample_grid(pixel_grid(h, w), h, w)
    mask[eye, eye] = 1.0
    return GridWarps(grid, mask)
