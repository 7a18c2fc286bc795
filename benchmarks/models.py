"""Random-weight InstructPix2Pix models built in code (no network): full size or tiny.

``full``: the Stable Diffusion 1.5 UNet shape with ``in_channels = 8`` (InstructPix2Pix), the SD VAE and the
CLIP ViT-L/14 text encoder shapes; 512² images (64² latents). Speed does not depend on the weights, so random
weights time the same as ``timbrooks/instruct-pix2pix``.
``tiny``: the test suite's tiny components (32/64 channels, VAE factor 2), for CPU dry runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from csd2d.guidance import IP2PGuidance  # noqa: E402

__all__ = ["ModelSpec", "SPECS", "build_guidance", "Timer", "sync", "peak_memory_mb", "reset_peak", "write_json"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    image: int
    """Image side in pixels (one particle = one ``image × image`` window or frame)."""


SPECS: Dict[str, ModelSpec] = {
    # 512² images as in the paper (64² latents; Kim et al. 2023 use 512 px windows and frames).
    "full": ModelSpec("full", 512),
    # The tiny model has a VAE factor of 2: 32 px images give 16² latents like the tests.
    "tiny": ModelSpec("tiny", 32),
}


def _full_components(tokenizer_dir: Path, seed: int) -> dict:
    """SD 1.5 UNet (in_channels=8), SD VAE, CLIP-L text encoder: shapes from their published configs."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from csd2d.tiny.components import write_char_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tokenizer_dir, 77)))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(  # runwayml/stable-diffusion-v1-5 unet/config.json, in_channels 8 (IP2P)
        sample_size=64,
        in_channels=8,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(  # SD 1.5 vae/config.json
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(  # openai/clip-vit-large-patch14 text_config
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def build_components(spec: str, seed: int = 0) -> dict:
    """Random-weight components for ``spec`` (``full`` or ``tiny``); nothing is downloaded."""
    tok_dir = Path(tempfile.mkdtemp(prefix="csd_bench_tok_"))
    if spec == "full":
        return _full_components(tok_dir, seed)
    if spec == "tiny":
        from csd2d.tiny.components import tiny_ip2p_components

        return tiny_ip2p_components(tok_dir, seed=seed)
    raise ValueError(f"--model: expected one of {sorted(SPECS)}, got {spec!r}")


def build_guidance(spec: str, device: str, dtype: torch.dtype, seed: int = 0) -> IP2PGuidance:
    """An :class:`IP2PGuidance` on random weights, through the real constructor."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # casting random modules with .to(dtype) is what we mean
    with torch.device(device):  # random init where the model runs: on a GPU, seconds instead of a minute
        c = build_components(spec, seed)
    for k in ("unet", "vae", "text_encoder"):
        c[k] = c[k].to(device=device, dtype=dtype)
    return IP2PGuidance(c["unet"], c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"])


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Accumulates wall time per label; ``sync`` on CUDA so the time covers the kernels, not the launch."""

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.totals: Dict[str, float] = {}

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t0

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self(label):
                return fn(*args, **kwargs)

        return timed


def median_time(fn: Callable[[], object], device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device) -> Optional[float]:
    """CUDA max allocated (MiB) on a GPU; None on CPU (use a subprocess and its peak RSS there)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def machine() -> dict:
    import platform

    info = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                cpus=os.cpu_count())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: Optional[str], payload: dict) -> None:
    """Write ``payload`` as JSON atomically (:func:`csd2d.io.write_text_atomic`); nothing without a path."""
    if not path:
        return
    import json

    from csd2d.io import write_text_atomic

    write_text_atomic(Path(path), json.dumps(payload, indent=2))
