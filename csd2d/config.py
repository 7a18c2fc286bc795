"""The one tree of editing settings, and the presets that list what differs from it.

``StepConfig`` (one CSD-Edit step) ⊂ ``EditConfig`` (the optimisation around it) ⊂ ``PanoramaConfig`` /
``VideoConfig``; the nerfstudio plugin nests an ``EditConfig`` subclass with its 3D defaults. Every default is
declared once, here or in the one subclass that changes it for its modality, with its source in the field's
docstring. Every instance validates itself in ``__post_init__`` (the API, the CLI, presets and ``ns-train`` all
go through it) and raises :class:`ConfigError`, which names the field.

Presets (``image``, ``region``, ``video``) are YAML files shipped inside the package (``csd2d/presets/``); they
list only the fields that differ from the dataclass defaults.

Sources named below: *official code* = ``csdedit_image.py`` / ``csdedit_video.py`` of the authors' repository
(subin-kim-cv/CSD); *paper* = Kim et al. 2023, arXiv 2307.04787; *IP2P* = InstructPix2Pix (Brooks et al. 2023)
and diffusers' ``StableDiffusionInstructPix2PixPipeline``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Type, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "StepConfig",
    "EditConfig",
    "PanoramaConfig",
    "VideoConfig",
    "MemoryConfig",
    "Normalization",
    "PanoramaAlign",
    "VideoAlign",
    "Noise",
    "PRESET_DIR",
    "MIN_VAE_TILE",
    "load_preset",
    "preset_names",
    "with_overrides",
]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
"""Where the named presets live: inside the installed package, so that a wheel carries them."""

MIN_VAE_TILE = 64
"""Smallest VAE tile side in pixels: smaller tiles multiply the VAE calls (a 32 px tile on a 2-megapixel image
is thousands of calls) for no memory a user needs to save."""

C = TypeVar("C", bound="StepConfig")

Normalization = typing.Literal["row", "mean", "count"]
"""How :func:`csd2d.kernel.csd_gradient` normalises particle i's kernel-weighted sums: by its kernel row sum
``Σ_j k(z_j, z_i)`` (``row``), by the mean of all particles' row sums (``mean``: the paper's relative weights,
rescaled so the mean step keeps its size at any N) or by the particle count N (``count``, the paper's eq. 6)."""


PanoramaAlign = typing.Literal["none", "offsets"]
"""How a panorama step's kernel mixes the windows' scores: pixel for pixel (``none``) or each window's score moved
onto the others' pixels by the windows' known offsets, where they overlap (``offsets``; :mod:`csd2d.align`)."""

Noise = typing.Literal["independent", "shared"]
"""How a CSD step noises its particles: each its own draw (``independent``, the official code's) or one draw that
every particle shares (``shared``), so that the kernel's distances between noisy latents are the distances between
the latents themselves, scaled by ``sqrt(ᾱ_t)``, and not mostly the noise's."""

VideoAlign = typing.Literal["none", "flow"]
"""How a video chunk's kernel mixes the frames' scores: pixel for pixel (``none``) or each frame's score moved onto
the others' pixels by optical flow between the source frames, where it is seen (``flow``; :mod:`csd2d.flow`)."""


class ConfigError(ValueError):
    """An invalid setting. ``field`` is the dataclass field's name; the message starts with it and says what was
    expected and what was received. Front ends map ``field`` to their flag (``vae_tile`` → ``--vae-tile``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Refuse ``value`` unless it fits the field's ``annotation`` (int, float, bool, str, or Optional of them).
    A float field accepts an int; an int field refuses 2.7 and True."""
    if typing.get_origin(annotation) is Union:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return
        annotation = next(a for a in args if a is not type(None))
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation)
    if expected is None:
        return
    ok = {int: _is_int(value), float: (_is_int(value) or isinstance(value, float)),
          bool: isinstance(value, bool), str: isinstance(value, str)}[annotation]
    if not ok:
        raise ConfigError(name, f"expected {expected}, got {value!r} ({type(value).__name__})")
    if annotation is float and not math.isfinite(float(value)):
        raise ConfigError(name, f"expected a finite number, got {value!r}")


def _require(name: str, ok: bool, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(name, f"expected {expected}, got {value!r}")


@dataclass
class StepConfig:
    """Knobs of one CSD-Edit step (:func:`csd2d.csd.csd_edit_step`)."""

    guidance_scale: float = 7.5
    """Text (instruction) classifier-free guidance scale s_T. Source: official code (7.5), also IP2P's."""
    image_guidance_scale: float = 5.0
    """Image classifier-free guidance scale s_I (higher keeps closer to the source). Source: official code (5.0)."""
    t_min: int = 20
    """Smallest diffusion timestep sampled. Source: official code (``--min_step 20``)."""
    t_max: int = 500
    """Largest diffusion timestep sampled. Source: official code (``--max_step 500``)."""
    coupling: bool = True
    """Couple the particles through the SVGD kernel (CSD). False gives independent per-sample delta score
    distillation from the same code path: the ablation baseline. Source: paper (CSD); official code ``--svgd``."""
    repulsion: float = 1.0
    """Weight of the kernel-gradient (repulsive) term. Source: paper's SVGD update (weight 1)."""
    normalization: Normalization = "row"
    """What particle i's kernel-weighted sums are divided by: row (its kernel row sum Σ_j k(z_j, z_i), so the drive
    is a kernel-weighted mean of the scores), mean (the mean row sum over particles) or count (N, the paper's eq. 6
    and the official code). Ours: with
    count the step shrinks as N grows, because a row sum counts only the few look-alike particles; on the face
    scene's first 4, 8, 16, 30 views (embedded model) the mean row sum / N is 0.41, 0.23, 0.13, 0.07, and 20 steps
    of "recolor it" at lr 0.1 shift hue by 84°, 40°, 20°, 12° with count against 131°, 116°, 106°, 112° with row
    (132°, 116°, 107°, 113° uncoupled). With N = 1 both are the plain score. Panoramas and videos set count
    (measured there at matched strength); scene editing (csd_nerfstudio) inherits this default."""
    bandwidth: Optional[float] = None
    """Fixed RBF kernel bandwidth h; None uses the median heuristic. Source: paper / official code (median)."""
    bandwidth_scale: float = 1.0
    """Multiplies the median heuristic's bandwidth (a wider kernel mixes more of the other particles' scores; a
    fixed bandwidth is used as given). Source: paper / official code (1). Aligned mixing in 3D sets 16
    (csd_nerfstudio.evaluate's joint-whole-aligned arm): pixel-for-pixel mixing got worse with a wider kernel, aligned
    mixing better (face scene, joint schedule, 'recolor it', seed 0: edit inconsistency 0.0186 at 117° unaligned
    against 0.0109 at 123° aligned, both at 16; 0.0127 at 121° unaligned at 1)."""
    share_grid: Optional[int] = None
    """What the kernel mixes: None, the whole score (the paper); a positive g, only each score's coarse part, its
    mean over a g × g grid of the latent (1: each channel's mean), while every particle keeps the rest of its own
    score (:func:`csd2d.kernel.coarse_scores`), at the weight its mix has in all (the kernel row sum over the
    normaliser: 1 with row, so that with count both parts shrink alike). The views then agree on the edit's
    overall direction (which tint, which way the hue turns) without pasting each other's content where they do not
    overlap; repulsion and the kernel's distances are unchanged. Source: paper (None). Ours, 3D joint schedule (face at 64 px, 30 views, one
    round, 200 fit steps, lr 0.1, bandwidth-scale 4, seeds 0–2; renders' edit inconsistency, against the kernel-off
    arm at the same strength; evaluate's joint arm, csd-edit-tiny-fast's default, then named joint-coarse): 'make it night' 0.0093 against 0.0094 (0.99×), with
    structure 32.2 dB against the kernel-off arm's 32.4, where the whole score gave 0.0115 (1.23×) at 29.5 dB;
    'recolor it' 0.0098 against 0.0138 (0.71×), the whole score 0.0099 (0.72×); seed 0 again with the detail's
    weight computed (1 up to rounding): 0.0096 against 0.0095. On the made textured scene (30 views, the same
    schedule): 'recolor it' 0.0265 against 0.0413 (0.64×; the whole score 0.0405, 0.98×), 'make it night' 0.0102
    against 0.0125 (0.82×; the whole score 1.00×). Mixing the coarse part stops the kernel from costing structure
    at night, but the scene's fit already reconciles the kernel-off arm's tints there
    (its renders spread 0.0094 against its edits' 0.0128), so the kernel gains nothing on top. In 2D the whole
    score is better (windows and frames overlap almost pixel for pixel): 0.97× and 1.38× plain CSD on the demo
    panorama (recolor, night), 1.14× and 1.24× on the demo video (python -m csd2d.evaluate, seeds 0–2). With
    warps as well (align), the detail is mixed through them instead of kept (:func:`csd2d.csd.csd_edit_step`)."""
    noise: Noise = "independent"
    """How the particles are noised in a step (:data:`Noise`): independent draws (the official code's; panoramas
    crop one draw, which is shared where windows overlap) or one shared draw. Source: official code (independent).
    Ours, for the 3D joint schedule (face at 64 px, 30 views, one round, 200 fit steps, 'recolor it', lr 0.1, seed
    0, deterministic fits): shared noise gave renders' edit inconsistency 0.0099 against 0.0116 with the kernel
    off (0.85×; edits 0.0144 against 0.0206), independent noise 0.0098 against 0.0124 (0.79×; edits 0.0160
    against 0.0248). Sharing makes the kernel-off views agree too, so the kernel's gain shrinks."""
    max_batch: Optional[int] = None
    """Largest UNet batch; the 6 × N guidance evaluations are split into chunks of this size to cap memory.
    None: one call. Ours (a memory control; results are the same)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.init:
                _check_type(f.name, getattr(self, f.name), hints.get(f.name))
        self.validate()

    def validate(self) -> None:
        """Range checks, field by field in declaration order, then the ones that relate two fields."""
        _require("guidance_scale", self.guidance_scale >= 0, "a scale >= 0", self.guidance_scale)
        _require("image_guidance_scale", self.image_guidance_scale >= 0, "a scale >= 0", self.image_guidance_scale)
        _require("t_min", self.t_min >= 0, "a timestep >= 0", self.t_min)
        _require("t_max", self.t_max >= self.t_min, f"a timestep >= t_min ({self.t_min})", self.t_max)
        _require("repulsion", self.repulsion >= 0, "a weight >= 0", self.repulsion)
        _require("normalization", self.normalization in typing.get_args(Normalization),
                 f"one of {list(typing.get_args(Normalization))}", self.normalization)
        _require("noise", self.noise in typing.get_args(Noise), f"one of {list(typing.get_args(Noise))}",
                 self.noise)
        _require("bandwidth", self.bandwidth is None or self.bandwidth > 0, "a bandwidth > 0 or None", self.bandwidth)
        _require("share_grid", self.share_grid is None or self.share_grid >= 1, "a grid side >= 1 or None",
                 self.share_grid)
        _require("bandwidth_scale", self.bandwidth_scale > 0, "a factor > 0", self.bandwidth_scale)
        _require("max_batch", self.max_batch is None or self.max_batch >= 1, "a positive integer or None",
                 self.max_batch)


@dataclass
class EditConfig(StepConfig):
    """Optimisation knobs shared by panorama, video and scene editing, on top of the CSD step's."""

    steps: int = 200
    """Optimisation steps (per chunk, for video). Source: official code (``--num_steps 200``)."""
    lr: float = 2.0
    """SGD learning rate on the latents. Source: official code (``--lr 2.0``)."""
    lr_decay: float = 0.9
    """Multiply the learning rate by this every ``decay_every`` steps. Source: official code (``--decay_rate``)."""
    decay_every: int = 20
    """Steps between learning-rate decays. Source: official code (``--decay_iter 20``)."""
    batch: int = 8
    """Particles per step: random windows of a panorama, frames per chunk of a video, views of a scene.
    Ours: half the official code's 16 (each particle costs 6 UNet evaluations per step); not yet measured on
    a GPU."""
    source_prompt: str = ""
    """Prompt of the source branch that CSD-Edit subtracts (empty: the unedited image). Source: official code."""
    seed: int = 0
    """Random seed; the same seed and inputs give the same output."""
    vae_tile: int = 512
    """Tiled VAE: tile side in pixels (bounds memory for very large images); 0 encodes whole images, otherwise at
    least 64 px (``MIN_VAE_TILE``). Ours: 512 px is the size Stable Diffusion's VAE is trained at."""
    vae_overlap: int = 64
    """Tiled VAE: overlap between tiles in pixels, at most half a tile (feathered, so no seam shows). Ours."""

    def validate(self) -> None:
        super().validate()
        for name in ("steps", "batch", "decay_every"):
            value = getattr(self, name)
            _require(name, value >= 1, "a positive integer", value)
        _require("lr", self.lr > 0, "a positive learning rate", self.lr)
        _require("lr_decay", 0 < self.lr_decay <= 1, "a factor in (0, 1]", self.lr_decay)
        _require("vae_tile", self.vae_tile == 0 or self.vae_tile >= MIN_VAE_TILE,
                 f"0 (no tiling) or a tile side >= {MIN_VAE_TILE} px", self.vae_tile)
        _require("vae_overlap", self.vae_overlap >= 0, "an overlap >= 0 px", self.vae_overlap)
        if self.vae_tile:
            _require("vae_overlap", self.vae_overlap <= self.vae_tile // 2,
                     f"at most half of vae_tile ({self.vae_tile // 2} px)", self.vae_overlap)

    def lr_at(self, step: int) -> float:
        """Step-decayed learning rate ``lr · lr_decay^(step // decay_every)``."""
        return self.lr * self.lr_decay ** (step // self.decay_every)


@dataclass
class PanoramaConfig(EditConfig):
    """Panorama / large image editing: overlapping latent windows are the particles."""

    window: int = 64
    """Window side in latents (64 latents = 512 px for Stable Diffusion's VAE). Source: official code (512 px
    crops)."""
    stride: int = 16
    """Offset between neighbouring windows, in latents. Source: official code (``--stride 16``)."""
    normalization: Normalization = "count"
    """Step normalisation (see :attr:`StepConfig.normalization`): count, the paper's 1/N. Ours: at matched edit
    strength the two tie (colour-map spread of CSD over independent editing 0.76 count / 0.77 row for "recolor it",
    0.63 / 0.62 for "make it night", seeds 0–4, ``python -m csd2d.evaluate``; README); count keeps the settings
    tuned with it (the demo's CSD learning-rate scale of 4: with row it matched strength in 4/5 and 0/5 seeds)."""
    blend: float = 0.5
    """Region editing: width of the transition between neighbouring prompts, as a fraction of a band, in
    (0, 1]. Ours (the official region script uses hard masks)."""

    align: PanoramaAlign = "none"
    """How the kernel mixes the windows' scores (:data:`PanoramaAlign`): none (pixel for pixel, the paper's) or
    offsets (each window's score moved onto the others' pixels by the known window offsets, where they overlap).
    Ours: none, measured at matched strength on the demo panorama (seeds 0–3, ``python -m csd2d.evaluate``):
    colour-map spread over independent editing 0.90 with offsets against 0.77 without ("recolor it"), 0.84
    against 0.62 ("make it night"); overlapping pixels are already averaged onto the canvas, and pixel-for-pixel
    mixing also shares the edit between windows that do not overlap."""

    def validate(self) -> None:
        super().validate()
        _require("window", self.window >= 1, "a positive window side in latents", self.window)
        _require("stride", 1 <= self.stride <= self.window, f"1 <= stride <= window ({self.window})", self.stride)
        _require("blend", 0 < self.blend <= 1, "a fraction in (0, 1]", self.blend)
        _require("align", self.align in typing.get_args(PanoramaAlign),
                 f"one of {list(typing.get_args(PanoramaAlign))}", self.align)


@dataclass
class VideoConfig(EditConfig):
    """Video editing: frames are the particles, edited in overlapping chunks of ``batch`` frames."""

    steps: int = 100
    """Optimisation steps per chunk. Ours, from the first implementation; not yet compared on the real model
    with the official code's 200 steps at lr 2.0."""
    lr: float = 0.5
    """SGD learning rate on the latents. Ours (see ``steps``); the image guidance below is weaker than the
    official 5.0, so each step moves further from the source."""
    image_guidance_scale: float = 1.5
    """Image guidance s_I for frames. Source: IP2P's default (diffusers' pipeline, 1.5); video edits (a shirt's
    colour) need the weaker image pull, where 5.0 keeps frames at the source."""
    normalization: Normalization = "count"
    """Step normalisation (see :attr:`StepConfig.normalization`): count, the paper's 1/N. Ours: at matched edit
    strength CSD's temporal inconsistency over independent editing is 0.39 (count) against 0.56 (row) for "recolor
    it" and 0.47 against 0.63 for "make it night", lower with count in each of seeds 0–4 (``python -m
    csd2d.evaluate``, demo video, 12 frames per chunk; README). ``steps`` and ``lr`` above were set with count."""
    overlap: int = 2
    """Frames shared by consecutive chunks; already edited ones anchor the next chunk through the kernel. Ours."""

    align: VideoAlign = "none"
    """How the kernel mixes the frames' scores (:data:`VideoAlign`): none (pixel for pixel, the paper's) or flow
    (each frame's score moved onto the others' pixels by DIS optical flow between the source frames, masked where
    the flow fails its forward–backward check or leaves the frame; :mod:`csd2d.flow`). Ours: none, measured at
    matched strength (seeds 0–3, ``python -m csd2d.evaluate``): temporal inconsistency over independent editing on
    the demo pan (2 px per frame) 0.40 with flow against 0.39 without ("recolor it"), 0.49 against 0.47 ("make it
    night"); on the 12 px per frame pan 0.75 against 0.60 and 0.54 against 0.51."""

    def validate(self) -> None:
        super().validate()
        _require("overlap", 0 <= self.overlap < self.batch, f"0 <= overlap < batch ({self.batch})", self.overlap)
        _require("align", self.align in typing.get_args(VideoAlign), f"one of {list(typing.get_args(VideoAlign))}",
                 self.align)


@dataclass
class MemoryConfig:
    """How the diffusion model is run: memory and speed controls that leave the result unchanged within
    tolerance (measured on the tiny model in benchmarks/memory.py; figures in benchmarks/RESULTS.md). The csd2d
    CLI has them as flags, ns-train csd-edit under --pipeline.memory.*."""

    attention: typing.Literal["sdpa", "sliced"] = "sdpa"
    """UNet attention: sdpa (PyTorch scaled-dot-product, diffusers' default processor) or sliced (attention
    slicing, lower memory, slower; the official CSD code's choice)."""
    compile: bool = False
    """torch.compile the UNet (slow first step, faster later steps on a GPU)."""
    offload: bool = False
    """Keep the text encoder and VAE on the CPU, moving each to the device only while it runs (saves their
    device memory during the optimisation)."""

    def memory_kwargs(self) -> Dict[str, Any]:
        """These controls as keyword arguments of ``IP2PGuidance.from_pretrained`` / ``CSDEditor.from_pretrained``."""
        return dict(attention=self.attention, compile_unet=self.compile, offload=self.offload)


def with_overrides(config: C, source: str = "overrides", **overrides: Any) -> C:
    """``dataclasses.replace`` with an error naming unknown fields."""
    names = {f.name for f in dataclasses.fields(config) if f.init}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(unknown[0], f"unknown option(s) {unknown} for {type(config).__name__} in {source}; "
                          f"expected some of {sorted(names)}")
    return dataclasses.replace(config, **overrides)


def preset_names() -> list:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_file: Union[str, Path], cls: Type[C]) -> C:
    """Load a preset (a name such as ``image``, or a YAML file) into ``cls``.

    A preset lists fields of ``cls`` by name; fields it leaves out keep their defaults. Every problem (unreadable
    file, YAML syntax, unknown key, wrong type, out of range) is one :class:`ConfigError` that names the file and
    the key.
    """
    path = Path(name_or_file)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_file}.yaml"
    if not path.is_file():
        raise ConfigError("preset", f"expected a preset name {preset_names()} or a YAML file, "
                          f"got {str(name_or_file)!r}")
    try:
        data: Optional[Dict[str, Any]] = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        detail = " ".join(str(err).split())
        raise ConfigError("preset", f"expected a readable YAML mapping in {str(path)!r}, got an error: {detail}") \
            from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("preset", f"expected a mapping of {cls.__name__} fields in {str(path)!r}, "
                          f"got {type(data).__name__}")
    try:
        return with_overrides(cls(), source=f"preset {str(path)!r}", **{str(k): v for k, v in data.items()})
    except ConfigError as err:
        raise ConfigError(err.field, f"in preset {str(path)!r}: {str(err)[len(err.field) + 2:]}") from None
