"""The ``csd-edit`` methods, derived from nerfstudio's own nerfacto and splatfacto configurations.

Registered through the ``nerfstudio.method_configs`` entry point:

- ``csd-edit``: nerfacto + CSD-Edit.
- ``csd-edit-small``: the same with half-precision diffusion and no LPIPS (``dataclasses.replace``).
- ``csd-edit-splat``: splatfacto (3D Gaussian splatting) + CSD-Edit: gsplat's CUDA kernels on a GPU, its pure-torch
  references (:mod:`csd_nerfstudio.splat_cpu`) on a CPU.
- ``csd-edit-tiny``: a small nerfacto, the embedded diffusion model and no LPIPS: sized for a CPU and tests.
- ``csd-edit-paper``: the paper's 3D schedule (Appendix D): 16 random views every 2,000 steps after a 30k pretrain.
- ``csd-edit-fast``: csd-edit with the joint schedule (:mod:`csd_nerfstudio.joint`): every training view edited
  together when the pretraining ends, then a 1,500-step fit (one round; --pipeline.joint.rounds adds more).
- ``csd-edit-tiny-fast``: csd-edit-tiny with the joint schedule, its kernel mixing the scores' channel means over
  every view (TINY_FAST_SHARE_GRID) and their detail through depth warps (TINY_FAST_ALIGN).
- ``csd-edit-splat-tiny``: csd-edit-splat sized for a CPU as csd-edit-tiny is: few Gaussians, 64 px views, the
  embedded model.

nerfstudio imports these entry points while it builds its own method table, so the configurations are
derived on first access (:class:`DerivedMethod`) rather than at import: importing this module never imports
``nerfstudio.configs.method_configs`` and so never recurses into it. Each is a :class:`CSDTrainerConfig`
(nerfstudio's TrainerConfig with checks first, atomic checkpoints that hold the edits, and Ctrl-C that saves).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, Optional

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from .models import CSDNerfactoModelConfig, CSDSplatfactoModelConfig
from .joint import JointConfig
from .pipeline import CSDPipelineConfig
from .trainer import CSDTrainerConfig

__all__ = ["DerivedMethod", "csd_edit", "csd_edit_small", "csd_edit_splat", "csd_edit_tiny", "csd_edit_paper",
           "csd_edit_splat_tiny", "csd_edit_fast", "csd_edit_tiny_fast", "EDIT_ITERATIONS", "DISTILL_PATCH",
           "TINY_GUIDED_RADIUS", "METHODS", "method_config"]

EDIT_ITERATIONS = 15000
"""Editing steps after pretraining (our choice for csd-edit; with --load-dir pass --max-num-iterations this)."""


DISTILL_PATCH = 128
"""csd-edit's distill patch side in pixels (--pipeline.patch-size). Our measurement on an H200 (csd-edit-small,
512 px views, N = 4, nerfstudio's pure-torch hash grid): whole views ran out of memory at 135 GiB; 128 px
patches peaked at 23.8 GiB and took 0.22 s per iteration with a distill step every 10."""


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
        patch_size=DISTILL_PATCH,
    )
    return _same_fields(
        base, CSDTrainerConfig, method_name="csd-edit", pipeline=pipeline, viewer=_local_viewer(base),
        max_num_iterations=pipeline.pretrain_steps + EDIT_ITERATIONS,
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
    return _same_fields(base, CSDTrainerConfig, method_name="csd-edit-splat", pipeline=pipeline,
                        viewer=_local_viewer(base), max_num_iterations=pipeline.pretrain_steps + EDIT_ITERATIONS)


TINY_PRETRAIN_STEPS = 1500
"""csd-edit-tiny's pretraining: our measurement on the face scene at 64 px (30 views), where this nerfacto
reaches 26.4 dB against the photos after 1,500 steps (about 6 min on 2 CPU cores); 28.8 dB without the appearance
embedding (TINY_APPEARANCE_EMBEDDING), rendered as every eval-mode render is, with the mean embedding."""
TINY_LR = 0.1
"""csd-edit-tiny's csd learning rate: our measurement with the embedded model on 4 face views at 64 px. One update
(20 steps) turns the hue 82° at lr 0.1 (the instruction's trained range is 75–105°) and 165° at csd-edit's 0.5;
30 chained updates with carry 0.5 settle at 107° with the structure kept (24.4 dB after removing the colour map)."""
TINY_APPEARANCE_EMBEDDING = False
"""Whether csd-edit-tiny's nerfacto fits a per-view appearance embedding (nerfstudio's default: yes; csd-edit keeps
it, so that a plain ``ns-train nerfacto`` checkpoint loads). While a scene fits edited views, each view's
embedding takes up what its edit disagrees with the others about, and the mean embedding that every eval-mode
render uses hides it (csd_nerfstudio.evaluate's ``edit_inconsistency_own``). Our measurement, face at 64 px (30
views), 1,500-step base, one joint round, 200 fit steps, lr 0.1, 3 seeds, matched strength: without the
embeddings the base fits the photos at 28.8 dB against 26.5 dB; on 'recolor it' the joint arm's renders spread
0.0107 against the kernel-off arm's 0.0138 (0.78×) and IN2N's 0.0640 (0.17×, guidance 7.5, 117°), where with
them they spread 0.0142 against 0.0130 (1.09×) and 0.0173, the disagreement held in the embeddings (IN2N's own-
embedding renders: 0.116). On 'make it night' every arm's renders agree better without them too (joint 0.0102 at
0.90 against 0.0147, kernel off 0.0094 against 0.0136), though the kernel still loses there (1.09×)."""
TINY_GUIDED_RADIUS = 8
"""csd-edit-tiny's --pipeline.edit.guided-radius (csd-edit-tiny-fast and csd-edit-splat-tiny inherit it): the
embedded model's VAE decodes a 64 px face at 24.6 dB, every edge blurred, and its edits are colour filters, which a
locally affine map carries onto the photo's own pixels (csd2d.guided). Twice the VAE's 4× factor, so the map varies
over about two latent pixels. Ours, face at 64 px (30 views), joint schedule, 200 fit steps, lr 0.1, seed 0: radius
0 / 2 / 4 / 8 gave structure 31.7 / 32.6 / 33.0 / 33.8 dB at night and 25.8 / – / 28.8 / 29.2 dB on 'recolor it'
(16: 29.5 dB, a quarter of the view). Seeds 0–2 at matched strength (README, *Sharp edits on the CPU*): the joint
arm's renders' edit inconsistency against the kernel-off arm's went from 0.64× to 0.51× on face 'recolor it', 0.98×
to 0.94× on face 'make it night', 0.49× to 0.32× on the textured scene's 'recolor it' and 0.75× to 0.71× at its
night, structure 1.9–3.5 dB higher on face and within 0.7 dB of before on the textured scene. Wider is worse for
the kernel: face at night, seed 0, both arms at lr 0.1, R = 8 / 16 / 32 gave 0.91× / 0.99× / 1.04× the kernel-off
arm (edit_disagreement 0.74× / 0.87× / 0.98×): a near-global map per view keeps less of what the kernel agreed."""
TINY_EDIT_ITERATIONS = 500
"""csd-edit-tiny's editing steps: 50 updates at edit-rate 10 (our choice for a CPU-sized run)."""


def _csd_edit_tiny() -> TrainerConfig:
    """csd-edit with the small nerfacto measured on the face scene at 64 px (0.19 s/iteration on 2 cores): 512
    rays per batch, 8 hash levels of 2^15 entries up to resolution 256, 32 hidden units, 32+16 proposal and 16
    NeRF samples per ray; no appearance embedding (TINY_APPEARANCE_EMBEDDING); the embedded diffusion model at its
    64 px training size; no LPIPS; CPU."""
    base = csd_edit.config
    model = dataclasses.replace(
        base.pipeline.model, lpips=False, num_levels=8, log2_hashmap_size=15, max_res=256, hidden_dim=32,
        num_proposal_samples_per_ray=(32, 16), num_nerf_samples_per_ray=16,
        use_appearance_embedding=TINY_APPEARANCE_EMBEDDING,
    )
    datamanager = dataclasses.replace(base.pipeline.datamanager, train_num_rays_per_batch=512)
    pipeline = dataclasses.replace(base.pipeline, model=model, datamanager=datamanager, diffusion_model="embedded",
                                   render_max_side=64, patch_size=None, pretrain_steps=TINY_PRETRAIN_STEPS,
                                   edit=dataclasses.replace(base.pipeline.edit, lr=TINY_LR,
                                                            guided_radius=TINY_GUIDED_RADIUS))
    return dataclasses.replace(
        base, method_name="csd-edit-tiny", pipeline=pipeline, mixed_precision=False,
        machine=dataclasses.replace(base.machine, device_type="cpu"),
        max_num_iterations=TINY_PRETRAIN_STEPS + TINY_EDIT_ITERATIONS, steps_per_eval_batch=500,
        steps_per_eval_image=500, steps_per_save=500,
    )


PAPER_VIEWS = 16
"""Views per update in the paper's 3D schedule (Kim et al. 2023, Appendix D)."""
PAPER_EDIT_RATE = 2000
"""Steps between updates in the paper's 3D schedule (Kim et al. 2023, Appendix D)."""


def _csd_edit_paper() -> TrainerConfig:
    """csd-edit with the paper's 3D schedule: after the 30k nerfacto pretrain, 16 training views drawn at random
    without replacement are edited every 2,000 steps. Not csd-edit's default: one update edits 16 views at
    512 px (minutes of GPU work) and the scene sees only 7–8 updates in 15k steps, while IN2N's frequent small
    updates (edit-rate 10) let training interleave with editing from the first editing step."""
    base = csd_edit.config
    pipeline = dataclasses.replace(base.pipeline, edit=dataclasses.replace(base.pipeline.edit, batch=PAPER_VIEWS),
                                   edit_rate=PAPER_EDIT_RATE, view_selection="random")
    return dataclasses.replace(base, method_name="csd-edit-paper", pipeline=pipeline)


FAST_ROUNDS = JointConfig.rounds
"""csd-edit-fast's joint rounds (--pipeline.joint.rounds): the joint schedule's default, one
(:attr:`csd_nerfstudio.joint.JointConfig.rounds` names the measurement)."""
FAST_FIT_STEPS = 1500
"""csd-edit-fast's training steps after each round: 1,500 in all, the upper end of the peers' 1,000–1,500 steps
of fitting after their edit (GaussCtrl, DGE)."""
TINY_FAST_FIT_STEPS = 200
"""csd-edit-tiny-fast's steps after each round: 200 in all, as the evaluation's 200 editing steps (our
measurement, see JointConfig.rounds)."""


FAST_NORMALIZATION = "row"
"""csd-edit-fast's step normalisation (--pipeline.edit.normalization): each view's kernel sums divided by its row
sum. Our measurement (face at 64 px, 30 views, csd-edit-tiny-fast, lr 0.05, one seed): edit inconsistency 0.0081
at 106° with row, 0.0096 at 105° with mean (the sums divided by the mean row sum), 0.0090 at 108° with the kernel
off; with the paper's 1/N the step over 30 views is a tenth of the uncoupled one (csd2d.config.StepConfig)."""


TINY_FAST_SHARE_GRID = 1
"""csd-edit-tiny-fast's --pipeline.edit.share-grid: the kernel mixes only each score's channel means and every view
keeps the rest of its own score (csd2d.config.StepConfig.share_grid). Ours, embedded model, one joint round, 200 fit
steps, seeds 0–2, renders' edit inconsistency at matched strength (python -m csd_nerfstudio.evaluate --arms joint
joint-independent joint-whole --match-strength joint --consistent; README, *The metric's floor*): on face at 64 px
(30 views) and the made textured scene (27 training views), 'recolor it' and 'make it night', 0.71×, 0.99×, 0.54×
and 0.82× the kernel-off arm, where the whole score gave 0.78×, 1.09×, 0.83× and 1.00×, with 1.1–1.3 dB more
structure at night. csd-edit-fast keeps the paper's whole score: the embedded model's edits are colour filters, and
whether a real model's shape edit needs the detail shared was not measured."""
TINY_FAST_BANDWIDTH_SCALE = 4.0
"""csd-edit-tiny-fast's --pipeline.edit.bandwidth-scale with the coarse mix. Ours, the measurement of
TINY_FAST_SHARE_GRID: the coarse mix was run at 4 only; with the whole score a scale of 4 gave 0.72× the
kernel-off arm on face 'recolor it' against 0.78× at 1, but 1.22× at night against 1.09–1.13×."""
TINY_FAST_ALIGN = "depth"
"""csd-edit-tiny-fast's --pipeline.edit.align: under the coarse mix (TINY_FAST_SHARE_GRID) the scores' detail is
mixed through depth warps, so a view takes the others' detail where they see the same surface
(csd2d.csd.csd_edit_step). Ours, the bases and settings of TINY_FAST_SHARE_GRID, every arm matched to the aligned
one (python -m csd_nerfstudio.evaluate --arms joint joint-unaligned joint-independent --match-strength joint; README,
*Aligned detail under the coarse mix*): renders' edit inconsistency 0.90× / 0.77× the unaligned coarse mix on face /
textured 'recolor it' and 0.98× / 0.92× at night (0.63×, 0.42×, 0.97× and 0.75× the kernel-off arm); structure
within 0.2 dB on 'recolor it', 0.4 / 1.0 dB lower at night; about 30 % more wall time then, with every view
rendered at full size for its depth, and about the same time as unaligned since the round renders depth alone
(csd_nerfstudio.warps.DEPTH_SUPERSAMPLE: face 'recolor it' 0.92× unaligned, 63 s against 67 s). csd-edit-fast keeps
the paper's unaligned whole score (see TINY_FAST_SHARE_GRID)."""


def _fast(base: TrainerConfig, name: str, fit_steps: int, **edit) -> TrainerConfig:
    """``base`` with the joint schedule: FAST_ROUNDS rounds of ``fit_steps``, FAST_NORMALIZATION, and ``edit``'s
    settings of --pipeline.edit."""
    joint = dataclasses.replace(base.pipeline.joint, rounds=FAST_ROUNDS, fit_steps=fit_steps)
    edit = dataclasses.replace(base.pipeline.edit, normalization=FAST_NORMALIZATION, **edit)
    pipeline = dataclasses.replace(base.pipeline, schedule="joint", joint=joint, edit=edit)
    return dataclasses.replace(base, method_name=name, pipeline=pipeline,
                               max_num_iterations=pipeline.pretrain_steps + joint.edit_steps)


def _csd_edit_fast() -> TrainerConfig:
    return _fast(csd_edit.config, "csd-edit-fast", FAST_FIT_STEPS)


def _csd_edit_tiny_fast() -> TrainerConfig:
    return _fast(csd_edit_tiny.config, "csd-edit-tiny-fast", TINY_FAST_FIT_STEPS, share_grid=TINY_FAST_SHARE_GRID,
                 bandwidth_scale=TINY_FAST_BANDWIDTH_SCALE, align=TINY_FAST_ALIGN)


SPLAT_TINY_PRETRAIN_STEPS = 1500
"""csd-edit-splat-tiny's pretraining: csd-edit-tiny's, so that the two compare at the same steps. Our measurement
on the face scene at 64 px (30 views, random init, 2 CPU cores, 3 runs): 28.3–28.9 dB against the photos after
1,500 steps in 131–143 s of training, where csd-edit-tiny's nerfacto reaches 27.6–27.9 dB in 139–179 s."""
SPLAT_TINY_GAUSSIANS = 1000
"""csd-edit-splat-tiny's Gaussians at the start on a scene without a point cloud (splatfacto: 50,000). Our
measurement on the face scene at 64 px after 1,500 steps: 1,000 grew to 11.9k Gaussians and 28.4 dB, 2,000 to
16.9k and 28.3 dB (densified as below); with splatfacto's screen-size splits 1,000 / 2,000 / 5,000 reached 27.6 /
27.9 / 28.0 dB with 20k / 28k / 43k Gaussians."""
SPLAT_TINY_RANDOM_SCALE = 3.0
"""Side of the cube random Gaussians start in (splatfacto: 10; nerfstudio scales the cameras into [−1, 1]). Our
measurement (2,000 Gaussians, 1,500 steps, face at 64 px): 27.9 dB against 22.8 dB with 10, whose cube lies
mostly outside every view."""
SPLAT_TINY_WARMUP = 200
"""Steps before csd-edit-splat-tiny first refines (splatfacto: 500 of 30k). Our measurement (2,000 Gaussians,
densify threshold 0.002, face at 64 px): 25.9 dB after 1,000 steps against 24.1 dB with 500."""


def _csd_edit_splat_tiny() -> TrainerConfig:
    """csd-edit-splat sized for a CPU, as csd-edit-tiny is for csd-edit: few Gaussians (``num_random``, in a
    cube of side 3, when the scene has no point cloud), no low-resolution start (64 px views are small already:
    splatfacto's would fit 16 px images for its first 3,000 steps), refinement from step 200 until the end of
    pretraining and no screen-size splits; the embedded diffusion model at its 64 px training size, csd-edit-tiny's
    learning rate and editing steps; no LPIPS; CPU, where it renders with csd_nerfstudio.splat_cpu.

    No screen-size splits (``stop_screen_size_at=0``): splatfacto splits every Gaussian wider than 5 % of the
    view at each refinement; at 64 px that is a radius of 3.2 px, which every Gaussian of more than 1 px standard
    deviation has (radius ceil(3σ) with gsplat's 0.3 px² blur). Our measurement: 1,000 Gaussians became 168k by
    step 1,500 (refining every 50 steps from step 100) and 0.34 s per step, with no better fit. Refinement stops
    at the end of pretraining as csd-edit-splat's does (15k of its 30k), so edits do not densify the scene."""
    base = csd_edit_splat.config
    model = dataclasses.replace(
        base.pipeline.model, lpips=False, num_random=SPLAT_TINY_GAUSSIANS, random_scale=SPLAT_TINY_RANDOM_SCALE,
        num_downscales=0, warmup_length=SPLAT_TINY_WARMUP, stop_split_at=SPLAT_TINY_PRETRAIN_STEPS,
        stop_screen_size_at=0,
    )
    pipeline = dataclasses.replace(base.pipeline, model=model, diffusion_model="embedded", render_max_side=64,
                                   pretrain_steps=SPLAT_TINY_PRETRAIN_STEPS,
                                   edit=dataclasses.replace(base.pipeline.edit, lr=TINY_LR,
                                                            guided_radius=TINY_GUIDED_RADIUS))
    return dataclasses.replace(
        base, method_name="csd-edit-splat-tiny", pipeline=pipeline,
        machine=dataclasses.replace(base.machine, device_type="cpu"),
        max_num_iterations=SPLAT_TINY_PRETRAIN_STEPS + TINY_EDIT_ITERATIONS, steps_per_eval_image=500,
        steps_per_save=500,
    )


csd_edit = DerivedMethod(_csd_edit, "CSD-Edit: consistent text-instructed scene editing (nerfacto + CSD).")
csd_edit_small = DerivedMethod(_csd_edit_small, "CSD-Edit with half-precision diffusion and no LPIPS.")
csd_edit_splat = DerivedMethod(_csd_edit_splat, "CSD-Edit on splatfacto (3D Gaussian splatting).")
csd_edit_tiny = DerivedMethod(_csd_edit_tiny, "CSD-Edit sized for a CPU: small nerfacto, embedded diffusion model.")
csd_edit_paper = DerivedMethod(_csd_edit_paper, "CSD-Edit with the paper's 3D schedule (16 views / 2000 steps).")
csd_edit_fast = DerivedMethod(_csd_edit_fast, "CSD-Edit, every view edited together, then a short fit (joint).")
csd_edit_tiny_fast = DerivedMethod(_csd_edit_tiny_fast, "csd-edit-tiny with the joint schedule (every view together; "
                                   "the kernel mixes the scores' channel means).")
csd_edit_splat_tiny = DerivedMethod(_csd_edit_splat_tiny, "CSD-Edit on splatfacto sized for a CPU (no CUDA needed).")

METHODS: Dict[str, DerivedMethod] = {"csd-edit": csd_edit, "csd-edit-small": csd_edit_small,
                                     "csd-edit-splat": csd_edit_splat, "csd-edit-tiny": csd_edit_tiny,
                                     "csd-edit-paper": csd_edit_paper, "csd-edit-splat-tiny": csd_edit_splat_tiny,
                                     "csd-edit-fast": csd_edit_fast, "csd-edit-tiny-fast": csd_edit_tiny_fast}
"""The registered methods by name."""


def method_config(method: str, data: Path, output: Path, iterations: int, settings: Optional[Dict] = None):
    """The TrainerConfig of ``method`` on ``data``: ``iterations`` steps, no evaluation, one checkpoint at the end,
    the pipeline's ``settings`` applied (``edit.NAME`` keys go to ``--pipeline.edit``)."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    base = METHODS[method].config
    settings = dict(settings or {})
    nested: Dict[str, Dict] = {}  # "edit.lr" → pipeline.edit, "joint.rounds" → pipeline.joint
    for key in [k for k in settings if "." in k]:
        group, _, name = key.partition(".")
        if not dataclasses.is_dataclass(getattr(base.pipeline, group, None)):
            raise ValueError(f"--set: unknown pipeline setting {key!r} ({group!r} is not a group of settings)")
        nested.setdefault(group, {})[name] = settings.pop(key)
    fields = {f.name for f in dataclasses.fields(base.pipeline)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"--set: unknown pipeline setting(s) {unknown}")
    for group, values in nested.items():
        settings[group] = dataclasses.replace(getattr(base.pipeline, group), **values)
    dm = dataclasses.replace(base.pipeline.datamanager, data=data, dataparser=NerfstudioDataParserConfig(data=data))
    pipeline = dataclasses.replace(base.pipeline, datamanager=dm, **settings)
    return dataclasses.replace(
        base, output_dir=output, vis="tensorboard", max_num_iterations=iterations, steps_per_eval_batch=10**9,
        steps_per_eval_image=10**9, steps_per_eval_all_images=10**9, steps_per_save=10**9,
        save_only_latest_checkpoint=True, experiment_name="scene", timestamp="run", pipeline=pipeline,
    )
