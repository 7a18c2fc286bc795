"""Depth warps between rendered views: cameras and rendered depth in, ``grid_sample`` grids and masks out.

For aligned CSD in 3D (``--pipeline.edit.align depth``, :mod:`csd2d.align`): view i's latent pixel p is
back-projected with i's rendered depth, intrinsics and camera-to-world, and projected into view j. There j's score
is sampled (``W_j→i``), and the pair counts only if the point lies in front of j, inside j's frame, and is not
hidden in j: its distance from j agrees with j's own rendered depth there within :data:`DEPTH_TOLERANCE`.

Conventions are nerfstudio's: camera-to-world ``[3, 4]`` in OpenGL axes (x right, y up, the camera looks along
−z), pixel centres at ``+ 0.5`` (``Cameras.generate_rays``' default offset). nerfacto's ``depth`` output is the
distance along the unit ray (``ray`` depth); splatfacto's is the camera-space z (``z`` depth).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from csd2d.align import Pair, Warps, pixel_grid, to_sample_grid

__all__ = ["CACHE_BYTES", "DEPTH_SUPERSAMPLE", "DEPTH_TOLERANCE", "DepthKind", "DepthWarps", "latent_intrinsics",
           "pool_depth"]

DepthKind = Literal["ray", "z"]

DEPTH_TOLERANCE = 0.05
"""Largest relative disagreement ``|d_expected − d_j| / d_j`` between a back-projected point's distance from view j
and j's rendered depth there for the point to count as seen by j. Ours: a latent pixel averages 8 × 8 rendered
depths, so at an edge between surfaces its depth lies between them and fails the test on both sides (the pair is
dropped there, which is the safe side); inside a surface the pooled depth of a fitted scene varies by ~1 %."""

DEPTH_SUPERSAMPLE = 2
"""Rays per latent pixel side when an update renders only for its warps (the joint schedule's first round edits
the photos: csd_nerfstudio.pipeline.CSDPipeline.make_job), so 4 rays are averaged per latent pixel
(:func:`pool_depth`) where a full render averages the VAE factor squared, 64. Ours (csd-edit-tiny-fast, the
embedded model, VAE factor 8): on the made textured scene (20 views, tests/test_evaluate3d.py's direction test)
the aligned joint arm's renders scored 0.0200 / 0.0198 (seeds 0 / 1) against 0.0202 / 0.0199 with full-size depth,
and `make demo`'s joint arm (30 views) took 27 s against 37 s (back to back), with the same edit (inconsistency 0.0090 against 0.0091); on face at 64 px (30 views, 'recolor it', seeds 0–2, matched
strength) 0.92× the unaligned arm against 0.90× with full-size depth, in 63 s against its 67 s (one thread)."""

CACHE_BYTES = 256 * 2**20
"""Most memory :class:`DepthWarps` keeps of the rows it computed (grids and masks; later rows are recomputed on each
call). Ours: a joint round asks for every row on each of its CSD steps with the same depth and cameras, and
recomputing them was ~8 % of a round (face at 64 px, 30 views, the embedded model, CPU); 40 views of 64 × 64
latents take 79 MiB, so an H200's whole 40-view round is cached and a 200-view one is cached in part."""

_MIN_DEPTH = 1e-6


def latent_intrinsics(fx, fy, cx, cy, width: int, height: int, latent_hw) -> Float[Tensor, "4"]:
    """A camera's ``(fx, fy, cx, cy)`` rescaled from its ``width × height`` pixels to the latent grid
    ``latent_hw = (h, w)`` (each axis on its own: the edit size rounds to the VAE multiple)."""
    h, w = latent_hw
    sx, sy = w / float(width), h / float(height)
    return torch.tensor([float(fx) * sx, float(fy) * sy, float(cx) * sx, float(cy) * sy])


def pool_depth(depth: Float[Tensor, "N H W"], latent_hw) -> Float[Tensor, "N h w"]:
    """Rendered depth averaged over each latent pixel's footprint (area resampling)."""
    return F.adaptive_avg_pool2d(depth.float()[:, None], tuple(latent_hw))[:, 0]


class DepthWarps(Warps):
    """Warps among N rendered views of one scene, computed row by row from depth and cameras (O(N · h · w) each).

    Args:
        depth: each view's rendered depth on the latent grid (:func:`pool_depth`).
        intrinsics: each view's ``(fx, fy, cx, cy)`` on the latent grid (:func:`latent_intrinsics`).
        c2w: each view's camera-to-world, OpenGL axes.
        kind: ``ray`` (distance along the unit ray: nerfacto) or ``z`` (camera-space depth: splatfacto).
        tolerance: the occlusion test's relative tolerance (:data:`DEPTH_TOLERANCE`).
        cache_bytes: memory for rows already computed (:data:`CACHE_BYTES`; 0 recomputes every row each call).
    """

    def __init__(self, depth: Float[Tensor, "N h w"], intrinsics: Float[Tensor, "N 4"], c2w: Float[Tensor, "N 3 4"],
                 kind: DepthKind, tolerance: float = DEPTH_TOLERANCE, cache_bytes: int = CACHE_BYTES) -> None:
        n = depth.shape[0]
        if depth.ndim != 3:
            raise ValueError(f"depth: expected shape [N, h, w], got {tuple(depth.shape)}")
        if tuple(intrinsics.shape) != (n, 4):
            raise ValueError(f"intrinsics: expected shape [{n}, 4] (fx, fy, cx, cy), got {tuple(intrinsics.shape)}")
        if tuple(c2w.shape) != (n, 3, 4):
            raise ValueError(f"c2w: expected shape [{n}, 3, 4], got {tuple(c2w.shape)}")
        if kind not in ("ray", "z"):
            raise ValueError(f"kind: expected 'ray' or 'z', got {kind!r}")
        if not tolerance > 0:
            raise ValueError(f"tolerance: expected a positive fraction, got {tolerance!r}")
        self.n = n
        self.depth, self.intrinsics, self.c2w = depth.float(), intrinsics.float(), c2w.float()
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes: expected a size in bytes >= 0, got {cache_bytes!r}")
        self.kind, self.tolerance = kind, tolerance
        self.cache_bytes, self._cache, self._cached_bytes = cache_bytes, {}, 0

    def _camera_dirs(self, i: int) -> Float[Tensor, "h w 3"]:
        """View i's rays through its latent pixel centres in camera axes, scaled to z = −1."""
        h, w = self.depth.shape[1:]
        fx, fy, cx, cy = self.intrinsics[i]
        uv = pixel_grid(h, w)
        return torch.stack([(uv[..., 0] - cx) / fx, -(uv[..., 1] - cy) / fy, -torch.ones(h, w)], dim=-1)

    def points(self, i: int) -> Float[Tensor, "h w 3"]:
        """View i's latent pixels back-projected to world points with its rendered depth."""
        dirs = self._camera_dirs(i)
        if self.kind == "ray":
            dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        cam = dirs * self.depth[i][..., None]
        rot, origin = self.c2w[i, :, :3], self.c2w[i, :, 3]
        return cam @ rot.T + origin

    def pairs(self, i: int) -> Pair:
        if i in self._cache:
            return self._cache[i]
        pair = self._pairs(i)
        size = sum(t.numel() * t.element_size() for t in pair)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[i] = pair
            self._cached_bytes += size
        return pair

    def _pairs(self, i: int) -> Pair:
        h, w = self.depth.shape[1:]
        world = self.points(i)  # [h, w, 3]
        rot, origin = self.c2w[:, :, :3], self.c2w[:, :, 3]  # [N, 3, 3], [N, 3]
        cam = torch.einsum("nkc,hwk->nhwc", rot, world) - torch.einsum("nkc,nk->nc", rot, origin)[:, None, None]
        z = -cam[..., 2]  # distance in front of camera j
        front = z > _MIN_DEPTH
        safe_z = torch.where(front, z, torch.ones_like(z))
        fx, fy, cx, cy = (self.intrinsics[:, k].view(-1, 1, 1) for k in range(4))
        x = fx * cam[..., 0] / safe_z + cx
        y = -fy * cam[..., 1] / safe_z + cy
        coords = torch.stack([x, y], dim=-1)
        inside = front & (x >= 0) & (x < w) & (y >= 0) & (y < h)
        grid = to_sample_grid(coords, h, w)
        seen_depth = F.grid_sample(self.depth[:, None], grid, mode="nearest", padding_mode="border",
                                   align_corners=False)[:, 0]
        expected = cam.norm(dim=-1) if self.kind == "ray" else z
        visible = (expected - seen_depth).abs() <= self.tolerance * seen_depth.clamp_min(_MIN_DEPTH)
        return grid, (inside & visible).float()[:, None]

    def subset(self, indices: Sequence[int]) -> "DepthWarps":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return DepthWarps(self.depth[idx], self.intrinsics[idx], self.c2w[idx], self.kind, self.tolerance,
                          self.cache_bytes)
