"""Small scenes in nerfstudio format made on the fly (for tests, demos and smoke runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["write_sphere_scene", "write_downscaled_scene"]


def _look_at(eye: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world looking at the origin (camera looks down −z, y up)."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def write_sphere_scene(root: Path, views: int = 8, size: int = 32, radius: float = 3.0) -> Path:
    """A ray-traced sphere coloured by its normal over a gradient background, seen by ``views`` cameras on a
    circle; written as ``images/`` + ``transforms.json`` (PINHOLE intrinsics)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    focal = size * 1.2
    frames = []
    for v in range(views):
        angle = 2 * math.pi * v / views
        eye = np.array([radius * math.cos(angle), radius * math.sin(angle), 0.8])
        c2w = _look_at(eye)
        j, i = np.mgrid[0:size, 0:size] + 0.5
        dirs = np.stack([(i - size / 2) / focal, -(j - size / 2) / focal, -np.ones_like(i)], -1)
        dirs = dirs @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        b = (dirs * eye).sum(-1)
        disc = b * b - (eye @ eye - 1.0)
        t = -b - np.sqrt(np.clip(disc, 0, None))
        hit = (disc > 0) & (t > 0)
        normal = eye + t[..., None] * dirs
        colour = np.where(hit[..., None], 0.5 + 0.5 * normal, 0.3 + 0.4 * (dirs[..., 2:3] + 1) / 2 * np.array([0.6, 0.8, 1.0]))
        name = f"images/frame_{v:03d}.png"
        Image.fromarray((np.clip(colour, 0, 1) * 255).astype(np.uint8)).save(root / name)
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2,
            "w": size, "h": size, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return root


def write_downscaled_scene(src: Path, dst: Path, max_side: int = 64, every: int = 1,
                           limit: Optional[int] = None) -> Path:
    """Copy a nerfstudio scene into ``dst`` with images downscaled to ``max_side`` and intrinsics scaled to
    match (``every``-th frame, at most ``limit`` frames). The source folder is only read."""
    src, dst = Path(src), Path(dst)
    meta = json.loads((src / "transforms.json").read_text())
    (dst / "images").mkdir(parents=True, exist_ok=True)
    frames = meta["frames"][::every][:limit]
    scale = None
    out_frames = []
    for frame in frames:
        with Image.open(src / frame["file_path"]) as img:
            w, h = img.size
            scale = max_side / max(w, h)
            small = img.convert("RGB").resize((round(w * scale), round(h * scale)), Image.LANCZOS)
        name = f"images/{Path(frame['file_path']).stem}.png"
        small.save(dst / name)
        out_frames.append({**{k: v for k, v in frame.items() if k not in ("file_path", "mask_path", "depth_file_path")},
                           "file_path": name})
    for key in ("fl_x", "fl_y", "cx", "cy"):
        if key in meta:
            meta[key] = meta[key] * scale
    for key in ("w", "h"):
        if key in meta:
            meta[key] = round(meta[key] * scale)
    meta.pop("ply_file_path", None)
    meta["frames"] = out_frames
    (dst / "transforms.json").write_text(json.dumps(meta, indent=1))
    return dst
