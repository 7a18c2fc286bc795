"""Gaussian splatting without CUDA: gsplat's ``rasterization`` rebuilt from gsplat's own pure-torch references.

gsplat's :func:`gsplat.rasterization` runs CUDA kernels only, and its torch reference
(``gsplat.rendering._rasterization``) still calls CUDA for three steps. :func:`rasterization` here composes the
same steps in the same order, reusing gsplat's torch references wherever they run on the CPU:

1. project: ``_quat_scale_to_covar_preci`` and ``_fully_fused_projection`` (gsplat's): radii, 2D means, depths,
   conics and the antialiasing compensations;
2. list each tile's Gaussians: :func:`isect_tiles` (here: the vectorised twin of gsplat's ``_isect_tiles``,
   which gives the same ids but loops in Python over every Gaussian and tile) and ``_isect_offset_encode``
   (gsplat's);
3. colours from spherical harmonics: ``_spherical_harmonics`` (gsplat's);
4. composite front to back: :func:`rasterize_to_pixels` (here: a dense twin of the CUDA kernel; gsplat's torch
   version needs CUDA for ``rasterize_to_indices_in_range`` and nerfacc's packed scans in ``accumulate``).

The outputs and ``info`` mean what gsplat's CUDA path returns for ``packed=False``, including what splatfacto's
densification reads: ``means2d`` (its ``.grad``, and ``.absgrad`` after ``backward`` with ``absgrad=True``),
``radii``, ``width``, ``height``, ``n_cameras`` and ``gaussian_ids``. Where it differs from CUDA, and why:

- compositing is dense (:func:`rasterize_to_pixels`): the same numbers, computed for every pixel of a tile and
  every Gaussian the tile lists instead of in a loop that stops at a full pixel, so it holds more memory;
- tiles are 4 px, not gsplat's 16 (:func:`rasterization`): each tile lists fewer Gaussians, 3× less work on the
  CPU, and a pixel only loses Gaussians beyond 3σ of it (alpha < 0.011) that a 16 px tile would have kept.

It is meant for tests and small scenes on a CPU (csd-edit-splat-tiny), not for speed.
"""

from __future__ import annotations

import copy
import math
import types
from typing import Callable, Dict, List, Literal, Optional, Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.overrides import TorchFunctionMode

from gsplat.cuda._torch_impl import (_fully_fused_projection, _isect_offset_encode, _quat_scale_to_covar_preci,
                                     _spherical_harmonics)
from nerfstudio.cameras.cameras import Cameras

__all__ = ["rasterization", "isect_tiles", "rasterize_to_pixels", "intrinsics_stay_put", "cuda_stays_put",
           "with_globals", "ALPHA_MIN", "ALPHA_MAX", "TRANSMITTANCE_MIN", "PAIRS_PER_CHUNK", "CPU_TILE_SIZE"]

ALPHA_MIN = 1.0 / 255.0
"""A Gaussian whose alpha at a pixel is below this is skipped there (gsplat's CUDA kernels)."""
ALPHA_MAX = 0.999
"""Alpha is clamped to this (gsplat's CUDA kernels, after 3DGS)."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops at the first Gaussian that would bring its transmittance to this or below; that Gaussian is left
out (gsplat's CUDA kernels)."""
PAIRS_PER_CHUNK = 1 << 22
"""Pixel-Gaussian pairs composited per chunk of tiles: bounds the memory of one dense chunk when rendering without
gradients (4M pairs are 16 MB per float tensor). Our choice; a 64 px view of csd-edit-splat-tiny's fitted face
(12.9k Gaussians) has 1.8M pairs, one chunk."""
CPU_TILE_SIZE = 4
""":func:`rasterization`'s tile side in pixels (gsplat's is 16). Our measurement, 1 CPU thread, 64 px: a render
of csd-edit-splat-tiny's fitted face (12.9k Gaussians, no gradients) takes 0.088 s with 4 px tiles against 0.255 s
with 16 px (1.8M against 4.6M pixel-Gaussian pairs), and the two images differ by at most 0.0019 (78.7 dB apart);
a forward and backward pass over 5,000 random Gaussians takes 0.05 s against 0.25–0.30 s (2 and 1 px tiles: no
faster)."""


@torch.no_grad()
def isect_tiles(
    means2d: Float[Tensor, "C N 2"], radii: Int[Tensor, "C N"], depths: Float[Tensor, "C N"], tile_size: int,
    tile_width: int, tile_height: int,
) -> Tuple[Int[Tensor, "C N"], Int[Tensor, " M"], Int[Tensor, " M"]]:
    """The tiles each Gaussian's square of half-side ``radius`` touches, sorted by camera, tile and depth: the
    vectorised twin of gsplat's ``_isect_tiles`` (the same three outputs, element for element).

    Returns:
        ``tiles_per_gauss`` [C, N]; ``isect_ids`` [M], ``camera << (32 + tile bits) | tile << 32 | depth bits``;
        ``flatten_ids`` [M], the Gaussian's index in ``C·N``.
    """
    C, N = means2d.shape[:2]
    device = means2d.device
    tile_means = means2d / tile_size
    tile_radii = (radii / tile_size)[..., None]
    limit = torch.tensor([tile_width, tile_height], device=device)
    mins = torch.minimum(torch.floor(tile_means - tile_radii).int().clamp_min(0), limit)
    maxs = torch.minimum(torch.ceil(tile_means + tile_radii).int().clamp_min(0), limit)
    tiles_per_gauss = (maxs - mins).prod(dim=-1) * (radii > 0)  # [C, N]

    counts = tiles_per_gauss.flatten().long()
    flat = torch.repeat_interleave(torch.arange(C * N, device=device), counts)  # [M], Gaussian of each pair
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(flat), device=device) - first[flat]  # pair's place in its Gaussian's rectangle
    span = (maxs - mins)[..., 0].flatten().long()[flat].clamp_min(1)
    x = mins[..., 0].flatten().long()[flat] + local % span  # rows of the rectangle in order, as gsplat loops
    y = mins[..., 1].flatten().long()[flat] + local // span
    tile_bits = (tile_width * tile_height).bit_length()
    camera = flat // N
    depth_bits = depths.float().contiguous().view(torch.int32).flatten().long()[flat]
    isect_ids = (camera << 32 << tile_bits) | ((y * tile_width + x) << 32) | depth_bits
    isect_ids, order = torch.sort(isect_ids, stable=True)
    return tiles_per_gauss.int(), isect_ids, flat[order].int()


def rasterize_to_pixels(
    means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], colors: Float[Tensor, "C N D"],
    opacities: Float[Tensor, "C N"], image_width: int, image_height: int, tile_size: int,
    isect_offsets: Int[Tensor, "C th tw"], flatten_ids: Int[Tensor, " M"],
    backgrounds: Optional[Float[Tensor, "C D"]] = None, absgrad: bool = False,
) -> Tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Front-to-back alpha compositing of each tile's depth-sorted Gaussians, as dense tensors: the CPU twin of
    gsplat's CUDA ``rasterize_to_pixels`` (``packed=False``).

    At pixel centre ``p`` a Gaussian has ``σ = ½(a·dx² + c·dy²) + b·dx·dy`` (``d = p − mean``, conic ``(a, b, c)``)
    and ``α = min(0.999, o·exp(−σ))``; it is skipped where ``σ < 0`` or ``α < 1/255``, and the pixel stops at the
    first Gaussian that would bring its transmittance ``T`` to 1e-4 or below (gsplat's kernel, after 3DGS). Then
    ``colour = Σ α_i T_i c_i + T·background`` and ``alpha = 1 − T``. These are the CUDA kernel's numbers; what
    differs is how they are computed. CUDA loops over a tile's Gaussians per pixel and stops early; here every
    (pixel, Gaussian) pair of a tile is one element of a [tile pixels, intersections] matrix (all tiles side by
    side, no padding; in chunks of at most :data:`PAIRS_PER_CHUNK` pairs), ``T`` is a per-tile cumulative sum of
    ``log(1 − α)`` (float64 where it decides which Gaussians a pixel keeps), and autograd gives the gradients
    CUDA's backward writes.

    ``absgrad=True`` (splatfacto's default, ``use_absgrad``) also gives ``means2d.absgrad`` after ``backward``:
    per Gaussian, the sum over pixels of the absolute value of each pixel's ``∂L/∂mean`` (per coordinate), what
    gsplat's CUDA backward writes there.
    """
    C, N = means2d.shape[:2]
    D = colors.shape[-1]
    device, dtype = means2d.device, means2d.dtype
    rows, cols = isect_offsets.shape[1:]
    n_tiles = C * rows * cols
    pixels = tile_size * tile_size
    ids = flatten_ids.long()
    starts = isect_offsets.flatten().long()
    counts = torch.diff(starts, append=torch.tensor([len(ids)], device=device))  # intersections per tile

    abs_sum = None
    if absgrad and means2d.requires_grad:
        abs_sum = means2d.new_zeros(C * N, 2)
        means2d.absgrad = abs_sum.view(C, N, 2)  # filled during backward
    within = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    local = torch.stack(torch.meshgrid(within, within, indexing="xy"), -1).reshape(pixels, 2)  # (x, y) in a tile
    tables = (means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1), colors.reshape(-1, D))

    colour_parts: List[Tensor] = []
    log_trans_parts: List[Tensor] = []
    ends = torch.cumsum(counts, 0)
    first = 0
    while first < n_tiles:  # chunks of whole tiles, at most PAIRS_PER_CHUNK pairs (or one tile)
        budget = (ends[first] - counts[first]) + max(1, PAIRS_PER_CHUNK // pixels)
        last = max(first + 1, int(torch.searchsorted(ends, budget, right=True)))
        colour, log_trans = _composite(local, tile_size, cols, rows, first, counts[first:last],
                                       ids[int(starts[first]):int(ends[last - 1])], tables, abs_sum)
        colour_parts.append(colour)
        log_trans_parts.append(log_trans)
        first = last
    colour = torch.cat(colour_parts)  # [n_tiles, pixels, D]
    trans = torch.exp(torch.cat(log_trans_parts))  # [n_tiles, pixels]
    if backgrounds is not None:
        colour = colour + trans[..., None] * backgrounds.repeat_interleave(rows * cols, 0)[:, None, :]
    images = _untile(torch.cat([colour, 1 - trans[..., None]], -1), C, rows, cols, tile_size)
    images = images[:, :image_height, :image_width]
    return images[..., :D], images[..., D:]


def _composite(local: Tensor, tile_size: int, cols: int, rows: int, first: int, counts: Tensor, ids: Tensor,
               tables: Tuple[Tensor, Tensor, Tensor, Tensor], abs_sum: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Composite the tiles ``first, first + 1, ...`` (``counts`` intersections each, ``ids`` their Gaussians in
    depth order): returns each tile's colour [t, P, D] (no background) and log final transmittance [t, P]."""
    means, conics, opacities, colors = (table[ids] for table in tables)
    tiles = len(counts)
    tile = torch.repeat_interleave(torch.arange(tiles, device=ids.device), counts)  # [M], tile of each column
    within_camera = (first + tile) % (rows * cols)
    corner = torch.stack([within_camera % cols, within_camera // cols], -1).to(means.dtype) * tile_size
    offset = corner - means  # pixel − mean = local + corner − mean
    dx = local[:, None, 0] + offset[None, :, 0]  # [P, M]
    dy = local[:, None, 1] + offset[None, :, 1]
    if abs_sum is not None:
        # Each pixel's ∂L/∂mean is −∂L/∂d: sum its absolute value over the pixels (CUDA's absgrad).
        dx.register_hook(_abs_sum_hook(abs_sum[:, 0], ids))
        dy.register_hook(_abs_sum_hook(abs_sum[:, 1], ids))
    a, b, c = conics.unbind(-1)
    sigma = dx * (0.5 * a * dx + b * dy) + (0.5 * c) * dy * dy
    alpha = torch.clamp_max(opacities * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, 0.0)  # skipped: no alpha, no gradient
    log_step = torch.log1p(-alpha)
    segment_start = torch.cumsum(counts, 0) - counts  # first column of each tile
    log_trans = _segment_cumsum(log_step.double(), tile, segment_start)  # log T after each Gaussian
    # CUDA leaves out the Gaussian that would bring T to 1e-4 or below and every one after it. T only falls, so
    # the kept Gaussians are a prefix of each pixel's list and their transmittances are unchanged by the cut.
    keep = (log_trans > math.log(TRANSMITTANCE_MIN)).detach()
    weights = alpha * keep * torch.exp((log_trans - log_step).to(alpha.dtype))  # α_i · T before i
    pixels = local.shape[0]
    contributions = weights.t()[:, :, None] * colors[:, None, :]  # [M, P, D]
    colour = contributions.new_zeros(tiles, pixels, colors.shape[-1]).index_add(0, tile, contributions)
    final = log_step.new_zeros(tiles, pixels).index_add(0, tile, (log_step * keep).t())
    return colour, final


def _segment_cumsum(x: Tensor, segment: Tensor, segment_start: Tensor) -> Tensor:
    """Inclusive cumulative sum along the last dimension of ``x`` [P, M], restarting at each segment (column j
    belongs to segment ``segment[j]``, which starts at column ``segment_start[segment[j]]``)."""
    total = torch.cumsum(x, -1)
    before = torch.cat([x.new_zeros(x.shape[0], 1), total], -1)[:, segment_start]  # sum before each segment
    return total - before[:, segment]


def _abs_sum_hook(out: Tensor, ids: Tensor):
    """A gradient hook on pixel offsets [P, M] that adds ``Σ_pixels |grad|`` into ``out[ids]`` (in place)."""

    def hook(grad: Tensor) -> None:
        out.index_add_(0, ids, grad.abs().sum(0))

    return hook


def _untile(tiles: Tensor, cameras: int, rows: int, cols: int, size: int) -> Tensor:
    """[C·rows·cols, size², D] tiles (row-major tiles, row-major pixels) → [C, rows·size, cols·size, D]."""
    d = tiles.shape[-1]
    return tiles.reshape(cameras, rows, cols, size, size, d).permute(0, 1, 3, 2, 4, 5).reshape(
        cameras, rows * size, cols * size, d)


def rasterization(
    means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"], colors: Tensor, viewmats: Float[Tensor, "C 4 4"], Ks: Float[Tensor, "C 3 3"],
    width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
    eps2d: float = 0.3, sh_degree: Optional[int] = None, packed: bool = False, tile_size: int = CPU_TILE_SIZE,
    backgrounds: Optional[Tensor] = None, render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    sparse_grad: bool = False, absgrad: bool = False, rasterize_mode: Literal["classic", "antialiased"] = "classic",
    channel_chunk: int = 32, distributed: bool = False,
    camera_model: Literal["pinhole", "ortho", "fisheye"] = "pinhole", covars: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Dict]:
    """:func:`gsplat.rasterization` (1.4.0: the same arguments, outputs and ``info``) on any device, with pure
    torch. ``colors`` are [(C,) N, D] values, or [(C,) N, K, 3] spherical-harmonic coefficients with
    ``sh_degree``. Two defaults differ from gsplat's: ``tile_size`` (:data:`CPU_TILE_SIZE`, 4 instead of 16) and
    ``packed`` (False; the packed layout is not supported, and splatfacto asks for the unpacked one). Neither are
    ``sparse_grad``, ``distributed`` or fisheye cameras. ``channel_chunk`` is accepted for the signature; all
    channels are composited at once.

    Returns:
        colours [C, H, W, D'] (D' = D, plus expected or accumulated depth per ``render_mode``), alphas
        [C, H, W, 1], and ``info``.
    """
    for name, value, supported in (("packed", packed, False), ("sparse_grad", sparse_grad, False),
                                   ("distributed", distributed, False), ("camera_model", camera_model, "pinhole")):
        if value != supported and not (name == "camera_model" and value == "ortho"):
            raise ValueError(f"{name}: the CPU rasterizer (csd_nerfstudio.splat_cpu) supports {supported!r}"
                             f"{' or ortho' if name == 'camera_model' else ''}, got {value!r}; gsplat's CUDA "
                             "rasterization supports it")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"render_mode: expected RGB, D, ED, RGB+D or RGB+ED, got {render_mode!r}")
    C = viewmats.shape[0]
    if covars is None:
        covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased", camera_model=camera_model)
    if radius_clip > 0:
        radii = torch.where(radii.float() <= radius_clip, torch.zeros_like(radii), radii)
    opacities = opacities.repeat(C, 1)  # [C, N]
    if compensations is not None:
        opacities = opacities * compensations

    if sh_degree is None:
        colors = colors.expand(C, -1, -1) if colors.dim() == 2 else colors  # [C, N, D]
    else:
        camera_centres = torch.inverse(viewmats)[:, :3, 3]
        dirs = means[None] - camera_centres[:, None]  # [C, N, 3]
        shs = colors.expand(C, -1, -1, -1) if colors.dim() == 3 else colors
        colors = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)  # as gsplat (Inria's)
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
    isect_offsets = _isect_offset_encode(isect_ids, C, tile_width, tile_height)
    render_colors, render_alphas = rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size,
                                                       isect_offsets, flatten_ids, backgrounds, absgrad)
    if render_mode in ("ED", "RGB+ED"):  # expected depth: accumulated depth over accumulated alpha
        render_colors = torch.cat([render_colors[..., :-1],
                                   render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], -1)
    info = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opacities, "tile_width": tile_width, "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss, "isect_ids": isect_ids, "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets, "width": width, "height": height, "tile_size": tile_size, "n_cameras": C,
    }
    return render_colors, render_alphas, info


# ------------------------------------------------------------------------------------------------ splatfacto
class _Resident(Tensor):
    """A tensor whose ``.cuda()`` returns it where it is, as a plain tensor."""

    def cuda(self, *args, **kwargs) -> Tensor:  # type: ignore[override]
        return self.as_subclass(Tensor)


def intrinsics_stay_put(camera: Cameras) -> Cameras:
    """A shallow copy of ``camera`` whose ``get_intrinsics_matrices().cuda()`` stays on the camera's device:
    splatfacto's ``get_outputs`` moves the intrinsics with ``.cuda()``. It also rescales the copy's resolution
    and back, which leaves the caller's camera alone."""
    view = copy.copy(camera)
    intrinsics = view.get_intrinsics_matrices  # bound to the copy: follows its rescaling
    view.get_intrinsics_matrices = lambda: intrinsics().as_subclass(_Resident)
    return view


class _CudaStaysPut(TorchFunctionMode):
    """``tensor.cuda()`` returns the tensor where it is; every other torch call runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is Tensor.cuda:
            return args[0]
        return func(*args, **(kwargs or {}))


def cuda_stays_put() -> TorchFunctionMode:
    """A block in which ``tensor.cuda()`` leaves every tensor where it is (this thread only: torch function modes
    are thread-local). For one-off code such as splatfacto's ``populate_modules``: every torch call in the block
    passes through a Python function, about 10 % of a training step around renders (our measurement: 3.5 of 33 s
    in a 300-step cProfile run of csd-edit-splat-tiny, 1 thread), which is why renders use
    :func:`intrinsics_stay_put`."""
    return _CudaStaysPut()


def with_globals(function: Callable, **names) -> Callable:
    """A copy of ``function`` whose code reads ``names`` in place of its module's globals of those names (the
    module itself is left as it is, for every other caller)."""
    copy_ = types.FunctionType(function.__code__, {**function.__globals__, **names}, function.__name__,
                               function.__defaults__, function.__closure__)
    copy_.__kwdefaults__, copy_.__qualname__, copy_.__doc__ = (function.__kwdefaults__, function.__qualname__,
                                                               function.__doc__)
    return copy_
