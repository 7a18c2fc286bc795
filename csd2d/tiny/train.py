"""Train the embedded instruction-editing model from scratch: ``python -m csd2d.tiny.train``.

Recipe (all seeded; see the model card written next to the weights):

1. **Data.** Random square crops (random scale, position and flip) of scikit-image's bundled colour photos,
   plus its grey textures colourised with random two-colour gradient maps, resized to ``size`` px.
   ``coffee`` and ``chelsea`` are held out for the demo. Each crop is edited with every instruction of
   :mod:`csd2d.tiny.edits` (random edits get ``draws`` independent outcomes).
2. **VAE.** An ``AutoencoderKL`` with a ×4 downsampling trained on 32 px patches of sources and edits
   (L1 + MSE + a small KL, decoding the posterior mean), then ``scaling_factor = 1 / std(latents)`` as in
   Stable Diffusion.
3. **Text.** A tiny CLIP text model with random weights, frozen (closed vocabulary; the UNet learns to read it).
4. **UNet.** ε-prediction on ``(noisy edited latent ‖ source latent)`` with the instruction's embedding,
   Stable Diffusion's scaled-linear 1000-step schedule, and InstructPix2Pix's conditioning dropout
   (5 % no text, 5 % no image, 5 % neither) so that three-way guidance works. Without text the target is the
   unedited source, so the empty instruction means "keep the image" (what CSD-Edit's source branch
   subtracts).
   The training noise carries a per-channel constant *offset* (``offset_noise``), so that the UNet cannot read
   an image's overall brightness and colour off the noisy input and has to take them from the instruction.

The result loads with ``IP2PGuidance.from_pretrained(path)`` exactly like ``timbrooks/instruct-pix2pix``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from . import WEIGHTS_DIR
from .components import save_components, tiny_ip2p_components
from .edits import EDITS, RANDOM_EDITS, apply_edit

TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "retina", "stereo_motorcycle",
                "immunohistochemistry", "colorwheel")
GREY_TEXTURES = ("brick", "grass", "gravel", "camera", "clock", "coins", "moon")
HELD_OUT = ("coffee", "chelsea")


@dataclass
class TrainConfig:
    """Reproduce the embedded model."""

    output: Path = WEIGHTS_DIR
    """Where to write the model (diffusers layout) and its model card."""
    seed: int = 0
    """Seed for data, initialisation and training."""
    size: int = 64
    """Training crop side in pixels (16 latents)."""
    crops: int = 2400
    """Number of source crops."""
    draws: int = 2
    """Independent outcomes per random edit and crop."""
    vae_steps: int = 3500
    vae_batch: int = 32
    vae_crop: int = 32
    """The VAE trains on random ``vae_crop`` px patches of the crops (it is convolutional)."""
    vae_lr: float = 5e-3
    vae_sample: float = 0.0
    """Posterior sampling during VAE training (0: decode the mean, a near-deterministic autoencoder)."""
    vae_norm_groups: int = 4
    """GroupNorm groups in the VAE (few groups keep colour statistics in a thin network)."""
    unet_steps: int = 4000
    unet_batch: int = 48
    unet_lr: float = 1e-3
    offset_noise: float = 0.5
    """Training noise is ``ε + offset_noise · δ`` with ``δ`` one normal draw per sample and channel (constant over
    the image), "offset noise". Without it the UNet reads an image's overall brightness and colour off the noisy
    input (the schedule never removes the mean; Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed"), and score distillation, which starts from the source, cannot darken. 0.5: our
    measurement (README, "Embedded model: design notes")."""
    identity_when_no_text: bool = True
    """When the instruction is dropped (classifier-free guidance training), the target is the unedited source:
    the empty instruction then means "keep the image", which is what CSD-Edit's source branch subtracts."""
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    device: str = "cpu"


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    return img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)


def make_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random crops ``[n, 3, size, size]`` in [0, 1] (see the module docstring)."""
    rng = np.random.default_rng(seed)
    colour = [torch.from_numpy(_photo(p)).permute(2, 0, 1) for p in TRAIN_PHOTOS]
    grey = [torch.from_numpy(_photo(p)) for p in GREY_TEXTURES]
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        if rng.random() < 0.75:
            img = colour[rng.integers(len(colour))]
        else:
            g = grey[rng.integers(len(grey))]
            lo, hi = torch.from_numpy(rng.random(3)).float(), torch.from_numpy(rng.random(3)).float()
            img = lo[:, None, None] + (hi - lo)[:, None, None] * g[None]
        _, h, w = img.shape
        side = int(rng.uniform(0.2, 1.0) * min(h, w))
        side = max(side, size)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[None, :, y : y + side, x : x + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out[i] = crop.flip(-1) if rng.random() < 0.5 else crop
    return out.clamp(0, 1)


def make_pairs(crops: torch.Tensor, draws: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Every crop edited by every instruction; returns ``(source_index, edited, instructions)``."""
    gen = torch.Generator().manual_seed(seed)
    idx, edited, names = [], [], []
    for instruction in EDITS:
        for _ in range(draws if instruction in RANDOM_EDITS else 1):
            edited.append(apply_edit(instruction, crops, gen))
            idx.append(torch.arange(len(crops)))
            names += [instruction] * len(crops)
    return torch.cat(idx), torch.cat(edited), names


def _log(curve: List[Tuple[int, float]], step: int, losses: List[float], every: int, label: str, t0: float):
    if (step + 1) % every == 0:
        avg = float(np.mean(losses[-every:]))
        curve.append((step + 1, round(avg, 5)))
        print(f"[{label}] step {step + 1}: loss {avg:.4f} ({time.time() - t0:.0f}s)", flush=True)


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vae_lr, total_steps=cfg.vae_steps, pct_start=0.1)
    losses, curve, t0 = [], [], time.time()
    for step in range(cfg.vae_steps):
        batch = images[torch.randint(len(images), (cfg.vae_batch,), generator=gen)]
        y, x0 = torch.randint(0, cfg.size - cfg.vae_crop + 1, (2,), generator=gen).tolist()
        x = batch[:, :, y : y + cfg.vae_crop, x0 : x0 + cfg.vae_crop].to(cfg.device) * 2 - 1
        post = vae.encode(x).latent_dist
        noise = torch.randn(post.mean.shape, generator=gen).to(cfg.device)
        z = post.mean + cfg.vae_sample * post.std * noise
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        _log(curve, step, losses, 100, "vae", t0)
    vae.eval().requires_grad_(False)
    return curve, time.time() - t0


@torch.no_grad()
def encode_mode(vae, images: torch.Tensor, device: str, batch: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + batch].to(device) * 2 - 1).latent_dist.mode()
                      for i in range(0, len(images), batch)])


def train_unet(unet, scheduler, z_src, src_idx, z_tgt, text: torch.Tensor, text_idx, empty: torch.Tensor,
               sf: float, cfg: TrainConfig, gen: torch.Generator):
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.unet_lr, total_steps=cfg.unet_steps, pct_start=0.05)
    acp = scheduler.alphas_cumprod.float()
    losses, curve, t0 = [], [], time.time()
    for step in range(cfg.unet_steps):
        pick = torch.randint(len(z_tgt), (cfg.unet_batch,), generator=gen)
        target = z_tgt[pick] * sf
        cond = z_src[src_idx[pick]].clone()
        emb = text[text_idx[pick]].clone()
        u = torch.rand(cfg.unet_batch, generator=gen)
        drop_text = (u < 0.05) | (u >= 0.10) & (u < 0.15)
        drop_image = (u >= 0.05) & (u < 0.15)
        emb[drop_text] = empty
        if cfg.identity_when_no_text:
            keep = drop_text & ~drop_image
            target[keep] = z_src[src_idx[pick]][keep] * sf
        cond[drop_image] = 0.0
        t = torch.randint(0, len(acp), (cfg.unet_batch,), generator=gen)
        noise = torch.randn(target.shape, generator=gen)
        if cfg.offset_noise:
            noise = noise + cfg.offset_noise * torch.randn(target.shape[:2] + (1, 1), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * target + (1 - a).sqrt() * noise
        pred = unet(torch.cat([noisy, cond], 1).to(cfg.device), t.to(cfg.device),
                    encoder_hidden_states=emb.to(cfg.device)).sample
        loss = F.mse_loss(pred, noise.to(cfg.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        _log(curve, step, losses, 100, "unet", t0)
    unet.eval().requires_grad_(False)
    return curve, time.time() - t0


def build(cfg: TrainConfig) -> Dict[str, object]:
    """Build and train all components; returns them with training statistics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t_start = time.time()
    crops = make_crops(cfg.crops, cfg.size, cfg.seed)
    src_idx, edited, names = make_pairs(crops, cfg.draws, cfg.seed + 1)
    tmp = Path(tempfile.mkdtemp())
    try:
        comps = tiny_ip2p_components(
            tmp / "tok", seed=cfg.seed, unet_channels=(32, 32, 64), vae_channels=(16, 32, 32),
            vae_norm_groups=cfg.vae_norm_groups, text_dim=64, text_layers=2, max_text_length=24,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    vae, unet, text_encoder, tokenizer, scheduler = (
        comps[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    vae.to(cfg.device)
    unet.to(cfg.device)
    vae_curve, vae_time = train_vae(vae, torch.cat([crops, edited]), cfg, gen)
    z_src = encode_mode(vae, crops, cfg.device).cpu()
    z_tgt = encode_mode(vae, edited, cfg.device).cpu()
    sf = float(1.0 / torch.cat([z_src, z_tgt]).std())
    vae.register_to_config(scaling_factor=sf)
    with torch.no_grad():
        recon = vae.decode(z_src[:256].to(cfg.device)).sample.clamp(-1, 1).cpu()
    vae_psnr = float(-10 * torch.log10(((recon + 1) / 2 - crops[:256]).pow(2).mean()))
    vocab = list(EDITS) + [""]
    tokens = tokenizer(vocab, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        text = text_encoder(tokens.input_ids)[0]
    text_idx = torch.tensor([vocab.index(n) for n in names])
    unet_curve, unet_time = train_unet(unet, scheduler, z_src, src_idx, z_tgt, text[:-1], text_idx, text[-1],
                                       sf, cfg, gen)
    comps["vae"], comps["unet"] = vae.cpu(), unet.cpu()
    stats = dict(vae_loss_curve=vae_curve, unet_loss_curve=unet_curve, vae_seconds=round(vae_time, 1),
                 unet_seconds=round(unet_time, 1), total_seconds=round(time.time() - t_start, 1),
                 vae_psnr_db=round(vae_psnr, 2), scaling_factor=sf, pairs=len(names))
    return dict(components=comps, stats=stats)


def write_model_card(directory: Path, cfg: TrainConfig, stats: Dict[str, object]) -> None:
    size = sum(p.stat().st_size for p in directory.rglob("*.safetensors"))
    card = dict(config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k != "output"},
                instructions={k: ("random" if k in RANDOM_EDITS else "deterministic") for k in EDITS},
                train_photos=TRAIN_PHOTOS, grey_textures=GREY_TEXTURES, held_out=HELD_OUT,
                weights_bytes=size, torch=torch.__version__, **stats)
    (directory / "model_card.json").write_text(json.dumps(card, indent=1))
    curve = ", ".join(f"{s}:{l}" for s, l in stats["unet_loss_curve"][:: max(1, len(stats["unet_loss_curve"]) // 10)])
    (directory / "README.md").write_text(
        "# csd2d embedded model (tiny InstructPix2Pix)\n\n"
        "Trained from scratch by `python -m csd2d.tiny.train` on procedurally edited crops of scikit-image's "
        "bundled photos; see `csd2d/tiny/train.py` for the recipe and `csd2d/tiny/edits.py` for the vocabulary.\n\n"
        f"- instructions: {', '.join(f'`{k}`' for k in EDITS)} (random outcome: {', '.join(RANDOM_EDITS)})\n"
        f"- seed {cfg.seed}, {cfg.crops} crops of {cfg.size} px, {stats['pairs']} edit pairs\n"
        f"- VAE ×4, {cfg.vae_steps} steps, reconstruction PSNR {stats['vae_psnr_db']} dB, "
        f"scaling factor {stats['scaling_factor']:.4f}\n"
        f"- UNet {cfg.unet_steps} steps × batch {cfg.unet_batch}; loss curve (step:loss) {curve}\n"
        f"- training time {stats['total_seconds']} s on {cfg.device} (torch {torch.__version__}); "
        f"weights {size / 1e6:.1f} MB (safetensors)\n"
        "- not a general image editor: it knows four instructions and works on 64–128 px windows.\n"
    )


def main(cfg: TrainConfig) -> Path:
    result = build(cfg)
    out = Path(cfg.output)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_components(result["components"], tmp)
    write_model_card(tmp, cfg, result["stats"])
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out} ({result['stats']['total_seconds']} s)")
    return out


if __name__ == "__main__":
    main(tyro.cli(TrainConfig))
