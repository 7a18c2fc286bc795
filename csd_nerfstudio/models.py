"""nerfacto and splatfacto with LPIPS built lazily (or not at all), so that nothing downloads at start.

nerfstudio's models build torchmetrics' LPIPS in ``populate_modules``, which downloads AlexNet weights: a
training run offline would fail before its first step. Here LPIPS is created on first use (an evaluation
metric only), and ``lpips=False`` skips it (the metric reads NaN).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Dict, Iterator, Type

import torch
from torch import nn

import nerfstudio.models.splatfacto as splatfacto
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

from . import splat_cpu

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
    """splatfacto for CSD-Edit. On a CPU device it renders through :mod:`csd_nerfstudio.splat_cpu` (gsplat's
    pure-torch references) instead of gsplat's CUDA kernels; on CUDA it is splatfacto unchanged."""

    config: CSDSplatfactoModelConfig

    _get_outputs_on_cpu = splat_cpu.with_globals(
        SplatfactoModel.get_outputs, rasterization=splat_cpu.rasterization,
        # splatfacto torch.compiles this 4x4 inverse; on a CPU inductor builds C++ for it on the first call: 9.7 s
        # with an empty inductor cache, 2.1 s with a warm one (our measurement, 2 cores). The same function, plain.
        get_viewmat=inspect.unwrap(splatfacto.get_viewmat))
    """splatfacto's own ``get_outputs``, calling the CPU rasterizer and the uncompiled ``get_viewmat``."""

    def populate_modules(self) -> None:
        device = self.kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(device).type != "cpu":
            super().populate_modules()
            return
        with splat_cpu.cuda_stays_put():  # splatfacto puts the SfM colours on CUDA before the model is moved
            super().populate_modules()

    def get_outputs(self, camera: Cameras) -> Dict:
        if self.device.type != "cpu":
            return super().get_outputs(camera)
        return self._get_outputs_on_cpu(splat_cpu.intrinsics_stay_put(camera))

    def step_cb(self, optimizers: Optimizers, step: int) -> None:
        """splatfacto's, and the optimizers made to step the Gaussians the model holds. nerfstudio builds the
        optimizers before ``--load-dir`` loads the checkpoint, and splatfacto's ``load_state_dict`` replaces
        every Gaussian parameter: a loaded scene's Gaussians were never stepped (only a refinement, which
        re-registers them, reconnected them; csd-edit-splat refines until 15k steps and pretrains 30k, so an
        edit of a loaded scene never reached it). The optimizer's state loaded from the checkpoint moves along."""
        super().step_cb(optimizers, step)
        for name, param in self.gauss_params.items():
            optimizer = self.optimizers.get(name)
            if optimizer is None or any(p is param for group in optimizer.param_groups for p in group["params"]):
                continue
            (group,) = optimizer.param_groups
            (old,) = group["params"]
            state = optimizer.state.pop(old, {})
            group["params"] = [param]
            if all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == param.shape for v in state.values()):
                optimizer.state[param] = state
