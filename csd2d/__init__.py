"""csd2d: Collaborative Score Distillation (Kim et al. 2023) for consistent panorama and video editing.

The public names below load on first use (PEP 562), so ``import csd2d`` is cheap and the command line can
answer a Ctrl-C that arrives while torch is still importing (``csd2d._launch``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from .config import ConfigError, EditConfig, PanoramaConfig, StepConfig, VideoConfig, load_preset
    from .csd import StepResult, csd_edit_step, optimize_latents
    from .editor import CSDEditor
    from .guidance import DEFAULT_MODEL, EMBEDDED_MODEL, IP2PGuidance, ModelLoadError, ip2p_guidance, sds_weight
    from .kernel import csd_gradient, median_bandwidth, pairwise_sq_dists, rbf_kernel, rbf_kernel_grad

_SOURCES: Dict[str, str] = {
    **dict.fromkeys(["ConfigError", "EditConfig", "PanoramaConfig", "StepConfig", "VideoConfig", "load_preset"],
                    "config"),
    **dict.fromkeys(["StepResult", "csd_edit_step", "optimize_latents"], "csd"),
    "CSDEditor": "editor",
    **dict.fromkeys(["DEFAULT_MODEL", "EMBEDDED_MODEL", "IP2PGuidance", "ModelLoadError", "ip2p_guidance",
                     "sds_weight"], "guidance"),
    **dict.fromkeys(["csd_gradient", "median_bandwidth", "pairwise_sq_dists", "rbf_kernel", "rbf_kernel_grad"],
                    "kernel"),
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
