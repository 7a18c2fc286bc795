"""InstructPix2Pix scoring for score distillation: text encoding, VAE, timesteps and three-way guidance.

Models are passed to :class:`IP2PGuidance`; :meth:`IP2PGuidance.from_pretrained` loads them from a hub id or
a local directory in the diffusers layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``), safetensors only.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .views import tiled_apply

__all__ = [
    "IP2PGuidance",
    "ModelLoadError",
    "load_consistency_decoder",
    "ip2p_guidance",
    "sds_weight",
    "to_minus_one_one",
    "to_zero_one",
]

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
EMBEDDED_MODEL = "embedded"
"""Name of the small model trained by this project and shipped in ``csd2d/tiny/weights``."""


class ModelLoadError(ValueError):
    """Raised when a diffusion model cannot be loaded; the message names the model argument."""


def to_minus_one_one(images: Tensor) -> Tensor:
    """Map images from [0, 1] to the VAE's [−1, 1] range."""
    return images * 2.0 - 1.0


def to_zero_one(images: Tensor) -> Tensor:
    """Map VAE output from [−1, 1] back to [0, 1] (clamped)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def ip2p_guidance(
    eps_full: Tensor, eps_image: Tensor, eps_uncond: Tensor, guidance_scale: float, image_guidance_scale: float
) -> Tensor:
    """Three-way classifier-free guidance of InstructPix2Pix (Brooks et al. 2023, eq. 3).

    ``ε̂ = ε(∅, ∅) + s_I · (ε(c_I, ∅) − ε(∅, ∅)) + s_T · (ε(c_I, c_T) − ε(c_I, ∅))``
    """
    return (
        eps_uncond
        + image_guidance_scale * (eps_image - eps_uncond)
        + guidance_scale * (eps_full - eps_image)
    )


def sds_weight(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Score-distillation weight ``w(t) = 1 − ᾱ_t`` (DreamFusion, eq. 3)."""
    return 1.0 - alphas_cumprod.to(t.device)[t]


def _chunked(fn: Callable[..., Tensor], max_batch: Optional[int], *args: Tensor) -> Tensor:
    """Apply ``fn`` to the leading-dimension chunks of ``args`` (at most ``max_batch`` rows) and concatenate."""
    n = args[0].shape[0]
    step = n if not max_batch else max_batch
    return torch.cat([fn(*(a[i : i + step] for a in args)) for i in range(0, n, step)])


@dataclass
class EditScores:
    """Result of :meth:`IP2PGuidance.edit_scores`."""

    scores: Tensor
    """``ε̂_target − ε̂_source`` per particle, unweighted (the CSD-Edit step applies ``w(t)`` to its whole update)."""
    noisy_targets: Tensor
    """The noised target latents ``z_t`` (the points the CSD kernel is evaluated on)."""
    t: Tensor
    """The timestep used (shared by all particles)."""


def load_consistency_decoder(
    source: Union[str, os.PathLike], *, torch_dtype: torch.dtype = torch.float32, arg_name: str = "consistency_decoder"
):
    """Load a diffusers ``ConsistencyDecoderVAE`` (OpenAI's consistency decoder, ``openai/consistency-decoder``;
    the official CSD code's ``--consistency_decoder``) from a hub id or a local directory, safetensors only."""
    from diffusers import ConsistencyDecoderVAE

    name = str(source).strip()
    if not name:
        raise ModelLoadError(f"{arg_name}: expected a hub id or a local directory, got an empty string")
    try:
        return ConsistencyDecoderVAE.from_pretrained(name, torch_dtype=torch_dtype, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ModelLoadError(
            f"{arg_name}: expected a ConsistencyDecoderVAE with safetensors weights (a hub id like "
            f"'openai/consistency-decoder' or a local directory), got {name!r}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def _check_decoder(decoder, vae, arg_name: str):
    """The consistency decoder must read the VAE's latents: same channels and the same upsampling factor."""
    factor = 2 ** (len(decoder.config.encoder_block_out_channels) - 1)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if decoder.config.latent_channels != vae.config.latent_channels or factor != vae_factor:
        raise ModelLoadError(
            f"{arg_name}: expected a decoder for the model's VAE ({vae.config.latent_channels} latent channels, "
            f"{vae_factor}× upsampling), got {decoder.config.latent_channels} channels and {factor}× upsampling"
        )
    return decoder


class IP2PGuidance:
    """InstructPix2Pix as a score function for (collaborative) score distillation.

    Args:
        unet: a ``UNet2DConditionModel`` with ``in_channels = 2 × latent channels`` (noisy latent ‖ image latent).
        vae: an ``AutoencoderKL``; its ``config.scaling_factor`` scales latents.
        text_encoder: a CLIP text model; its last hidden state conditions the UNet.
        tokenizer: the matching tokenizer.
        scheduler: any diffusers scheduler with ``alphas_cumprod`` and ``add_noise`` (a DDPM scheduler is built
            from the config by :meth:`from_pretrained`).
        decoder: optional ``ConsistencyDecoderVAE`` that replaces the VAE's decoder in :meth:`decode_latents`
            (decode only; encoding keeps ``vae``). See :func:`load_consistency_decoder`.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, decoder=None) -> None:
        latent_channels = vae.config.latent_channels
        if unet.config.in_channels != 2 * latent_channels:
            raise ValueError(
                f"unet: expected in_channels = 2 × vae latent_channels = {2 * latent_channels} (InstructPix2Pix), "
                f"got {unet.config.in_channels}"
            )
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self._text_cache: dict = {}
        self.decoder = None if decoder is None else _check_decoder(decoder, vae, "decoder").eval().requires_grad_(False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: Union[str, os.PathLike] = DEFAULT_MODEL,
        *,
        device: Union[str, torch.device] = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        arg_name: str = "model",
        consistency_decoder: Optional[Union[str, os.PathLike]] = None,
        consistency_decoder_arg: str = "consistency_decoder",
        attention: str = "sdpa",
        compile_unet: bool = False,
        offload: bool = False,
    ) -> "IP2PGuidance":
        """Load an InstructPix2Pix model from a hub id or a local diffusers directory (safetensors only).

        Args:
            model: hub id (e.g. ``timbrooks/instruct-pix2pix``), local directory, or ``"embedded"`` for the
                project's own tiny model (works offline on a CPU; 64 px windows, four instructions).
            device: where to put the models.
            torch_dtype: weights dtype (``torch.float16`` halves GPU memory).
            arg_name: the name of the user-facing argument, used in error messages (e.g. ``--model``).
            consistency_decoder: optional ``ConsistencyDecoderVAE`` (hub id such as ``openai/consistency-decoder``
                or a local directory) that decodes instead of the VAE; ``consistency_decoder_arg`` names it in errors.
            attention / compile_unet / offload: memory and speed controls, see :meth:`configure_memory`.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        source = str(model).strip()
        if not source:
            raise ModelLoadError(f"{arg_name}: expected a hub id or a local directory, got an empty string")
        if source == EMBEDDED_MODEL:
            from .tiny import WEIGHTS_DIR

            source = str(WEIGHTS_DIR)
        local = Path(source).expanduser()
        if local.exists():
            if not local.is_dir():
                raise ModelLoadError(f"{arg_name}: expected a model directory, got the file {source!r}")
            source = str(local)
        elif source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise ModelLoadError(
                f"{arg_name}: expected a hub id like {DEFAULT_MODEL!r} or an existing directory, got {source!r}"
            )
        common = dict(use_safetensors=True)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", torch_dtype=torch_dtype, **common
            )
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch_dtype, **common)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch_dtype, **common)
            scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
        except (OSError, ValueError, EnvironmentError) as err:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} and not local.exists()
            hint = (
                " (HF_HUB_OFFLINE is set: only models already in the Hugging Face cache can load)" if offline else ""
            )
            raise ModelLoadError(
                f"{arg_name}: expected an InstructPix2Pix model in diffusers layout with safetensors weights "
                f"(a hub id like {DEFAULT_MODEL!r} or a local directory), got {str(model)!r}{hint}: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        decoder = None
        if consistency_decoder is not None:
            decoder = load_consistency_decoder(consistency_decoder, torch_dtype=torch_dtype, arg_name=consistency_decoder_arg)
            _check_decoder(decoder, vae, consistency_decoder_arg)
        guidance = cls(unet, vae, text_encoder, tokenizer, scheduler, decoder=decoder)
        return guidance.to(device).configure_memory(attention=attention, compile_unet=compile_unet, offload=offload)

    def configure_memory(
        self, *, attention: str = "sdpa", compile_unet: bool = False, offload: bool = False
    ) -> "IP2PGuidance":
        """Memory and speed controls (in place; returns ``self``). Results are unchanged within numerical
        tolerance (tests/test_benchmarks.py); numbers in benchmarks/RESULTS.md.

        Args:
            attention: ``"sdpa"`` — PyTorch's scaled-dot-product attention, diffusers' default processor
                (fastest, memory-efficient on CUDA); ``"sliced"`` — diffusers' attention slicing
                (``set_attention_slice("auto")``: heads one half at a time), the fallback the official CSD code
                uses (``enable_attention_slicing``) when SDPA is unavailable or memory is tighter still.
            compile_unet: ``torch.compile`` the UNet in place (first step pays the compilation; later steps are
                faster on a GPU; needs a C compiler on CPU).
            offload: keep the text encoder and the VAE on the CPU and move each onto the UNet's device only while
                it runs (they run once per prompt and per encode/decode, the UNet every step), saving their
                0.42 GB (SD 1.5 VAE + CLIP-L in fp16, counted in benchmarks/RESULTS.md) of device memory during
                the optimisation. A no-op on a CPU.
        """
        from diffusers.models.attention_processor import AttnProcessor2_0

        if attention == "sdpa":
            self.unet.set_attn_processor(AttnProcessor2_0())
        elif attention == "sliced":
            self.unet.set_attention_slice("auto")
        else:
            raise ValueError(f"attention: expected 'sdpa' or 'sliced', got {attention!r}")
        if offload:
            home = torch.device("cpu")

            def load(module, args) -> None:
                module.to(self.device)  # the UNet's device: where inputs are put

            def unload(module, args, output) -> None:
                module.to(home)

            # The VAE's encode/decode are not its forward: hook its parts (encoder, decoder, quant convs).
            parts = [self.text_encoder] + [m for m in self.vae.children() if next(m.parameters(), None) is not None]
            for module in parts:
                module.to(home)
                module.register_forward_pre_hook(load)
                module.register_forward_hook(unload)
        if compile_unet:
            self.unet.compile()
        return self

    def to(self, device: Union[str, torch.device]) -> "IP2PGuidance":
        """Move the models to ``device`` (in place) and return ``self``."""
        for module in (self.unet, self.vae, self.text_encoder, self.decoder):
            if module is not None:
                module.to(device)
        self._text_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each axis (8 for Stable Diffusion), read from the VAE config."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompts: Union[str, Sequence[str]]) -> Float[Tensor, "B L D"]:
        """Encode prompts with the tokenizer and text encoder (last hidden state), cached per prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            self._warn_truncated(missing)
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
            for prompt, h in zip(missing, hidden):
                self._text_cache[prompt] = h
        return torch.stack([self._text_cache[p] for p in prompts])

    def _warn_truncated(self, prompts: Sequence[str]) -> None:
        """Warn (once per prompt: encodings are cached) when a prompt is longer than the text encoder reads."""
        limit = self.tokenizer.model_max_length
        for prompt, ids in zip(prompts, self.tokenizer(list(prompts), verbose=False).input_ids):
            if len(ids) > limit:
                dropped = self.tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True)
                dropped = dropped if len(dropped) <= 60 else dropped[:57] + "..."
                warnings.warn(f"prompt: expected at most {limit} tokens, got {len(ids)}; the last {len(ids) - limit} "
                              f"are ignored ({dropped!r})", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ VAE
    def encode_images(
        self,
        images: Float[Tensor, "B 3 H W"],
        max_batch: Optional[int] = None,
        tile: Optional[int] = None,
        overlap: int = 0,
        requires_grad: bool = False,
    ) -> Tensor:
        """Encode images in [0, 1] to scaled latents (distribution mode × ``vae.config.scaling_factor``).

        ``tile`` (pixels) encodes large images tile by tile with ``overlap`` pixels of feathered overlap.
        ``requires_grad`` keeps the graph back to ``images`` (score distillation into a 3-D scene).
        """
        sf = self.vae.config.scaling_factor
        x = to_minus_one_one(images.to(self.device, self.dtype))

        def encode(b: Tensor) -> Tensor:
            return self.vae.encode(b).latent_dist.mode() * sf

        with torch.set_grad_enabled(requires_grad):
            if tile:
                f = 1.0 / self.vae_scale_factor
                return _chunked(lambda b: tiled_apply(encode, b, tile, overlap, f), max_batch, x)
            return _chunked(encode, max_batch, x)

    @torch.no_grad()
    def decode_latents(
        self,
        latents: Float[Tensor, "B C h w"],
        max_batch: Optional[int] = None,
        tile: Optional[int] = None,
        overlap: int = 0,
    ) -> Tensor:
        """Decode scaled latents to images in [0, 1] (fp32). ``tile``/``overlap`` are in output pixels.

        With a consistency decoder (``self.decoder``) it decodes instead of the VAE, in its default two steps
        and with its noise seeded 0 on every call, so the same latents give the same images.
        """
        if self.decoder is None:
            z = latents.to(self.device, self.dtype) / self.vae.config.scaling_factor

            def decode(b: Tensor) -> Tensor:
                return to_zero_one(self.vae.decode(b).sample.float())

        else:
            # ConsistencyDecoderVAE.decode takes unscaled latents and multiplies by its own scaling factor.
            z = latents.to(self.device, self.dtype) / self.decoder.config.scaling_factor
            gen = torch.Generator(self.device).manual_seed(0)

            def decode(b: Tensor) -> Tensor:
                return to_zero_one(self.decoder.decode(b, generator=gen).sample.float())

        if tile:
            f = self.vae_scale_factor
            return _chunked(lambda b: tiled_apply(decode, b, max(1, tile // f), max(1, overlap // f), f), max_batch, z)
        return _chunked(decode, max_batch, z)

    def condition_latents(self, source_latents: Tensor) -> Tensor:
        """InstructPix2Pix's image conditioning: the *unscaled* VAE latent of the source image."""
        return source_latents / self.vae.config.scaling_factor

    # ------------------------------------------------------------------ diffusion
    def sample_timestep(self, t_min: int, t_max: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """One integer timestep drawn uniformly from ``[t_min, t_max]`` (inclusive)."""
        num = len(self.alphas_cumprod)
        if not (0 <= t_min <= t_max < num):
            raise ValueError(f"t_min/t_max: expected 0 <= t_min <= t_max < {num}, got t_min={t_min}, t_max={t_max}")
        t = torch.randint(t_min, t_max + 1, (1,), generator=generator, device=generator.device if generator else "cpu")
        return t.to(self.device)

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward diffusion ``z_t = √ᾱ_t z + √(1 − ᾱ_t) ε``."""
        a = self.alphas_cumprod.to(latents.device)[t].reshape(-1, *([1] * (latents.ndim - 1)))
        return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)

    @torch.no_grad()
    def predict_noise(
        self,
        noisy: Float[Tensor, "N C h w"],
        cond_latents: Float[Tensor, "N C h w"],
        text_emb: Float[Tensor, "N L D"],
        t: Tensor,
        guidance_scale: float,
        image_guidance_scale: float,
        max_batch: Optional[int] = None,
    ) -> Float[Tensor, "N C h w"]:
        """Guided noise prediction for ``N`` inputs: the three guidance branches of all inputs are stacked
        and run through the UNet in chunks of at most ``max_batch`` rows."""
        n = noisy.shape[0]
        uncond = self.encode_prompt([""]).expand(n, -1, -1)
        no_image = torch.zeros_like(cond_latents)
        z = torch.cat([noisy, noisy, noisy]).to(self.dtype)
        image = torch.cat([cond_latents, cond_latents, no_image]).to(self.dtype)
        text = torch.cat([text_emb.to(self.dtype), uncond.to(self.dtype), uncond.to(self.dtype)])
        timesteps = t.reshape(-1)[:1].expand(3 * n).to(self.device)

        def run(zb: Tensor, ib: Tensor, tb: Tensor, ts: Tensor) -> Tensor:
            return self.unet(torch.cat([zb, ib], dim=1), ts, encoder_hidden_states=tb).sample

        eps = _chunked(run, max_batch, z, image, text, timesteps).float()
        eps_full, eps_image, eps_uncond = eps.chunk(3)
        return ip2p_guidance(eps_full, eps_image, eps_uncond, guidance_scale, image_guidance_scale)

    @torch.no_grad()
    def edit_scores(
        self,
        target_latents: Float[Tensor, "N C h w"],
        source_latents: Float[Tensor, "N C h w"],
        target_emb: Float[Tensor, "N L D"],
        source_emb: Float[Tensor, "N L D"],
        *,
        guidance_scale: float,
        image_guidance_scale: float,
        t_min: int,
        t_max: int,
        generator: Optional[torch.Generator] = None,
        noise: Optional[Tensor] = None,
        t: Optional[Tensor] = None,
        max_batch: Optional[int] = None,
    ) -> EditScores:
        """CSD-Edit scores ``ε̂(z_t^tgt; c_T, src) − ε̂(z_t^src; c_S, src)`` (Kim et al. 2023, eq. 8), unweighted:
        :func:`csd2d.csd.csd_edit_step` multiplies its whole update by ``w(t)``.

        Target and source latents are noised with the *same* noise and timestep; both branches are
        conditioned on the source image and batched into the same UNet calls. One timestep is shared by
        all particles so that their noisy latents are comparable under the CSD kernel.

        Args:
            target_latents: the particles being optimised (scaled latents).
            source_latents: the source image latents (scaled), one per particle.
            target_emb / source_emb: per-particle text embeddings (instruction and source prompt).
            noise: optional explicit noise (default: standard normal from ``generator``).
            guidance_scale / image_guidance_scale: s_T and s_I (defaults live in :class:`csd2d.config.StepConfig`).
            t_min / t_max: timestep range sampled when ``t`` is not given.
            t: optional explicit timestep (default: uniform in ``[t_min, t_max]``).
        """
        if target_latents.shape != source_latents.shape:
            raise ValueError(
                f"source_latents: expected shape {tuple(target_latents.shape)} like target_latents, "
                f"got {tuple(source_latents.shape)}"
            )
        if t is None:
            t = self.sample_timestep(t_min, t_max, generator)
        if noise is None:
            noise = torch.randn(
                target_latents.shape, generator=generator, device=generator.device if generator else "cpu"
            ).to(target_latents.device)
        noisy_t = self.add_noise(target_latents, noise, t)
        noisy_s = self.add_noise(source_latents, noise, t)
        cond = self.condition_latents(source_latents)
        eps = self.predict_noise(
            torch.cat([noisy_t, noisy_s]),
            torch.cat([cond, cond]),
            torch.cat([target_emb, source_emb]),
            t,
            guidance_scale,
            image_guidance_scale,
            max_batch,
        )
        eps_target, eps_source = eps.chunk(2)
        return EditScores(scores=eps_target - eps_source, noisy_targets=noisy_t, t=t)
