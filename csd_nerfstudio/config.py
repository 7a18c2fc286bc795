"""The ``csd-edit`` methods, derived from nerfstudio's own nerfacto and splatfacto configurations.

Registered through the ``nerfstudio.method_configs`` entry point:

- ``csd-edit``: nerfacto + CSD-Edit.
- ``csd-edit-small``: the same with half-precision diffusion and no LPIPS (``dataclasses.replace``).
- ``csd-edit-splat``: splatfacto (3D Gaussian splatting, needs CUDA to train) + CSD-Edit.

nerfstudio imports these entry points while it builds its own method table, so the configurations are
derived on first access (:class:`DerivedMethod`) rather than at import: importing this module never imports
``nerfstudio.configs.method_configs`` and so never recurses into it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from .models import CSDNerfactoModelConfig, CSDSplatfactoModelConfig
from .pipeline import CSDPipelineConfig

__all__ = ["DerivedMethod", "csd_edit", "csd_edit_small", "csd_edit_splat"]


class DerivedMethod(MethodSpecification):
    """A MethodSpecification whose TrainerConfig is built (once) when first read."""

    def __init__(self, build: Callable[[], TrainerConfig], description: str) -> None:
        self._build = build
        self._config: Optional[TrainerConfig] = None
        self.description = description

    @property
    def config(self) -> TrainerConfig:  # type: ignore[override]
        if self._config is None:
            built = self._build()
            if self._config is None:  # building may re-enter through nerfstudio's discovery
                self._config = built
        return self._config


def _base(name: str) -> TrainerConfig:
    from nerfstudio.configs.method_configs import method_configs

    return method_configs[name]


def _same_fields(src, cls, **changes):
    """An instance of ``cls`` with every setting ``src`` shares with it copied over (``_target``, the class
    to build, stays ``cls``'s own), then ``changes``."""
    shared = {
        f.name: getattr(src, f.name)
        for f in dataclasses.fields(cls)
        if f.init and f.name != "_target" and hasattr(src, f.name)
    }
    return cls(**{**shared, **changes})


def _local_viewer(base: TrainerConfig) -> ViewerConfig:
    # nerfstudio binds to 0.0.0.0; CSD-Edit binds to this machine only (--viewer.websocket-host 0.0.0.0 opens it).
    return dataclasses.replace(base.viewer, websocket_host="127.0.0.1")


def _csd_edit() -> TrainerConfig:
    base = _base("nerfacto")
    pipeline = _same_fields(
        base.pipeline,
        CSDPipelineConfig,
        # Vanilla (single-process) datamanager: edited images must reach the pixel sampler.
        datamanager=_same_fields(base.pipeline.datamanager, VanillaDataManagerConfig),
        model=_same_fields(base.pipeline.model, CSDNerfactoModelConfig),
    )
    return dataclasses.replace(
        base, method_name="csd-edit", pipeline=pipeline, viewer=_local_viewer(base), max_num_iterations=15000,
        steps_per_eval_batch=1000, steps_per_eval_image=1000, steps_per_save=1000,
    )


def _csd_edit_small() -> TrainerConfig:
    base = csd_edit.config
    pipeline = dataclasses.replace(
        base.pipeline, diffusion_dtype="float16", model=dataclasses.replace(base.pipeline.model, lpips=False)
    )
    return dataclasses.replace(base, method_name="csd-edit-small", pipeline=pipeline)


def _csd_edit_splat() -> TrainerConfig:
    base = _base("splatfacto")
    pipeline = _same_fields(
        base.pipeline, CSDPipelineConfig, model=_same_fields(base.pipeline.model, CSDSplatfactoModelConfig)
    )
    return dataclasses.replace(base, method_name="csd-edit-splat", pipeline=pipeline, viewer=_local_viewer(base),
                               max_num_iterations=15000)


csd_edit = DerivedMethod(_csd_edit, "CSD-Edit: consistent text-instructed scene editing (nerfacto + CSD).")
csd_edit_small = DerivedMethod(_csd_edit_small, "CSD-Edit with half-precision diffusion and no LPIPS.")
csd_edit_splat = DerivedMethod(_csd_edit_splat, "CSD-Edit on splatfacto (3D Gaussian splatting; CUDA).")
