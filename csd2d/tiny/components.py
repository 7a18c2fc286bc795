"""Build small InstructPix2Pix components in the exact diffusers/transformers formats.

Used by the test fixtures (random weights) and as the starting point of the embedded model. Nothing here
downloads anything: the tokenizer's vocabulary is written from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

import torch

__all__ = ["write_char_tokenizer", "tiny_ip2p_components", "save_components"]


def _byte_alphabet() -> list:
    """The 256 printable stand-ins for bytes that byte-level BPE (and so CLIPTokenizer) uses."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_char_tokenizer(directory: Path, model_max_length: int = 77, merges: Sequence[str] = ()) -> Path:
    """Write a CLIP tokenizer (``vocab.json`` + ``merges.txt``) with a byte/character vocabulary.

    Without merges every character is one token, which is enough for a tiny text encoder. Returns the
    directory, loadable with ``CLIPTokenizer.from_pretrained``.
    """
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    tok = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=model_max_length
    )
    tok.save_pretrained(directory)
    return directory


def tiny_ip2p_components(
    tokenizer_dir: Path,
    seed: int = 0,
    *,
    latent_channels: int = 4,
    unet_channels: Sequence[int] = (32, 64),
    vae_channels: Sequence[int] = (32, 64),
    vae_norm_groups: int = 0,
    text_dim: int = 32,
    text_layers: int = 2,
    max_text_length: int = 77,
) -> Dict[str, object]:
    """Seeded random InstructPix2Pix components: UNet with ``in_channels = 2 × latent``, AutoencoderKL (GroupNorm
    with ``vae_norm_groups`` groups; 0: min(32, channels)), CLIP text model, character tokenizer, DDPM scheduler
    with Stable Diffusion's beta schedule."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(tokenizer_dir, max_text_length)))
    torch.manual_seed(seed)
    n_blocks = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(unet_channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_blocks - 1) + ("UpBlock2D",),
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=min(32, min(unet_channels)),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(vae_channels),
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=vae_norm_groups or min(32, min(vae_channels)),
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_components(components: Dict[str, object], directory: Path) -> Path:
    """Save components in the diffusers pipeline layout (one subfolder each, safetensors weights)."""
    directory = Path(directory)
    for name, component in components.items():
        kwargs = {"safe_serialization": True} if hasattr(component, "state_dict") else {}
        component.save_pretrained(directory / name, **kwargs)
    (directory / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionInstructPix2PixPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            },
            indent=2,
        )
    )
    return directory
