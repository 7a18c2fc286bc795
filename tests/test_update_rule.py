"""The CSD-Edit step against the paper's update written out term by term (Kim et al. 2023, eqs. 6 and 8).

``g_i = w(t)/N · Σ_j [k(z_j, z_i) s_j − repulsion · ∇_{z_j} k(z_j, z_i)]``, ``s_j = ε̂_tgt − ε̂_src``,
``w(t) = 1 − ᾱ_t``, RBF kernel on the noisy targets with the median (i ≠ j) bandwidth. The reference below calls
the UNet itself and loops over particle pairs; it shares no code with ``csd_edit_step`` beyond the models.
"""

import math

import pytest
import torch

from csd2d import StepConfig, csd_edit_step


def _inputs(guidance, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = guidance.encode_images(torch.rand(n, 3, 32, 32, generator=g))
    target = source + 0.3 * torch.randn(source.shape, generator=g)
    noise = torch.randn(source.shape, generator=g)
    emb_t = guidance.encode_prompt(["make it red"] * n)
    emb_s = guidance.encode_prompt([""] * n)
    return target, source, emb_t, emb_s, noise


def _guided_eps(guidance, z, source, emb, t, s_text, s_image):
    """Three-way InstructPix2Pix guidance, one particle at a time; the image condition is the unscaled latent."""
    cond = source / guidance.vae.config.scaling_factor
    empty = guidance.encode_prompt([""])
    unet = lambda img, txt: guidance.unet(torch.cat([z, img], 1), t, encoder_hidden_states=txt).sample
    full, image, uncond = unet(cond, emb), unet(cond, empty), unet(torch.zeros_like(cond), empty)
    return uncond + s_image * (image - uncond) + s_text * (full - image)


@torch.no_grad()
def paper_update(guidance, target, source, emb_t, emb_s, noise, t, cfg):
    abar = guidance.scheduler.alphas_cumprod[t].double()
    w = 1.0 - abar
    n = target.shape[0]
    z_tgt = [abar.sqrt() * target[i].double() + (1 - abar).sqrt() * noise[i].double() for i in range(n)]
    z_src = [abar.sqrt() * source[i].double() + (1 - abar).sqrt() * noise[i].double() for i in range(n)]
    scores = []
    for i in range(n):
        eps = [_guided_eps(guidance, z[i][None].float(), source[i][None], emb[i][None], t, cfg.guidance_scale,
                           cfg.image_guidance_scale) for z, emb in ((z_tgt, emb_t), (z_src, emb_s))]
        scores.append((eps[0] - eps[1])[0].double())
    if not cfg.coupling:
        return torch.stack([w * s for s in scores])
    d2 = {(i, j): float(((z_tgt[i] - z_tgt[j]) ** 2).sum()) for i in range(n) for j in range(n)}
    off = sorted(d2[i, j] for i in range(n) for j in range(n) if i != j)
    h = torch.tensor(off).median().item() / math.log(n + 1)  # torch's median: the lower middle value
    out, row_sums = [], []
    for i in range(n):
        g_i = torch.zeros_like(scores[0])
        row_sums.append(sum(math.exp(-d2[j, i] / h) for j in range(n)))
        for j in range(n):
            k = math.exp(-d2[j, i] / h)
            grad_k = -(2.0 / h) * (z_tgt[j] - z_tgt[i]) * k  # ∇_{z_j} k(z_j, z_i)
            g_i += k * scores[j] - cfg.repulsion * grad_k
        out.append(w * g_i)
    # the paper divides by N (count); ours by each row's kernel sum (row) or their mean (mean)
    z = {"count": [n] * n, "row": row_sums, "mean": [sum(row_sums) / n] * n}[cfg.normalization]
    return torch.stack([g / z_i for g, z_i in zip(out, z)])


@pytest.mark.parametrize(
    "t, cfg",
    [
        # small t: w(t) ≈ 0.03, where weighting only the scores (not the repulsion) is far off
        (40, StepConfig(repulsion=3.0, guidance_scale=5.0, image_guidance_scale=2.0)),
        (450, StepConfig(repulsion=1.0, normalization="count")),
        (450, StepConfig(repulsion=1.0, normalization="row")),
        (450, StepConfig(repulsion=1.0, normalization="mean")),
        (40, StepConfig(coupling=False)),
    ],
)
def test_step_matches_the_paper_update(guidance, t, cfg):
    target, source, emb_t, emb_s, noise = _inputs(guidance, n=3)
    step = csd_edit_step(guidance, target, source, emb_t, emb_s, cfg, noise=noise, t=torch.tensor([t]))
    ref = paper_update(guidance, target, source, emb_t, emb_s, noise, torch.tensor([t]), cfg).float()
    assert step.grad.shape == target.shape
    scale = ref.abs().max()
    assert scale > 0
    assert torch.allclose(step.grad, ref, atol=1e-4 * scale, rtol=1e-4), (step.grad - ref).abs().max() / scale


def test_shared_noise_is_one_draw_for_every_particle(guidance):
    """``noise="shared"``: the step noises every particle with one draw from its generator, so it is the paper's
    update with that draw repeated (the kernel then sees the latents' own distances, scaled by sqrt(ᾱ_t))."""
    target, source, emb_t, emb_s, _ = _inputs(guidance, n=3)
    cfg = StepConfig(noise="shared")
    t = torch.tensor([300])
    step = csd_edit_step(guidance, target, source, emb_t, emb_s, cfg, t=t,
                         generator=torch.Generator().manual_seed(5))
    one = torch.randn((1, *target.shape[1:]), generator=torch.Generator().manual_seed(5))
    ref = paper_update(guidance, target, source, emb_t, emb_s, one.expand_as(target), t, cfg).float()
    scale = ref.abs().max()
    assert torch.allclose(step.grad, ref, atol=1e-4 * scale, rtol=1e-4), (step.grad - ref).abs().max() / scale
    independent = csd_edit_step(guidance, target, source, emb_t, emb_s, StepConfig(), t=t,
                                generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(independent.grad, ref, atol=1e-2 * scale)


def test_share_grid_mixes_only_the_coarse_scores_and_each_view_keeps_its_detail(guidance):
    """``share_grid=1``: the kernel mixes each score's channel means; every particle adds its own detail
    ``s_i − mean(s_i)``, so no other particle's detail reaches it. Written out against the whole-score step."""
    from csd2d.kernel import csd_gradient, rbf_kernel

    target, source, emb_t, emb_s, noise = _inputs(guidance, n=3)
    t = torch.tensor([300])
    shared = csd_edit_step(guidance, target, source, emb_t, emb_s, StepConfig(share_grid=1), noise=noise, t=t)
    whole = csd_edit_step(guidance, target, source, emb_t, emb_s, StepConfig(), noise=noise, t=t)
    abar = guidance.scheduler.alphas_cumprod[t].float()
    noisy = abar.sqrt() * target + (1 - abar).sqrt() * noise
    s = shared.scores.float()
    mean = s.mean((-2, -1), keepdim=True).expand_as(s)
    ref = (1 - abar) * (s - mean + csd_gradient(mean, noisy, repulsion=1.0, normalization="row"))
    scale = ref.abs().max()
    assert torch.allclose(shared.grad, ref, atol=1e-4 * scale), (shared.grad - ref).abs().max() / scale
    assert not torch.allclose(whole.grad, ref, atol=1e-2 * scale)  # the whole-score mix is a different update
    # the detail left with each particle is its own: zero mean per channel
    detail = shared.grad - (1 - abar) * csd_gradient(mean, noisy, repulsion=1.0, normalization="row")
    assert detail.mean((-2, -1)).abs().max() < 1e-4 * scale
    # with the paper's 1/N, the particle's own detail shrinks with its row sum as the mixed part does
    counted = csd_edit_step(guidance, target, source, emb_t, emb_s, StepConfig(share_grid=1, normalization="count"),
                            noise=noise, t=t)
    k, _ = rbf_kernel(noisy)
    share = (k.sum(0) / 3).reshape(3, 1, 1, 1)  # Σ_j k(z_j, z_i) / N
    ref = (1 - abar) * (share * (s - mean) + csd_gradient(mean, noisy, repulsion=1.0, normalization="count"))
    assert torch.allclose(counted.grad, ref, atol=1e-4 * ref.abs().max()), (counted.grad - ref).abs().max()
    assert share.max() < 0.99  # a real shrink, so the test tells the weights apart
    # one particle alone: its whole score, as without sharing
    one = [x[:1] for x in (target, source, emb_t, emb_s, noise)]
    alone = csd_edit_step(guidance, *one[:4], StepConfig(share_grid=1), noise=one[4], t=t)
    plain = csd_edit_step(guidance, *one[:4], StepConfig(coupling=False), noise=one[4], t=t)
    assert torch.allclose(alone.grad, plain.grad, atol=1e-5 * plain.grad.abs().max())


def test_coarse_scores_are_cell_means_spread_back():
    from csd2d.kernel import coarse_scores

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 8, 8, generator=g)
    assert torch.allclose(coarse_scores(scores, 1), scores.mean((-2, -1), keepdim=True).expand_as(scores))
    flat = torch.randn(2, 4, 1, 1, generator=g).expand(-1, -1, 8, 8)
    assert torch.allclose(coarse_scores(flat, 4), flat, atol=1e-6)  # a per-channel constant is all coarse
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1  # zero mean in every 2x2 cell
    assert coarse_scores(checker.expand(2, 4, 8, 8).contiguous(), 4).abs().max() < 1e-6
    assert coarse_scores(scores, 64).shape == scores.shape  # a grid finer than the latent: the latent itself
    with pytest.raises(ValueError, match="grid"):
        coarse_scores(scores, 0)
    with pytest.raises(ValueError, match="share_grid"):
        StepConfig(share_grid=0)


def test_share_grid_with_warps_mixes_the_coarse_part_everywhere_and_the_detail_through_the_warps(guidance):
    """``share_grid`` with warps: the channel means are mixed pixel for pixel over every particle, the detail
    ``s_j − mean(s_j)`` only where the warps say j sees i's pixel. Identity warps: the whole score's mix. A
    one-pixel shift with a mask: the formula written out pair by pair."""
    from csd2d.align import GridWarps, IdentityWarps, pixel_grid, to_sample_grid
    from csd2d.kernel import csd_gradient, rbf_kernel

    n = 3
    target, source, emb_t, emb_s, noise = _inputs(guidance, n=n)
    t = torch.tensor([300])
    h, w = target.shape[-2:]
    cfg = StepConfig(share_grid=1, bandwidth_scale=4.0)
    identity = csd_edit_step(guidance, target, source, emb_t, emb_s, cfg, noise=noise, t=t,
                             warps=IdentityWarps(n, h, w))
    whole = csd_edit_step(guidance, target, source, emb_t, emb_s, StepConfig(bandwidth_scale=4.0), noise=noise, t=t)
    scale = whole.grad.abs().max()
    assert torch.allclose(identity.grad, whole.grad, atol=1e-5 * scale), (identity.grad - whole.grad).abs().max()

    # particle j's pixel (x + 1, y) shows what i's pixel (x, y) shows, for every pair; the last column is unseen
    coords = pixel_grid(h, w) + torch.tensor([1.0, 0.0])
    seen = (coords[..., 0] < w).float()
    grid = to_sample_grid(coords, h, w).expand(n, n, h, w, 2).clone()
    mask = seen.expand(n, n, h, w).clone()
    shifted = csd_edit_step(guidance, target, source, emb_t, emb_s, cfg, noise=noise, t=t,
                            warps=GridWarps(grid, mask))
    abar = guidance.scheduler.alphas_cumprod[t].float()
    noisy = abar.sqrt() * target + (1 - abar).sqrt() * noise
    s = shifted.scores.float()
    mean = s.mean((-2, -1), keepdim=True).expand_as(s)
    detail = s - mean
    moved = torch.zeros_like(detail)
    moved[..., :, :-1] = detail[..., :, 1:]  # j's detail at i's pixel: one pixel to the right, 0 off the edge
    k, _ = rbf_kernel(noisy, bandwidth_scale=4.0)
    ref_detail = torch.zeros_like(detail)
    for i in range(n):
        num = detail[i].clone()  # k_ii = 1, M_ii = 1, W_ii the identity
        den = torch.ones(1, h, w)
        for j in range(n):
            if j != i:
                num += k[j, i] * seen * moved[j]
                den += k[j, i] * seen
        ref_detail[i] = num / den
    ref = (1 - abar) * (ref_detail + csd_gradient(mean, noisy, repulsion=1.0, normalization="row",
                                                  bandwidth_scale=4.0))
    assert torch.allclose(shifted.grad, ref, atol=1e-4 * scale), (shifted.grad - ref).abs().max() / scale
    assert not torch.allclose(shifted.grad, identity.grad, atol=1e-2 * scale)  # the warp moved the detail
    assert k[0, 1] > 0.1  # the kernel really mixes, so the test tells a dropped detail mix apart
