"""csd-edit-splat without CUDA: the CPU rasterizer (csd_nerfstudio.splat_cpu) against closed forms and gsplat's
own torch references, and csd-edit-splat-tiny fitting and editing the face scene on the CPU."""

import dataclasses
import json
import math
import os
import random
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import shared_data

try:  # nerfstudio (and gsplat) are the optional "nerfstudio" extra: skip without it, except in CI
    import gsplat  # noqa: F401
    import nerfstudio  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("nerfstudio is not installed (pip install 'csd-edit[nerfstudio]')", allow_module_level=True)

from gsplat.cuda._torch_impl import (_fully_fused_projection, _isect_offset_encode, _isect_tiles,  # noqa: E402
                                     _quat_scale_to_covar_preci, accumulate)

from csd2d.tiny.edits import edit_strength  # noqa: E402
from csd_nerfstudio import splat_cpu  # noqa: E402
from csd_nerfstudio.config import csd_edit_splat_tiny  # noqa: E402
from csd_nerfstudio.scenes import write_downscaled_scene  # noqa: E402
from csd_nerfstudio.views import render_view, view_camera  # noqa: E402


def _pinhole(focal: float, cx: float, cy: float, cameras: int = 1):
    """Cameras at the origin looking down +z (gsplat's convention: x right, y down), ``[C, 4, 4]`` and ``[C, 3, 3]``."""
    K = torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    return torch.eye(4).repeat(cameras, 1, 1), K.repeat(cameras, 1, 1)


def _about_z(theta: float) -> torch.Tensor:
    """The quaternion (w, x, y, z) of a rotation by ``theta`` about the optical axis."""
    return torch.tensor([math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)])


# ------------------------------------------------------------------------------------------- closed forms
def test_one_rotated_gaussian_has_the_analytic_footprint():
    """One anisotropic Gaussian on the optical axis at depth z, turned by θ = atan2(3, 4) about it. On screen it is
    the 2D Gaussian with covariance (f/z)² R diag(sa², sb²) Rᵀ + 0.3 I (the projection's Jacobian on the axis,
    plus gsplat's 0.3 px² blur): with sa, sb chosen for standard deviations of 10 and 5 px along u = (0.8, 0.6)
    and v = (−0.6, 0.8) (column, row), alpha falls from the opacity at the centre to opacity·e^(−1/2) at the pixels
    (8, 6) and (−3, 4) away, and the centre pixel's colour is colour·opacity."""
    focal, z, opacity = 40.0, 4.0, 0.8
    sigma_u, sigma_v = 10.0, 5.0
    scales = torch.tensor([[math.sqrt(sigma_u**2 - 0.3), math.sqrt(sigma_v**2 - 0.3), 10.0]]) * z / focal
    colour = torch.tensor([[0.2, 0.6, 0.9]])
    viewmats, Ks = _pinhole(focal, 32.5, 32.5)  # the mean lands on the centre of pixel (32, 32)
    args = (torch.tensor([[0.0, 0.0, z]]), _about_z(math.atan2(3, 4))[None], scales, torch.tensor([opacity]),
            colour, viewmats, Ks, 64, 64)
    rgb, alpha, info = splat_cpu.rasterization(*args)
    alpha = alpha[0, ..., 0]
    torch.testing.assert_close(rgb[0, 32, 32], colour[0] * opacity)
    assert alpha[32, 32] == pytest.approx(opacity, abs=1e-6)
    one_sigma = opacity * math.exp(-0.5)
    for dc, dr in ((8, 6), (-8, -6), (-3, 4), (3, -4)):  # one standard deviation along u and along v
        assert alpha[32 + dr, 32 + dc] == pytest.approx(one_sigma, rel=1e-4), (dc, dr)
    # Orientation: 10 px along v is two of v's standard deviations; the mirrored turn would put u at (8, −6).
    assert alpha[32 + 8, 32 - 6] == pytest.approx(opacity * math.exp(-2), rel=1e-4)
    assert alpha[32 - 6, 32 + 8] < 0.3 * one_sigma
    # Every pixel where the Gaussian is clearly visible matches the closed form.
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    d = torch.stack([cols + 0.5 - 32.5, rows + 0.5 - 32.5], -1)
    u, v = torch.tensor([0.8, 0.6]), torch.tensor([-0.6, 0.8])
    expected = opacity * torch.exp(-0.5 * ((d @ u / sigma_u) ** 2 + (d @ v / sigma_v) ** 2))
    seen = expected > 0.02
    torch.testing.assert_close(alpha[seen], expected[seen], atol=1e-5, rtol=1e-4)
    assert int(info["radii"][0, 0]) in (30, 31)  # ceil(3 · largest standard deviation), as gsplat
    # A background fills what the Gaussian leaves: colour·α + (1 − α)·background.
    background = torch.tensor([[0.5, 0.1, 0.3]])
    rgb_bg, _, _ = splat_cpu.rasterization(*args, backgrounds=background)
    torch.testing.assert_close(rgb_bg[0, 32, 32], colour[0] * opacity + (1 - opacity) * background[0])


def test_front_gaussian_hides_the_one_behind_and_a_full_pixel_stops():
    """Two nearly opaque Gaussians on the axis: the nearer one's colour is drawn first whatever the input order,
    and the second is left out where it would bring the transmittance to 1e-4 or below (gsplat's CUDA kernel):
    the centre is red·0.995 exactly, without the 0.005 of green that plain compositing would add."""
    viewmats, Ks = _pinhole(20.0, 8.5, 8.5)
    colours = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # green far, red near
    means = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 3.0]])
    scales = torch.full((2, 3), 0.3)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    opacities = torch.tensor([0.995, 0.995])
    rgb, alpha, _ = splat_cpu.rasterization(means, quats, scales, opacities, colours, viewmats, Ks, 17, 17)
    torch.testing.assert_close(rgb[0, 8, 8], torch.tensor([0.995, 0.0, 0.0]))
    assert float(alpha[0, 8, 8]) == pytest.approx(0.995, abs=1e-6)
    swapped, _, _ = splat_cpu.rasterization(means.flip(0), quats, scales, opacities, colours.flip(0), viewmats,
                                            Ks, 17, 17)
    torch.testing.assert_close(swapped, rgb)


# ------------------------------------------------------------------------------------------- gsplat's references
def _random_scene(seed: int, n: int = 24, cameras: int = 2, width: int = 20, height: int = 12):
    """Gaussians in front of ``cameras`` pinhole cameras (turned a little about the axis each), projected with
    gsplat's torch reference."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, 3.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.25 + 0.03
    opacities = torch.rand(n, generator=g) * 0.7 + 0.3
    colours = torch.rand(cameras, n, 3, generator=g)
    viewmats, Ks = _pinhole(16.0, width / 2, height / 2, cameras)
    viewmats[1:, :3, 3] = torch.randn(cameras - 1, 3, generator=g) * 0.2
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height)
    return radii, means2d, depths, conics, opacities.repeat(cameras, 1), colours


@pytest.mark.parametrize("tile_size", [4, 16])
def test_tile_lists_equal_gsplats_reference(tile_size):
    """splat_cpu.isect_tiles gives gsplat's ``_isect_tiles`` (a Python loop over Gaussians and tiles) element
    for element: the tiles per Gaussian, the sorted intersection ids and the Gaussians they point at."""
    radii, means2d, depths, *_ = _random_scene(seed=1, n=40)
    assert (radii > 0).sum() > 30
    tiles = (math.ceil(20 / tile_size), math.ceil(12 / tile_size))
    for ours, reference in zip(splat_cpu.isect_tiles(means2d, radii, depths, tile_size, *tiles),
                               _isect_tiles(means2d, radii, depths, tile_size, *tiles)):
        assert ours.dtype == reference.dtype and torch.equal(ours, reference)


def _cuda_pairs(means2d, conics, opacities, width, height, tile_size, isect_offsets, flatten_ids):
    """The (Gaussian, pixel, camera) triples gsplat's CUDA ``rasterize_to_indices_in_range`` lists, front to back
    per pixel: each pixel walks its tile's Gaussians, skips σ < 0 or α < 1/255 and stops before the Gaussian that
    would bring its transmittance to 1e-4 or below (the kernel's loop, in Python)."""
    C, N = means2d.shape[:2]
    offsets = isect_offsets.flatten().tolist() + [len(flatten_ids)]
    ids, m, q, o = flatten_ids.tolist(), means2d.reshape(-1, 2).tolist(), conics.reshape(-1, 3).tolist(), \
        opacities.flatten().tolist()
    tile_cols = isect_offsets.shape[2]
    triples = []
    for cam in range(C):
        for pixel in range(width * height):
            row, col = divmod(pixel, width)
            tile = cam * isect_offsets[0].numel() + (row // tile_size) * tile_cols + col // tile_size
            T = 1.0
            for k in range(offsets[tile], offsets[tile + 1]):
                g = ids[k]
                dx, dy = col + 0.5 - m[g][0], row + 0.5 - m[g][1]
                sigma = 0.5 * (q[g][0] * dx * dx + q[g][2] * dy * dy) + q[g][1] * dx * dy
                alpha = min(0.999, o[g] * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                T *= 1 - alpha
                triples.append((g % N, pixel, cam))
    return torch.tensor(triples).t()


def _exclusive_transmittance_cpu(alphas, packed_info=None, ray_indices=None, n_rays=None, prefix_trans=None):
    """nerfacc's ``render_weight_from_alpha`` for sorted ``ray_indices``, with its packed exclusive product (a
    CUDA-only kernel) done ray by ray with torch.cumprod."""
    weights = []
    for ray in torch.unique_consecutive(ray_indices):
        a = alphas[ray_indices == ray]
        trans = torch.cumprod(torch.cat([a.new_ones(1), 1 - a[:-1]]), 0)
        weights.append(a * trans)
    weights = torch.cat(weights)
    return weights, None


def test_dense_compositing_equals_gsplats_torch_compositing(monkeypatch):
    """splat_cpu.rasterize_to_pixels against gsplat's torch ``accumulate`` (its reference compositing) over the
    pairs CUDA lists, on two random cameras: the same image and alpha, and through autograd the same gradients for
    every input. nerfacc's packed transmittance, which ``accumulate`` calls, runs on CUDA only; here it is done ray
    by ray."""
    import nerfacc

    monkeypatch.setattr(nerfacc, "render_weight_from_alpha", _exclusive_transmittance_cpu)
    width, height, tile_size = 20, 12, 4
    radii, means2d, depths, conics, opacities, colours = _random_scene(seed=2, width=width, height=height)
    tiles = (math.ceil(width / tile_size), math.ceil(height / tile_size))
    _, isect_ids, flatten_ids = _isect_tiles(means2d, radii, depths, tile_size, *tiles)
    offsets = _isect_offset_encode(isect_ids, 2, *tiles)
    inputs = [t.detach().clone().requires_grad_() for t in (means2d, conics, colours, opacities)]
    gaussians, pixels, cameras = _cuda_pairs(means2d, conics, opacities, width, height, tile_size, offsets, flatten_ids)
    m, q, c, o = inputs
    ref_rgb, ref_alpha = accumulate(m, q, o, c, gaussians, pixels, cameras, width, height)
    ours = [t.detach().clone().requires_grad_() for t in (means2d, conics, colours, opacities)]
    rgb, alpha = splat_cpu.rasterize_to_pixels(ours[0], ours[1], ours[2], ours[3], width, height, tile_size, offsets,
                                               flatten_ids)
    assert float(ref_alpha.detach().max()) > 0.9 and (ref_alpha < 0.05).any()  # the scene has full and empty pixels
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=1e-4)
    weights = torch.rand(rgb.shape, generator=torch.Generator().manual_seed(3))
    ((ref_rgb * weights).sum() + ref_alpha.sum()).backward()
    ((rgb * weights).sum() + alpha.sum()).backward()
    for name, a, b in zip(("means2d", "conics", "colors", "opacities"), ours, inputs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=name)


# ------------------------------------------------------------------------------------------- densification
def test_means2d_gradients_are_what_splatfactos_densification_reads():
    """``info["means2d"].grad`` is the sum over pixels of each pixel's ∂L/∂mean and ``.absgrad`` the sum of their
    absolute values (gsplat's CUDA backward; splatfacto densifies on absgrad), checked pixel by pixel with
    autograd; and gsplat's DefaultStrategy accumulates exactly its normalised norm for the Gaussians on screen."""
    from gsplat.strategy import DefaultStrategy

    g = torch.Generator().manual_seed(4)
    n, size = 6, 8
    viewmats, Ks = _pinhole(10.0, size / 2, size / 2)
    params = {"means": torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0]),
              "quats": torch.randn(n, 4, generator=g), "scales": torch.rand(n, 3, generator=g) * 0.2 + 0.1,
              "opacities": torch.rand(n, generator=g)}
    params["means"][0, 0] = 40.0  # off screen: radius 0, no gradient
    params = {k: torch.nn.Parameter(v) for k, v in params.items()}
    colours = torch.rand(n, 3, generator=g)
    rgb, _, info = splat_cpu.rasterization(params["means"], params["quats"], params["scales"], params["opacities"],
                                           colours, viewmats, Ks, size, size, absgrad=True)
    means2d = info["means2d"]
    means2d.retain_grad()
    weights = torch.randn(rgb.shape, generator=g)
    (rgb * weights).sum().backward(retain_graph=True)
    grad, absgrad = means2d.grad.clone(), means2d.absgrad.clone()
    strategy = DefaultStrategy(absgrad=True, refine_start_iter=10, reset_every=1000)
    state = strategy.initialize_state()
    optimizers = {k: torch.optim.Adam([p]) for k, p in params.items()}
    strategy.step_post_backward(params, optimizers, state, step=1, info=info, packed=False)
    scaled = absgrad[0] * torch.tensor([size / 2, size / 2])
    torch.testing.assert_close(state["grad2d"], torch.where(info["radii"][0] > 0, scaled.norm(dim=-1), 0.0))
    torch.testing.assert_close(state["count"], (info["radii"][0] > 0).float())

    per_pixel = [torch.autograd.grad((rgb[0, r, c] * weights[0, r, c]).sum(), means2d, retain_graph=True)[0]
                 for r in range(size) for c in range(size)]
    torch.testing.assert_close(grad, sum(per_pixel), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(absgrad, sum(p.abs() for p in per_pixel), atol=1e-5, rtol=1e-4)
    assert info["radii"][0, 0] == 0 and (info["radii"][0, 1:] > 0).all()
    assert float(absgrad[0, 1:].sum()) > float(grad[0, 1:].abs().sum()) > 0


def test_a_gaussian_the_loss_pulls_is_densified():
    """gsplat's DefaultStrategy on the CPU rasterizer's ``info``: of two small Gaussians, the one whose footprint
    the loss pulls (rendered where the target is empty) is duplicated at the next refinement; the one the loss
    leaves alone (already matching its target) is not."""
    from gsplat.strategy import DefaultStrategy

    viewmats, Ks = _pinhole(16.0, 8.0, 8.0)
    params = {"means": torch.tensor([[-0.5, 0.0, 3.0], [0.5, 0.0, 3.0]]), "quats": torch.tensor([[1.0, 0, 0, 0]] * 2),
              "scales": torch.full((2, 3), 0.005).log(), "opacities": torch.logit(torch.tensor([0.9, 0.9]))}
    params = {k: torch.nn.Parameter(v) for k, v in params.items()}
    colours = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    strategy = DefaultStrategy(absgrad=True, refine_start_iter=0, refine_every=2, reset_every=10**6,
                               pause_refine_after_reset=0, grow_grad2d=0.0008, prune_opa=0.005)
    state = strategy.initialize_state(scene_scale=1.0)
    optimizers = {k: torch.optim.Adam([p], lr=1e-4) for k, p in params.items()}
    with torch.no_grad():  # the target: the second Gaussian's own render only
        target, _, _ = splat_cpu.rasterization(params["means"][1:], params["quats"][1:], params["scales"][1:].exp(),
                                               torch.sigmoid(params["opacities"][1:]), colours[1:], viewmats, Ks,
                                               16, 16)
    for step in (1, 2):
        rgb, _, info = splat_cpu.rasterization(params["means"], params["quats"], params["scales"].exp(),
                                               torch.sigmoid(params["opacities"]), colours, viewmats, Ks, 16, 16,
                                               absgrad=True)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (rgb - target).abs().mean().backward()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
    assert len(params["means"]) == 3
    torch.testing.assert_close(params["means"][2], torch.tensor([-0.5, 0.0, 3.0]))  # a copy of the first


# ------------------------------------------------------------------------------------------- csd-edit-splat-tiny
FIT_STEPS = 500
"""Steps of the fit test: csd-edit-splat-tiny pretrains 1,500 (28.3–28.9 dB on 30 views); the CI budget allows
500, two refinements (steps 300 and 400) included."""
FIT_PSNR = 18.0
"""What FIT_STEPS steps must reach on the face at 64 px, every 8th frame (7 training views) from random init: our
run reached 19.7 dB from 14.5 dB before training (27 s on 2 cores)."""
HUE_SHIFT = 30.0
"""Degrees the edit tests' renders must turn further from the photos' hue than the fitted scene's. Our run
(deterministic, :func:`_deterministic`): csd +53°, in2n +46°, joint +87° (12 updates; the embedded model's recolor
turns 75–105° per edit, either way, so views that disagree cancel)."""
EDIT_STEPS, EDIT_RATE = 60, 5
"""Editing steps of the edit tests and steps between their updates: 12 updates."""


@pytest.fixture(scope="module")
def face64(tmp_path_factory):
    return write_downscaled_scene(shared_data("face"), tmp_path_factory.mktemp("face64"), max_side=64, every=8)


def _tiny(scene, out, iterations, **pipeline):
    """csd-edit-splat-tiny on ``scene`` for ``iterations`` steps: no evaluation, one checkpoint at the end. Its
    refinement stops at FIT_STEPS, where the tests' pretraining ends (the method's stops at the end of its own)."""
    base = csd_edit_splat_tiny.config
    load_dir = pipeline.pop("load_dir", None)
    dm = dataclasses.replace(base.pipeline.datamanager, data=scene,
                             dataparser=dataclasses.replace(base.pipeline.datamanager.dataparser, data=scene))
    model = dataclasses.replace(base.pipeline.model, stop_split_at=FIT_STEPS)
    return dataclasses.replace(
        base, output_dir=out, vis="tensorboard", max_num_iterations=iterations, load_dir=load_dir,
        steps_per_eval_batch=10**9, steps_per_eval_image=10**9, steps_per_eval_all_images=10**9,
        steps_per_save=10**9, experiment_name="scene", timestamp="run",
        pipeline=dataclasses.replace(base.pipeline, datamanager=dm, model=model, **pipeline))


def _renders(pipeline):
    """Every training view rendered at 64 px and its photo, ``[V, 3, 64, 64]`` each."""
    cameras = pipeline.datamanager.train_dataset.cameras
    pipeline.model.eval()
    with torch.no_grad():
        views = torch.stack([render_view(pipeline.model, view_camera(cameras, i, 64, "cpu"), i)
                             for i in range(cameras.shape[0])])
    pipeline.model.train()
    photos = torch.stack([pipeline.images.original(i).permute(2, 0, 1) for i in range(cameras.shape[0])])
    return views.clamp(0, 1), photos


def _psnr(a, b) -> float:
    return float((-10 * torch.log10((a - b).pow(2).mean(dim=(1, 2, 3)))).mean())


@pytest.fixture(scope="module", autouse=True)
def _deterministic():
    """These tests train in this process: with torch's deterministic algorithms (as
    csd_nerfstudio.benchmark.train_measured trains), so that a run is a function of its seed. Without them two runs
    of the same fit differed (the fitted scene's hue 8.6° and 8.8°) and the in2n edit's turn ranged 29–41°
    against HUE_SHIFT's 30 (our runs, one of them in CI)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _trainer(config):
    """nerfstudio's Trainer for ``config``, set up in this process and seeded as ns-train seeds it."""
    random.seed(config.machine.seed)
    np.random.seed(config.machine.seed)
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


@pytest.fixture(scope="module")
def fitted(face64, tmp_path_factory):
    """csd-edit-splat-tiny fitted to the photos for FIT_STEPS steps (pretraining only), in this process."""
    meta = json.loads((face64 / "transforms.json").read_text())
    cuda_was_initialized = torch.cuda.is_initialized()
    config = _tiny(face64, tmp_path_factory.mktemp("fit"), FIT_STEPS, pretrain_steps=FIT_STEPS)
    trainer = _trainer(config)
    model = trainer.pipeline.model
    start = SimpleNamespace(count=model.num_points, psnr=_psnr(*_renders(trainer.pipeline)))
    grown = []  # (duplicated, split) per refinement: what splatfacto's strategy grew
    grow = model.strategy._grow_gs
    model.strategy._grow_gs = lambda *args, **kwargs: grown.append(grow(*args, **kwargs)) or grown[-1]
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    views, photos = _renders(trainer.pipeline)
    return SimpleNamespace(pipeline=trainer.pipeline, checkpoints=config.get_checkpoint_dir(), start=start,
                           grown=grown, views=views, photos=photos, seconds=seconds,
                           point_cloud="ply_file_path" in meta,
                           cuda_was_initialized=cuda_was_initialized)


@pytest.mark.slow
def test_tiny_splat_fits_the_face_on_the_cpu_without_cuda(fitted):
    """csd-edit-splat-tiny trains on the CPU through splat_cpu: from splatfacto's random init (the scene has no
    point cloud: write_downscaled_scene drops ``ply_file_path``) or from its point cloud, it fits the photos to
    FIT_PSNR (3 dB or more above the untrained scene), splatfacto's densification duplicates or splits Gaussians
    at its refinements, and nothing asked for CUDA."""
    model = fitted.pipeline.model
    assert model.device.type == "cpu"
    if not fitted.point_cloud:
        assert fitted.start.count == csd_edit_splat_tiny.config.pipeline.model.num_random
    psnr = _psnr(fitted.views, fitted.photos)
    assert psnr >= FIT_PSNR and psnr >= fitted.start.psnr + 3, \
        f"{fitted.start.psnr:.2f} → {psnr:.2f} dB after {FIT_STEPS} steps ({fitted.seconds:.0f} s)"
    assert len(fitted.grown) == 2 and sum(map(sum, fitted.grown)) > 0, fitted.grown  # steps 300 and 400
    assert model.num_points != fitted.start.count  # grown and pruned
    assert sorted(p.name for p in fitted.checkpoints.glob("step-*.ckpt"))
    if not fitted.cuda_was_initialized:
        assert not torch.cuda.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("update", ["csd", "in2n", "joint"])
def test_tiny_splat_edits_the_face(fitted, face64, tmp_path, update):
    """From the fitted checkpoint (--load-dir: edited at once), EDIT_STEPS steps of "recolor it" with the csd
    update, IN2N's, or the joint schedule (every view together, two rounds) turn the renders' hue away from the photos' by HUE_SHIFT more than the fitted scene's, and
    the Gaussians loaded from the checkpoint are the ones that train (nerfstudio builds the optimizers before it
    loads them; CSDSplatfactoModel.step_cb hands them the loaded ones)."""
    schedule = {}
    if update == "joint":  # csd-edit-fast's schedule: 2 rounds of every view, EDIT_STEPS / 2 fit steps each
        base = csd_edit_splat_tiny.config.pipeline
        schedule = dict(schedule="joint", joint=dataclasses.replace(base.joint, rounds=2, fit_steps=EDIT_STEPS // 2),
                        edit=dataclasses.replace(base.edit, normalization="row"))
    config = _tiny(face64, tmp_path, EDIT_STEPS, load_dir=fitted.checkpoints, prompt="recolor it",
                   update="csd" if update == "joint" else update, edit_rate=EDIT_RATE,
                   **schedule)  # --load-dir: nerfstudio trains max-num-iterations more steps
    trainer = _trainer(config)
    loaded = trainer.pipeline.model.means.detach().clone()
    torch.testing.assert_close(loaded, fitted.pipeline.model.means.detach())
    trainer.train()
    pipeline = trainer.pipeline
    assert len(pipeline.edited_views) == (2 if update == "joint" else EDIT_STEPS // EDIT_RATE)
    if update == "joint":
        assert all(len(v) == len(pipeline.images) for v in pipeline.edited_views)
    views, photos = _renders(pipeline)
    before = edit_strength(fitted.views, photos, "recolor it")
    after = edit_strength(views, photos, "recolor it")
    assert after - before >= HUE_SHIFT, (update, before, after)
    assert pipeline.model.num_points == len(loaded)  # refinement ended with the pretraining
    assert not torch.equal(pipeline.model.means.detach(), loaded)



@pytest.mark.slow
def test_depth_aligned_job_on_splats_uses_their_camera_space_depth(fitted, monkeypatch):
    """--pipeline.edit.align depth on splats: the job carries DepthWarps over splatfacto's camera-space (z) depth.
    (Whether the warps carry one view onto another is not checked here: on this 8-view, 500-step fit a warped render
    matches another view only 3 % better than the unwarped one; on the nerfacto face scene 2.6× better.)"""
    from csd_nerfstudio.warps import DepthWarps

    pipeline = fitted.pipeline
    monkeypatch.setattr(pipeline.config, "edit", dataclasses.replace(pipeline.config.edit, align="depth"))
    job = pipeline.make_job(0, indices=[0, 1, 2])
    assert isinstance(job.warps, DepthWarps) and job.warps.kind == "z" and job.warps.depth.gt(0).all()
    assert job.warps.n == 3 and torch.isfinite(job.warps.pairs(0)[0]).all()
