"""Small scenes in nerfstudio format made on the fly (for tests, demos and smoke runs)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["write_sphere_scene", "write_textured_scene", "write_downscaled_scene"]


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


@functools.lru_cache(maxsize=None)
def _texture(name: str, width: int, square: bool = False) -> np.ndarray:
    """One of scikit-image's bundled pictures (no download) as float RGB in [0, 1], optionally centre-cropped to a
    square, resized to ``width`` texels across (a one-level mipmap: little aliasing at 64 px). Read-only."""
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    if square:
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    tex = np.asarray(img.resize((width, max(1, round(img.height * width / img.width))), Image.LANCZOS),
                     dtype=np.float64) / 255
    tex.setflags(write=False)
    return tex


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup at ``u`` (across, wraps) and ``v`` (down from the top row, clamps), both in texture units."""
    h, w = tex.shape[:2]
    x, y = u * w - 0.5, v * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0 = x0.astype(np.int64) % w
    x1 = (x0 + 1) % w
    y1 = np.clip(y0.astype(np.int64) + 1, 0, h - 1)
    y0 = np.clip(y0.astype(np.int64), 0, h - 1)
    return ((tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx) * (1 - fy)
            + (tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx) * fy)


def _hsv(h: np.ndarray, s, v) -> np.ndarray:
    """Vectorised HSV → RGB (all in [0, 1])."""
    h = np.asarray(h, dtype=np.float64)[..., None]
    s, v = np.asarray(s, dtype=np.float64)[..., None], np.asarray(v, dtype=np.float64)[..., None]
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _hit_sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, r: float) -> np.ndarray:
    """Distance along unit rays to the sphere's near side (inf on a miss)."""
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    t = -b - np.sqrt(np.clip(disc, 0, None))
    return np.where((disc > 0) & (t > 1e-4), t, np.inf)


def _hit_box(o: np.ndarray, d: np.ndarray, centre: np.ndarray, half: float, rot: np.ndarray) -> np.ndarray:
    """Distance along rays to a cube (half-side ``half``, world→local rotation ``rot``) by the slab test."""
    ol, dl = (o - centre) @ rot.T, d @ rot.T
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
    t1, t2 = (-half - ol) / dl, (half - ol) / dl
    near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where((far >= near) & (near > 1e-4), near, np.inf)


def write_textured_scene(root: Path, views: int = 40, size: int = 64, *, seed: int) -> Path:
    """The demo scene: a sphere wrapped in ``astronaut`` and a cube with ``chelsea`` / ``coffee`` / ``rocket`` on
    its faces, on a floor of coloured tiles inside a round brick wall whose tint runs once through the hue circle,
    under a gradient sky; Lambertian light with cast shadows, 2×2 supersampled, numpy-only ray tracing. Everything
    lies within radius 5 of the origin; ``views`` cameras at distance 3 circle it as a smooth turntable (even
    azimuth steps, elevation swaying 14°–26°). ``seed`` picks the tile hues, the wall's hue offset, the spin of the
    sphere's picture and the cube's yaw. Written as ``images/`` + ``transforms.json`` (PINHOLE intrinsics)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tile_hues = rng.random((8, 8))
    wall_hue, sphere_spin, cube_yaw = rng.random(), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi / 2)

    floor_z, wall_r, wall_top, tile = -0.5, 5.0, 1.5, 0.5
    sphere_c, sphere_r = np.array([0.35, -0.35, floor_z + 0.5]), 0.5
    cube_c, cube_h = np.array([-0.4, 0.4, floor_z + 0.35]), 0.35
    cs, sn = math.cos(cube_yaw), math.sin(cube_yaw)
    cube_rot = np.array([[cs, sn, 0.0], [-sn, cs, 0.0], [0.0, 0.0, 1.0]])  # world → cube frame
    light = np.array([0.45, -0.35, 1.0])
    light /= np.linalg.norm(light)
    faces = {0: _texture("chelsea", 96, square=True), 1: _texture("coffee", 96, square=True),
             2: _texture("rocket", 96, square=True)}
    globe, bricks = _texture("astronaut", 160), _texture("brick", 128)

    def shade(o: np.ndarray, d: np.ndarray) -> np.ndarray:
        t_sphere = _hit_sphere(o, d, sphere_c, sphere_r)
        t_cube = _hit_box(o, d, cube_c, cube_h, cube_rot)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_floor = np.where(d[:, 2] < -1e-9, (floor_z - o[:, 2]) / d[:, 2], np.inf)
        p_floor = o + t_floor[:, None] * d
        t_floor = np.where(np.hypot(p_floor[:, 0], p_floor[:, 1]) < wall_r, t_floor, np.inf)
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - wall_r ** 2  # < 0: every ray starts inside the wall
        with np.errstate(divide="ignore", invalid="ignore"):
            t_wall = (-b + np.sqrt(b * b - a * c)) / a
        z_wall = o[:, 2] + t_wall * d[:, 2]
        t_wall = np.where((a > 1e-12) & (z_wall >= floor_z) & (z_wall <= wall_top), t_wall, np.inf)

        ts = np.stack([t_sphere, t_cube, t_floor, t_wall])
        which = np.where(np.isfinite(ts.min(0)), ts.argmin(0), 4)
        t = np.where(which < 4, ts.min(0), 0.0)
        p = o + t[:, None] * d
        albedo = np.zeros_like(p)
        normal = np.zeros_like(p)

        m = which == 0  # sphere: spherical UV, the picture spun by the seed
        q = (p[m] - sphere_c) / sphere_r
        normal[m] = q
        u = (np.arctan2(q[:, 1], q[:, 0]) + sphere_spin) / (2 * math.pi)
        albedo[m] = _sample(globe, u, np.arccos(np.clip(q[:, 2], -1, 1)) / math.pi)

        m = which == 1  # cube: planar UV per face, pictures upright and unmirrored from outside
        q = (p[m] - cube_c) @ cube_rot.T / cube_h
        axis = np.abs(q).argmax(-1)
        sign = np.sign(q[np.arange(len(q)), axis])
        n_local = np.zeros_like(q)
        n_local[np.arange(len(q)), axis] = sign
        normal[m] = n_local @ cube_rot
        across = np.where(axis == 0, sign * q[:, 1], np.where(axis == 1, -sign * q[:, 0], q[:, 0]))
        down = np.where(axis == 2, -q[:, 1], -q[:, 2])
        col = np.zeros_like(q)
        for k, tex in faces.items():
            f = axis == k
            col[f] = _sample(tex, (across[f] + 1) / 2, (down[f] + 1) / 2)
        albedo[m] = col

        m = which == 2  # floor: tiles of seeded hues, checkered brightness, dark grout
        q = p[m, :2] / tile
        cell = np.floor(q).astype(np.int64)
        frac = q - cell
        grout = np.clip(np.minimum(frac, 1 - frac).min(-1) / 0.06, 0, 1)
        value = np.where((cell.sum(-1) % 2) == 0, 0.95, 0.7) * (0.35 + 0.65 * grout)
        albedo[m] = _hsv(tile_hues[cell[:, 0] % 8, cell[:, 1] % 8], 0.7, value)
        normal[m] = [0.0, 0.0, 1.0]

        m = which == 3  # wall: brick texture tinted through the hue circle by azimuth
        azimuth = np.arctan2(p[m, 1], p[m, 0]) / (2 * math.pi)
        brick = _sample(bricks, azimuth * 8, (wall_top - p[m, 2]) / (wall_top - floor_z) * 0.5)
        albedo[m] = _hsv((azimuth + wall_hue) % 1, 0.6, 1.0) * np.clip(0.2 + 1.6 * brick, 0, 1.2)
        normal[m] = np.stack([-p[m, 0], -p[m, 1], np.zeros(m.sum())], -1) / wall_r

        lit = which < 4  # cast shadows from the sphere and the cube
        start = p[lit] + 1e-3 * normal[lit]
        towards = np.broadcast_to(light, start.shape)
        shadow = np.isfinite(np.minimum(_hit_sphere(start, towards, sphere_c, sphere_r),
                                        _hit_box(start, towards, cube_c, cube_h, cube_rot)))
        diffuse = np.clip(normal[lit] @ light, 0, None) * ~shadow
        colour = np.zeros_like(p)
        colour[lit] = albedo[lit] * (0.35 + 0.75 * diffuse)[:, None]
        up = np.clip(d[~lit, 2], 0, 1)[:, None]  # sky: warm horizon to blue zenith
        colour[~lit] = (1 - up) * np.array([1.0, 0.85, 0.65]) + up * np.array([0.25, 0.45, 0.95])
        return colour

    focal = size * 1.2
    sub = (np.arange(2) + 0.5) / 2  # 2×2 samples inside each pixel
    pixel = (np.arange(size)[:, None] + sub).ravel()
    j, i = np.broadcast_arrays(pixel.reshape(size, 2, 1, 1), pixel.reshape(1, 1, size, 2))  # (row, sub, col, sub)
    dirs_cam = np.stack([(i - size / 2) / focal, -(j - size / 2) / focal, -np.ones_like(i)], -1).reshape(-1, 3)
    frames = []
    for v in range(views):
        azimuth = 2 * math.pi * v / views
        elevation = math.radians(20 + 6 * math.sin(2 * azimuth))
        eye = 3.0 * np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                              math.sin(elevation)])
        c2w = _look_at(eye)
        dirs = dirs_cam @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        colour = shade(np.broadcast_to(eye, dirs.shape), dirs).reshape(size, 2, size, 2, 3).mean((1, 3))
        name = f"images/frame_{v:03d}.png"
        Image.fromarray(np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8)).save(root / name)
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    meta = {"camera_model": "PINHOLE", "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2,
            "w": size, "h": size, "frames": frames}
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
