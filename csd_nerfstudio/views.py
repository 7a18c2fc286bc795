"""Which training views an update edits, and how they are rendered (one render path for every update kind)."""

from __future__ import annotations

import contextlib
import copy
from typing import List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel

__all__ = ["neighbouring_views", "select_views", "view_camera", "render_view", "random_crop", "resize",
           "has_view_appearance"]

Crop = Tuple[int, int, int, int]  # top, left, height, width


def neighbouring_views(c2w: Tensor, n: int, anchor: int) -> List[int]:
    """``anchor`` and its ``n − 1`` nearest cameras: distance ``‖c_i − c_a‖ / scale + (1 − cos∠(d_i, d_a))``
    with camera centres ``c``, viewing directions ``d`` (−z of the OpenGL camera) and ``scale`` the median
    centre distance."""
    centres = c2w[:, :3, 3].float()
    dirs = F.normalize(-c2w[:, :3, 2].float(), dim=-1)
    dist = (centres - centres[anchor]).norm(dim=-1)
    scale = dist[dist > 0].median() if (dist > 0).any() else torch.tensor(1.0)
    score = dist / scale + (1 - dirs @ dirs[anchor])
    score[anchor] = -1.0
    return score.argsort()[:n].tolist()


def select_views(c2w: Tensor, n: int, how: Literal["neighbours", "random"], generator: torch.Generator) -> List[int]:
    """``n`` distinct training views: a random anchor and its nearest cameras (``neighbours``), or drawn
    uniformly without replacement (``random``)."""
    n = min(n, c2w.shape[0])
    if how == "random":
        return torch.randperm(c2w.shape[0], generator=generator)[:n].tolist()
    anchor = int(torch.randint(c2w.shape[0], (1,), generator=generator))
    return neighbouring_views(c2w, n, anchor)


def view_camera(cameras: Cameras, index: int, max_side: int, device) -> Cameras:
    """Training camera ``index`` on ``device``, downscaled so that its long side is at most ``max_side``."""
    camera = copy.deepcopy(cameras[index : index + 1]).to(device)
    side = max(int(camera.width), int(camera.height))
    if side > max_side:
        camera.rescale_output_resolution(max_side / side)
    return camera


def random_crop(height: int, width: int, size: int, multiple: int, generator: torch.Generator) -> Crop:
    """A ``size × size`` window (clipped to the image, sides rounded down to ``multiple``) at a random place."""
    h = max(multiple, min(size, height) // multiple * multiple)
    w = max(multiple, min(size, width) // multiple * multiple)
    top = int(torch.randint(height - h + 1, (1,), generator=generator))
    left = int(torch.randint(width - w + 1, (1,), generator=generator))
    return top, left, h, w


def has_view_appearance(model) -> bool:
    """Whether ``model`` holds a per-view appearance embedding (nerfacto's, on by default; splatfacto has none)."""
    return getattr(getattr(model, "field", None), "embedding_appearance", None) is not None


@contextlib.contextmanager
def _own_appearance(model, on: bool):
    """Let a nerfacto field in eval mode look up each ray's own camera's appearance embedding (its training-mode
    path) instead of the mean of all of them; nothing else of the model leaves eval mode."""
    field = getattr(model, "field", None)
    if not on or not has_view_appearance(model) or field.training:
        yield
        return
    field.training = True  # the field's only other training-mode branch is the transient embedding (off)
    try:
        yield
    finally:
        field.training = False


def render_view(model, camera: Cameras, index: int, *, grad: bool = False,
                crop: Optional[Crop] = None, chunk: Optional[int] = None, with_depth: bool = False,
                own_appearance: bool = False):
    """Render training view ``index`` through ``camera`` (its possibly downscaled copy); ``crop`` renders only
    that window (ray-based models trace only its rays).

    Appearance: a nerfacto model in training mode renders the view with its own appearance embedding; in eval
    mode with the mean of every view's embedding (``use_average_appearance_embedding``: what the viewer and a
    camera path show), unless ``own_appearance``. The per-view embeddings can hold what a view's edit disagrees
    with the others about, which the mean then hides (:mod:`csd_nerfstudio.evaluate`'s ``…_own`` metrics).
    ``grad=False`` renders without a graph in chunks of ``chunk`` rays (None: the model's own
    ``eval_num_rays_per_chunk``, nerfstudio's eval path).

    Returns the colour ``[3, h, w]``, or with ``with_depth`` the pair ``(colour, depth [h, w])``: the model's own
    ``depth`` output, detached (distance along the unit ray for nerfacto, camera-space z for splatfacto; see
    :mod:`csd_nerfstudio.warps`)."""
    with _own_appearance(model, own_appearance):
        return _render_view(model, camera, index, grad=grad, crop=crop, chunk=chunk, with_depth=with_depth)


def _render_view(model, camera: Cameras, index: int, *, grad: bool, crop: Optional[Crop], chunk: Optional[int],
                 with_depth: bool):
    keys = ("rgb", "depth") if with_depth else ("rgb",)
    if isinstance(model, SplatfactoModel):  # rasterises whole cameras
        with torch.set_grad_enabled(grad):
            out = model.get_outputs(camera)
        if with_depth and out.get("depth") is None:
            raise ValueError("with_depth: splatfacto outputs depth only in eval mode or with "
                             "output_depth_during_training; got none")
        maps = [out[k].reshape(int(camera.height), int(camera.width), -1) for k in keys]
        if crop is not None:
            top, left, h, w = crop
            maps = [m[top : top + h, left : left + w] for m in maps]
    else:
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        rays.camera_indices = torch.full_like(rays.camera_indices, index)
        if crop is not None:
            top, left, h, w = crop
            rays = rays[top : top + h, left : left + w]
        h, w = rays.shape
        if grad:
            out = model(rays.flatten())
            maps = [out[k] for k in keys]
        elif chunk is None:
            with torch.no_grad():
                out = model.get_outputs_for_camera_ray_bundle(rays)
            maps = [out[k] for k in keys]
        else:
            flat = rays.flatten()
            with torch.no_grad():
                outs = [model(flat[i : i + chunk]) for i in range(0, len(flat), chunk)]
            maps = [torch.cat([o[k] for o in outs]) for k in keys]
        maps = [m.reshape(h, w, -1) for m in maps]
    rgb = maps[0].permute(2, 0, 1)
    if not with_depth:
        return rgb
    return rgb, maps[1][..., 0].detach()


def resize(images: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of ``[B, C, H, W]`` images in [0, 1] to ``size``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images.float()
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
