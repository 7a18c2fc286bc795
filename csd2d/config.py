"""Configuration dataclasses of the 2-D editors and the preset files in ``configs/`` that mirror them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Type, TypeVar, Union

import yaml

from .csd import StepConfig

__all__ = ["EditConfig", "PanoramaConfig", "VideoConfig", "PRESET_DIR", "load_preset", "with_overrides"]

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"

C = TypeVar("C", bound="EditConfig")


@dataclass
class EditConfig(StepConfig):
    """Optimisation knobs shared by panorama and video editing (on top of the CSD step's)."""

    steps: int = 200
    """Optimisation steps (per chunk, for video)."""
    lr: float = 2.0
    """SGD learning rate on the latents."""
    lr_decay: float = 0.9
    """Multiply the learning rate by this every ``decay_every`` steps."""
    decay_every: int = 20
    """Steps between learning-rate decays."""
    batch: int = 8
    """Particles per step: random windows of a panorama, frames per chunk of a video."""
    source_prompt: str = ""
    """Prompt of the source branch that CSD-Edit subtracts (empty: the unedited image)."""
    seed: int = 0
    """Random seed; the same seed and inputs give the same output."""
    vae_tile: int = 512
    """Tiled VAE: tile side in pixels (bounds memory for very large images); 0 encodes whole images."""
    vae_overlap: int = 64
    """Tiled VAE: overlap between tiles in pixels."""

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch": self.batch, "decay_every": self.decay_every}
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch: expected a positive integer or None, got {self.max_batch!r}")

    def lr_at(self, step: int) -> float:
        """Step-decayed learning rate ``lr · lr_decay^(step // decay_every)``."""
        return self.lr * self.lr_decay ** (step // self.decay_every)


@dataclass
class PanoramaConfig(EditConfig):
    """Panorama / large image editing: overlapping latent windows are the particles."""

    window: int = 64
    """Window side in latents (64 latents = 512 px for Stable Diffusion's VAE)."""
    stride: int = 16
    """Offset between neighbouring windows, in latents."""
    blend: float = 0.5
    """Region editing: width of the transition between neighbouring prompts, as a fraction of a band."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"stride: expected 1 <= stride <= window ({self.window}), got {self.stride}")


@dataclass
class VideoConfig(EditConfig):
    """Video editing: frames are the particles, edited in overlapping chunks of ``batch`` frames."""

    steps: int = 100
    lr: float = 0.5
    image_guidance_scale: float = 1.5
    overlap: int = 2
    """Frames shared by consecutive chunks; already edited ones anchor the next chunk through the kernel."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.overlap < self.batch:
            raise ValueError(f"overlap: expected 0 <= overlap < batch ({self.batch}), got {self.overlap}")


def with_overrides(config: C, source: str = "overrides", **overrides: Any) -> C:
    """``dataclasses.replace`` with an error naming unknown fields."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown} for {type(config).__name__}; "
                         f"expected some of {sorted(names)}")
    return dataclasses.replace(config, **overrides)


def load_preset(name_or_file: Union[str, Path], cls: Type[C]) -> C:
    """Load a preset (a name in ``configs/`` such as ``image``, or a YAML file) into ``cls``.

    A preset lists fields of ``cls`` by name; fields it leaves out keep their defaults.
    """
    path = Path(name_or_file)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_file}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"preset: expected a preset name {known} or a YAML file, got {str(name_or_file)!r}")
    data: Optional[Dict[str, Any]] = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"preset: expected a mapping of {cls.__name__} fields in {str(path)!r}")
    return with_overrides(cls(), source=f"preset {str(path)!r}", **data)
