"""csd2d: Collaborative Score Distillation (Kim et al. 2023) for consistent panorama and video editing."""

from .config import ConfigError, EditConfig, PanoramaConfig, StepConfig, VideoConfig, load_preset
from .csd import StepResult, csd_edit_step, optimize_latents
from .editor import CSDEditor
from .guidance import DEFAULT_MODEL, EMBEDDED_MODEL, IP2PGuidance, ModelLoadError, ip2p_guidance, sds_weight
from .kernel import csd_gradient, median_bandwidth, pairwise_sq_dists, rbf_kernel, rbf_kernel_grad

__all__ = [
    "CSDEditor",
    "ConfigError",
    "EditConfig",
    "PanoramaConfig",
    "VideoConfig",
    "load_preset",
    "DEFAULT_MODEL",
    "EMBEDDED_MODEL",
    "IP2PGuidance",
    "ModelLoadError",
    "StepConfig",
    "StepResult",
    "csd_edit_step",
    "csd_gradient",
    "ip2p_guidance",
    "median_bandwidth",
    "optimize_latents",
    "pairwise_sq_dists",
    "rbf_kernel",
    "rbf_kernel_grad",
    "sds_weight",
]
