"""nerfacto and splatfacto with LPIPS built lazily (or not at all), so that nothing downloads at start.

nerfstudio's models build torchmetrics' LPIPS in ``populate_modules``, which downloads AlexNet weights: a
training run offline would fail before its first step. Here LPIPS is created on first use (an evaluation
metric only), and ``lpips=False`` skips it (the metric reads NaN).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Type

import torch
from torch import nn

from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

__all__ = ["LazyLPIPS", "CSDNerfactoModelConfig", "CSDNerfactoModel", "CSDSplatfactoModelConfig", "CSDSplatfactoModel"]


class LazyLPIPS(nn.Module):
    """Stands in for ``LearnedPerceptualImagePatchSimilarity``: builds it on the first call (when enabled)."""

    def __init__(self, enabled: bool = True, **kwargs) -> None:
        super().__init__()
        self.enabled = enabled
        self.kwargs = kwargs
        self._metric = None

    @property
    def built(self) -> bool:
        return self._metric is not None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return torch.tensor(float("nan"), device=a.device)
        if self._metric is None:
            import torchmetrics.image.lpip as lpip_module

            LearnedPerceptualImagePatchSimilarity = getattr(lpip_module, "LearnedPerceptualImagePatchSimilarity")
            # Held outside the module tree: its weights are not part of the scene's checkpoint.
            self._metric = [LearnedPerceptualImagePatchSimilarity(**self.kwargs).to(a.device)]
        return self._metric[0](a, b)


@contextlib.contextmanager
def _lazy_lpips(enabled: bool) -> Iterator[None]:
    """Within the block, constructing LPIPS (as nerfacto/splatfacto do) yields a :class:`LazyLPIPS`."""
    import torchmetrics.image.lpip as lpip_module  # both models import the class from here in populate_modules

    saved = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = lambda **kwargs: LazyLPIPS(enabled, **kwargs)
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = saved


@dataclass
class CSDNerfactoModelConfig(NerfactoModelConfig):
    """nerfacto for CSD-Edit."""

    _target: Type = field(default_factory=lambda: CSDNerfactoModel)
    lpips: bool = True
    """Report the LPIPS evaluation metric (built on first evaluation; downloads AlexNet once). False: skipped."""


class _LazyLPIPSModules:
    """Mixin: build the model's modules with LPIPS deferred (``config.lpips`` switches it off)."""

    def populate_modules(self) -> None:
        with _lazy_lpips(self.config.lpips):
            super().populate_modules()


class CSDNerfactoModel(_LazyLPIPSModules, NerfactoModel):
    config: CSDNerfactoModelConfig


@dataclass
class CSDSplatfactoModelConfig(SplatfactoModelConfig):
    """splatfacto (3D Gaussian splatting) for CSD-Edit."""

    _target: Type = field(default_factory=lambda: CSDSplatfactoModel)
    lpips: bool = True
    """Report the LPIPS evaluation metric (built on first evaluation; downloads AlexNet once). False: skipped."""


class CSDSplatfactoModel(_LazyLPIPSModules, SplatfactoModel):
    config: CSDSplatfactoModelConfig
