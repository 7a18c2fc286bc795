"""The CSD-Edit pipeline: rendered views → an edit (csd2d) → scene update.

Two modes:

- ``dataset`` (Instruct-NeRF2NeRF's iterative dataset update): every ``edit_rate`` steps, render training views,
  edit them and write the edits back into the training set. ``update csd`` edits ``edit.batch`` views *jointly*
  with CSD-Edit (the CSD authors' recipe); ``update in2n`` edits one view with IN2N's DDIM edit (the baseline).
- ``distill`` (the paper's equation with θ the scene): render ``edit.batch`` views (or random patches of them)
  with gradients, encode them with the VAE and push the CSD-Edit gradient into the scene through the loss
  ``½‖z − sg(z − g)‖²`` (its gradient with respect to the latents ``z`` is ``g``).

``--pipeline.schedule joint`` (:mod:`csd_nerfstudio.joint`) edits every training view together in one CSD-Edit run
when editing starts, then fits the scene to the edits; later rounds re-edit from the renders at less noise.

Without ``--load-dir`` the scene is first fitted to the photos for ``pretrain_steps`` steps; no edit touches the
training set before that. When ``diffusion_device`` differs from the scene's device, the diffusion work of the next
dataset update runs in a background thread while the scene keeps training (the edits land one update later).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import typing
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor

from csd2d import DEFAULT_MODEL, ConfigError, EditConfig, IP2PGuidance, csd_edit_step
from csd2d.config import MemoryConfig, Normalization
from csd2d.imaging import model_hw
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import SplatfactoModel
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerDropdown, ViewerNumber, ViewerText

from .checks import SceneError
from .data import TrainImages
from .joint import JointConfig, JointProgress, RoundStopped, TargetRamp, round_due, round_plan, spread_views
from .updates import EditJob, csd_update, in2n_update
from .views import neighbouring_views, random_crop, render_view, resize, select_views, view_camera
from .warps import DEPTH_SUPERSAMPLE, DepthWarps, latent_intrinsics, pool_depth

SceneAlign = Literal["none", "depth"]
"""How a scene update's kernel mixes the views' scores: pixel for pixel (``none``) or warped by rendered depth onto
the pixels that show the same surface (``depth``; csd_nerfstudio.warps)."""

__all__ = ["SceneEditConfig", "CSDPipelineConfig", "CSDPipeline", "neighbouring_views", "TrainImages", "EditJob"]


@dataclass
class SceneEditConfig(EditConfig):
    """csd2d's editing settings (``--pipeline.edit.*``) with the defaults of a 3D dataset update. Only the
    defaults that differ from csd2d's are set here; every other field is csd2d's own."""

    image_guidance_scale: float = 1.5
    """Image classifier-free guidance scale s_I: Instruct-NeRF2NeRF's default (its official code)."""
    steps: int = 20
    """csd update: CSD-Edit SGD steps per dataset update (our choice: the number of DDIM steps of one IN2N
    edit, so both updates cost about the same UNet evaluations per view)."""
    lr: float = 0.5
    """csd update: SGD learning rate on the latents (csd2d's video setting, our measurement there with the real
    InstructPix2Pix; csd-edit-tiny measures its own for the embedded model). One update's edit settles at about
    1/(1 − carry) of this many steps' edit (see --pipeline.carry)."""
    batch: int = 4
    """N, views edited together per csd update or distill step (the SVGD particles). Our CPU-sized default;
    the paper's 3D schedule (16) is the csd-edit-paper method."""
    vae_tile: int = 0
    """Tiled VAE tile side in pixels; 0 encodes whole views (renders are at most render-max-side)."""
    normalization: Normalization = "count"
    """The iterative update's step normalisation: count, the paper's 1/N, with which csd-edit's and csd-edit-tiny's
    learning rates and the README's 3D evidence were measured (N = 4, where the mean row sum / N is 0.41). The
    joint schedule's methods (csd-edit-fast, csd-edit-tiny-fast) set their own: there N is every view and 1/N
    would shrink the step tenfold (csd2d.config.StepConfig.normalization)."""
    align: SceneAlign = "none"
    """Aligned CSD (csd2d.align): depth warps a view's score onto the other views' pixels that show the same
    surface (rendered depth, cameras, an occlusion test; csd_nerfstudio.warps) before the kernel mixes them; none
    mixes pixel for pixel (the paper). For the csd update (iterative or joint) and distill mode. Ours: none for
    the whole score, depth under the coarse mix (csd-edit-tiny-fast: csd_nerfstudio.config.TINY_FAST_ALIGN), from
    python -m csd_nerfstudio.evaluate (64 px, matched strength, seeds 0-2): with edit.bandwidth-scale 16 (its
    joint-whole-aligned arm; 0.98× at 1, one seed) the joint schedule's edit inconsistency is 0.97× the plain joint
    schedule's on face with 'recolor it' and 0.94× with 'make it night' (with joint.ramp; 0.89× before it), 1.20×
    on the textured scene ('recolor it', before the ramp), and the iterative update's does not fall (1.01× at 1,
    1.65× at 16, face, one seed; README). With edit.share-grid (csd-edit-tiny-fast) the channel means are mixed
    everywhere and only the detail through the warps (its joint arm; seeds 0-2, matched strength): 'recolor
    it' 0.90× the joint-unaligned arm on face and 0.77× on the textured scene, 'make it night' 0.98× on face and
    0.92× on the textured scene (0.75× the kernel-off arm; structure 1.0 dB lower), for about 30 % more wall time when
    every view was rendered at full size for its depth (now depth alone: csd_nerfstudio.warps.DEPTH_SUPERSAMPLE)."""

    guided_radius: int = 0
    """Write back the decoded edit carried onto the sharp image it started from (the photo, or photo plus
    carry·(render − photo)), as a locally affine colour map over (2r + 1)² pixel windows (csd2d.guided, the
    guided filter); 0 writes back the decoder's output, as the paper and IN2N do. Edits finer than the window are
    blurred to its size, so it stays 0 for the real model's methods; the CPU methods set it
    (csd_nerfstudio.config.TINY_GUIDED_RADIUS names the measurement). Both updates (csd, in2n)."""

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.guided_radius, int) and self.guided_radius >= 0):
            raise ConfigError("guided_radius",
                              f"expected a window radius in pixels >= 0, got {self.guided_radius!r}")
        if self.align not in typing.get_args(SceneAlign):
            raise ConfigError("align", f"expected one of {list(typing.get_args(SceneAlign))}, got {self.align!r}")

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ConfigError as err:  # as a flag of ns-train: --pipeline.edit.t-max
            raise ConfigError(f"--pipeline.edit.{err.field.replace('_', '-')}", str(err)[len(err.field) + 2:]) \
                from None


@dataclass
class CSDPipelineConfig(VanillaPipelineConfig):
    """CSD-Edit: edit a scene with a text instruction, N rendered views at a time."""

    _target: Type = field(default_factory=lambda: CSDPipeline)
    prompt: str = "don't change the image"
    """The editing instruction (InstructPix2Pix style, e.g. "turn him into a clown")."""
    edit: SceneEditConfig = field(default_factory=SceneEditConfig)
    """csd2d's editing settings: guidance scales, timesteps, kernel coupling, steps, lr, N (batch), seed."""
    update: Literal["csd", "in2n"] = "csd"
    """dataset mode: csd edits edit.batch views jointly with CSD-Edit; in2n is Instruct-NeRF2NeRF's update
    (one view per update, cycling through the dataset, noised and denoised with DDIM; the baseline)."""
    mode: Literal["dataset", "distill"] = "dataset"
    """dataset: edit rendered views and write them into the training set (IN2N-style update);
    distill: backpropagate the CSD-Edit gradient of rendered views into the scene every edit-rate steps."""
    edit_rate: int = 10
    """Steps between updates: Instruct-NeRF2NeRF's default edit rate (official code)."""
    pretrain_steps: int = 30000
    """Steps that fit the scene to the original photos before any edit (the paper pretrains nerfacto for 30k
    steps, Appendix D). Ignored with --load-dir: a loaded scene is edited at once."""
    carry: float = 0.5
    """csd update: the share of the scene's current edit that an update starts from. Its latents start at
    ``z_photo + carry·(z_render − z_photo)`` and take edit.steps CSD-Edit steps. 1 starts from the render: every
    update adds its steps to the last, nothing bounds the sum, and the scene is destroyed (face scene at 64 px,
    50 updates: hue −174°, 7.4 dB against the photos). 0 re-edits the photo each time and forgets what the
    scene agreed on. In between, the edit settles near one update's edit / (1 − carry) and keeps the scene's
    direction. 0.5: our measurement (30 chained updates of 4 face views, embedded model: the hue settles at 70°
    and the structure PSNR stays at 24.6 dB, against 152° and 12.9 dB with carry 1)."""
    in2n_noise_range: Tuple[float, float] = (0.02, 0.98)
    """in2n update: the noise level is drawn uniformly in this range, as a fraction of the diffusion schedule
    (Instruct-NeRF2NeRF's [0.02, 0.98], official code)."""
    in2n_ddim_steps: int = 20
    """in2n update: DDIM denoising steps per edit (Instruct-NeRF2NeRF's default, official code)."""
    diffusion_model: str = DEFAULT_MODEL
    """InstructPix2Pix model: hub id, local directory (diffusers layout, safetensors) or "embedded"."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """How the diffusion model runs: --pipeline.memory.attention sdpa|sliced, --pipeline.memory.compile,
    --pipeline.memory.offload (csd2d's controls; with diffusion-dtype, edit.max-batch and edit.vae-tile)."""
    diffusion_device: Optional[str] = None
    """Device of the diffusion model, e.g. cuda:1; None uses the scene's device."""
    diffusion_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype of the diffusion model."""
    asynchronous: Optional[bool] = None
    """Run dataset updates in a background thread; None: only when diffusion-device differs from the scene's."""
    render_max_side: int = 512
    """Views are rendered (and edited) with their long side at most this many pixels (Stable Diffusion's
    training resolution)."""
    render_chunk: int = 8192
    """Rays per chunk when rendering the views of an update (no gradients). Our measurement: with nerfstudio's
    pure-torch hash grid (no tiny-cuda-nn) a chunk of nerfacto's 32,768 rays adds 9.0 GB of peak memory and one
    of 8,192 rays 1.6 GB (csd-edit-small, 512 px views, CPU RSS); at 32,768 csd-edit-small peaked at 12.6 GiB
    on an H200 whether the UNet ran in batches of 24 or 6, while its training steps alone peak at 4.8 GiB."""
    patch_size: Optional[int] = None
    """distill mode: render a random patch of this many pixels square of each view (threestudio-style SDS
    patches; bounds the memory of rendering with gradients); None renders whole views."""
    distill_loss_mult: float = 1.0
    """distill mode: weight of the CSD term ("csd_loss" in the loss dict)."""
    photometric_loss_mult: float = 1.0
    """Weight of the scene's photometric loss against the (original or edited) training images."""
    schedule: Literal["iterative", "joint"] = "iterative"
    """When views are edited. iterative: every edit-rate steps, edit.batch views (IN2N's dataset update, with CSD
    over N views). joint: every training view (or --pipeline.joint.views K) together in one CSD-Edit run when
    editing starts, then --pipeline.joint.fit-steps of training; later rounds (--pipeline.joint.rounds, one by
    default) re-edit at less noise (csd_nerfstudio.joint). With update in2n, joint edits every view with IN2N's
    DDIM edit, each on its own."""
    joint: JointConfig = field(default_factory=JointConfig)
    """The joint schedule's rounds, fit steps, views and noise (--pipeline.joint.*)."""
    view_selection: Literal["neighbours", "random"] = "neighbours"
    """How the csd update's N views are chosen. neighbours: a random anchor camera and its N−1 nearest cameras
    by position and viewing direction; they look alike, so the kernel couples them strongly, and random anchors
    cover the scene over time. random: N views drawn uniformly without replacement (the paper's 3D schedule)."""

    def __post_init__(self) -> None:
        try:
            self._validate()
        except ValueError as err:  # tyro shows only the message: name the flag, not the field
            raise ValueError(_as_flag("--pipeline.", str(err))) from None

    def _validate(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt: expected a non-empty instruction, got {self.prompt!r}")
        positive = {"edit_rate": self.edit_rate, "in2n_ddim_steps": self.in2n_ddim_steps,
                    "render_max_side": self.render_max_side, "render_chunk": self.render_chunk}
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not (isinstance(self.carry, (int, float)) and 0 <= self.carry <= 1):
            raise ValueError(f"carry: expected a number in [0, 1], got {self.carry!r}")
        lo, hi = self.in2n_noise_range
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"in2n_noise_range: expected 0 <= low <= high < 1, got {tuple(self.in2n_noise_range)!r}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps: expected a non-negative integer, got {self.pretrain_steps!r}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"patch_size: expected a positive integer or None, got {self.patch_size!r}")
        for name in ("distill_loss_mult", "photometric_loss_mult"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.schedule == "joint" and self.mode != "dataset":
            raise ValueError(f"schedule: joint edits the training views (a dataset update); expected mode 'dataset' "
                             f"with it, got {self.mode!r}")
        if self.update == "in2n" and self.mode != "dataset":
            raise ValueError(f"update: in2n is a dataset update; expected mode 'dataset' with it, got {self.mode!r}")
        if self.edit.align != "none" and self.update == "in2n":  # in2n runs in dataset mode only (above)
            raise ValueError(f"--pipeline.edit.align: aligns CSD's kernel, which the in2n update does not use; "
                             f"expected 'none' with update in2n, got {self.edit.align!r}")


def _as_flag(prefix: str, message: str) -> str:
    """``"pretrain_steps: expected ..."`` → ``"--pipeline.pretrain-steps: expected ..."``."""
    name, sep, rest = message.partition(": ")
    if sep and name.isidentifier():
        return f"{prefix}{name.replace('_', '-')}: {rest}"
    return message


class CSDPipeline(VanillaPipeline):
    """VanillaPipeline plus CSD-Edit updates (see the module docstring)."""

    config: CSDPipelineConfig

    def __init__(self, config: CSDPipelineConfig, device: str, test_mode: str = "val", world_size: int = 1,
                 local_rank: int = 0, grad_scaler=None) -> None:
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.guidance: Optional[IP2PGuidance] = None
        self._pending: Optional[Future] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self.updates = 0
        self.ramp: Optional[TargetRamp] = None
        """The last joint round's edits on their way into the training images (joint.ramp), until reached."""
        self.edited_views: List[List[int]] = []
        self.edit_start = config.pretrain_steps
        """First step at which updates run (pretraining before it; see :meth:`load_pipeline` after a load)."""
        self.last_update_step: Optional[int] = None
        """Step of the latest update (the joint schedule's next round is ``joint.fit_steps`` after it)."""
        self.progress: Optional[JointProgress] = None
        """The joint round running now or last (its console lines are in ``progress.lines``)."""
        self.round_seconds: List[Dict[str, float]] = []
        """Each finished joint round's wall seconds: ``render`` (its views), ``edit`` (CSD, VAE, write-back)."""
        self.stop_requested = False
        """Set by the trainer on Ctrl-C / SIGTERM: a joint round in progress is given up (it runs again on
        resume) instead of holding the stop for the rest of its minutes."""
        self._round_text = ""
        """The joint round's latest progress line, shown at the end of the viewer's status line."""
        self._announced = False
        self.finished = False
        """Set by the trainer before its final checkpoint: the run did all its steps (saved in ``edit_state``)."""
        self.images: Optional[TrainImages] = None
        if test_mode != "val":  # ns-render / ns-viewer / eval: the scene only, no diffusion model
            return
        self.images = TrainImages(self.datamanager)
        if config.edit.align == "depth" and config.mode == "distill" and isinstance(self.model, SplatfactoModel):
            self.model.config.output_depth_during_training = True  # distill's renders carry the depth it warps by
        if (config.update == "csd" and config.schedule == "iterative") or config.mode == "distill":
            if config.edit.batch > len(self.images):
                CONSOLE.print(f"[bold yellow]--pipeline.edit.batch {config.edit.batch} is more than the scene's "
                              f"{len(self.images)} training views: each update edits all {len(self.images)} (N = "
                              f"{len(self.images)})")
        self.diffusion_device = torch.device(config.diffusion_device or device)
        self.guidance = IP2PGuidance.from_pretrained(
            config.diffusion_model, device=self.diffusion_device, torch_dtype=getattr(torch, config.diffusion_dtype),
            arg_name="--pipeline.diffusion-model", **config.memory.memory_kwargs(),
        )
        num = len(self.guidance.alphas_cumprod)
        if not 0 <= config.edit.t_min <= config.edit.t_max < num:
            raise ConfigError("--pipeline.edit.t-max", f"expected 0 <= edit.t-min <= edit.t-max < {num} (the schedule "
                              f"of {config.diffusion_model!r}), got t_min={config.edit.t_min}, "
                              f"t_max={config.edit.t_max}")
        self.text_emb = self.guidance.encode_prompt([config.prompt])
        self.source_emb = self.guidance.encode_prompt([config.edit.source_prompt])
        asynchronous = config.asynchronous
        if asynchronous is None:
            asynchronous = self.diffusion_device != torch.device(device)
        self.asynchronous = bool(asynchronous)
        if self.asynchronous:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csd-diffusion")
        self.paused = False
        self.last_update_seconds: Optional[float] = None
        self.update_seconds = 0.0
        """Wall seconds spent in updates so far (the training step's own time excluded)."""
        # Live controls in the viewer's web UI.
        self.viewer_prompt = ViewerText("CSD prompt", config.prompt, cb_hook=self._on_prompt, hint="Edit instruction")
        self.viewer_guidance = ViewerNumber("Text guidance", config.edit.guidance_scale, cb_hook=self._on_setting)
        self.viewer_image_guidance = ViewerNumber("Image guidance", config.edit.image_guidance_scale,
                                                  cb_hook=self._on_setting)
        self.viewer_views = ViewerNumber("Views (N)", config.edit.batch, cb_hook=self._on_setting)
        self.viewer_mode = ViewerDropdown("Mode", config.mode, ["dataset", "distill"], cb_hook=self._on_setting)
        self.viewer_pause = ViewerCheckbox("Pause editing", False, cb_hook=self._on_setting)
        self.viewer_status = ViewerText("CSD status", self.status_text(), disabled=True,
                                        hint="Read-only: current prompt, updates done, last update's wall time")

    # ------------------------------------------------------------------ viewer
    def status_text(self) -> str:
        """One line for the viewer's read-only "CSD status" element."""
        last = "-" if self.last_update_seconds is None else f"{self.last_update_seconds:.2f} s"
        text = f"prompt: {self.config.prompt} | updates: {len(self.edited_views)} | last update: {last}"
        if self._round_text:
            text += f" | {self._round_text}"
        return text

    def _show_round(self, text: str) -> None:
        self._round_text = text
        self._refresh_status()

    def _refresh_status(self) -> None:
        if hasattr(self, "viewer_status"):
            self.viewer_status.value = self.status_text()

    def _on_prompt(self, element) -> None:
        self.set_prompt(str(element.value))

    def _on_setting(self, _element=None) -> None:
        """Write the viewer's values into ``config.edit`` (validated by csd2d; a bad value keeps the old one)."""
        try:
            self.config.edit = dataclasses.replace(
                self.config.edit, guidance_scale=float(self.viewer_guidance.value),
                image_guidance_scale=float(self.viewer_image_guidance.value),
                batch=int(self.viewer_views.value))
        except ValueError as err:
            CONSOLE.print(f"[bold yellow]CSD settings: {err}; keeping the previous settings")
        if self.viewer_mode.value == "distill" and self.config.update == "in2n":
            CONSOLE.print("[bold yellow]CSD mode: the in2n update is a dataset update; keeping mode 'dataset'")
        else:
            self.config.mode = self.viewer_mode.value
        self.paused = bool(self.viewer_pause.value)

    def set_prompt(self, prompt: str) -> None:
        """Change the instruction; the text embedding is re-encoded now."""
        if not prompt.strip():
            CONSOLE.print("[bold yellow]CSD prompt: expected a non-empty instruction; keeping the previous one")
            return
        self.config.prompt = prompt
        self.text_emb = self.guidance.encode_prompt([prompt])
        self._refresh_status()

    # ------------------------------------------------------------------ state
    EDIT_PREFIX = "_csd."
    """State-dict keys of the edit (beside nerfstudio's ``_model.*``): ``_csd.meta`` (JSON as uint8: update
    counter, views of each update, edit start), ``_csd.rng`` (torch's CPU RNG state) and ``_csd.view.I`` (training
    view I as uint8 ``[H, W, 3]``, for every view that differs from its photo)."""

    def edit_state(self) -> Dict[str, Tensor]:
        """The edit's part of a checkpoint (see :attr:`EDIT_PREFIX`): what a resumed run needs to go on where
        this one stopped. An asynchronous update still in flight is not counted: a resume runs it again."""
        p = self.EDIT_PREFIX
        in_flight = 1 if self._pending is not None else 0
        meta = {"version": 1, "updates": self.updates - in_flight, "edited_views": self.edited_views,
                "edit_start": self.edit_start, "finished": self.finished, "last_update_step": self.last_update_step}
        if self.ramp is not None:
            meta["ramp"] = self.ramp.meta()
        state = {f"{p}meta": torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8),
                 f"{p}rng": torch.get_rng_state()}
        if self.images is not None:
            for i in self.images.edited():
                state[f"{p}view.{i}"] = self.images.uint8(i)[..., :3].contiguous()
        if self.ramp is not None:  # the round's edits as the views, what they ramp from beside them
            for i, before, after in zip(self.ramp.indices, self.ramp.before, self.ramp.after):
                state[f"{p}view.{i}"] = after.cpu().contiguous()
                state[f"{p}ramp.{i}"] = before.cpu().contiguous()
        return state

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """nerfstudio's state (``_model.*``) plus :meth:`edit_state`, so every checkpoint keeps the edits."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key, value in self.edit_state().items():
            state[prefix + key] = value
        return state

    def load_pipeline(self, loaded_state, step: int) -> None:
        """Load a checkpoint (``--load-dir``). A checkpoint of ours restores its edited views, update counter and
        RNG state. When its run was stopped inside its pretraining (no update yet, step below that run's
        ``pretrain_steps``, training not finished), pretraining goes on to that step. Any other fitted scene is
        edited at once: a plain nerfacto or splatfacto checkpoint, or one of ours from a run that finished (a
        pretrain-only run such as ``csd_nerfstudio.evaluate``'s base scene) or had started editing."""
        p = self.EDIT_PREFIX
        edit = {k[len(p):]: v for k, v in loaded_state.items() if k.startswith(p)}
        super().load_pipeline({k: v for k, v in loaded_state.items() if not k.startswith(p)}, step)
        if "meta" not in edit:
            self.edit_start = 0
            return
        meta = json.loads(bytes(edit["meta"].tolist()).decode())
        self.updates = int(meta["updates"])
        self.edited_views = [list(v) for v in meta["edited_views"]][: self.updates]
        saved_start = int(meta.get("edit_start", 0))
        still_pretraining = self.updates == 0 and not meta.get("finished", False) and step + 1 < saved_start
        self.edit_start = saved_start if still_pretraining else 0
        self.last_update_step = meta.get("last_update_step")
        if "rng" in edit:
            torch.set_rng_state(edit["rng"])
        if self.images is None:  # a viewer or renderer: the scene alone
            return
        for key, view in edit.items():
            if not key.startswith("view."):
                continue
            index = int(key[len("view."):])
            if index >= len(self.images):
                raise SceneError(f"--load-dir: the checkpoint holds an edit of training view {index}, but this "
                                 f"scene has {len(self.images)} training views (another scene or split?)")
            shape = tuple(self.images.get(index).shape[:2])
            if tuple(view.shape[:2]) != shape:
                raise SceneError(f"--load-dir: the checkpoint's edit of training view {index} is "
                                 f"{view.shape[1]}×{view.shape[0]}, this scene's view is {shape[1]}×{shape[0]} "
                                 f"(another downscale?)")
            self.images.set(index, view.float() / 255.0)
        if meta.get("ramp"):  # stopped during a round's ramp: go on with the same blend
            ramp = meta["ramp"]
            device = self.images.device
            self.ramp = TargetRamp(ramp["start"], ramp["steps"], ramp["views"],
                                   [edit[f"ramp.{i}"].to(device) for i in ramp["views"]],
                                   [self.images.uint8(i)[..., :3].to(device) for i in ramp["views"]])

    def edited_images(self) -> List[Tensor]:
        """The edited scene's training views as uint8 ``[H, W, C]`` (CPU, training order, alpha kept): the
        training images in dataset mode; in distill mode, where the edit lives in the scene alone, its renders
        at the photos' resolution."""
        if self.config.mode == "dataset":
            out = [self.images.uint8(i) for i in range(len(self.images))]
            if self.ramp is not None:  # stopped during a ramp: the round's edits, not the blend
                for i, after in zip(self.ramp.indices, self.ramp.after):
                    out[i] = torch.cat([after.cpu(), out[i][..., 3:]], dim=-1)
            return out
        out = []
        self.model.eval()
        try:
            with torch.no_grad():
                for i in range(len(self.images)):
                    camera = view_camera(self.datamanager.train_dataset.cameras, i, 10**9, self.device)
                    rgb = render_view(self.model, camera, i, chunk=self.config.render_chunk)
                    img = (rgb.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                    photo = self.images.uint8(i)
                    out.append(torch.cat([img, photo[..., 3:]], dim=-1) if photo.shape[-1] == 4 else img)
        finally:
            self.model.train()
        return out

    # ------------------------------------------------------------------ training

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes
                               ) -> List[TrainingCallback]:
        """nerfstudio's callbacks plus one after training: apply an in-flight asynchronous update and stop the
        diffusion thread."""
        callbacks = super().get_training_callbacks(training_callback_attributes)
        return callbacks + [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], self._after_train)]

    def _after_train(self, step: int) -> None:
        self.close()

    def close(self) -> None:
        """Apply a pending asynchronous update and shut the diffusion thread down."""
        self.finish_pending()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            self.asynchronous = False

    def _due(self, step: int) -> bool:
        if self.guidance is None or self.paused or step < self.edit_start:
            return False
        if self.config.schedule == "joint":
            return round_due(self.config.joint, step, self.edit_start, self.updates, self.last_update_step)
        return step % self.config.edit_rate == 0

    def get_train_loss_dict(self, step: int):
        if self.ramp is not None and step > self.ramp.start and self.ramp.apply(self.images, step):
            self.ramp = None  # the round's edits are reached
        due = self._due(step)
        if due and not self._announced:
            self._announced = True
            schedule = ""
            if self.config.schedule == "joint":
                joint = self.config.joint
                schedule = (f"joint schedule: {joint.rounds} round{'s' if joint.rounds > 1 else ''}, "
                            f"{joint.fit_steps} fit steps after each, ")
            CONSOLE.print(f"csd-edit: editing starts at step {step} ({schedule}{self.config.update} update, "
                          f"{self.config.mode} mode, {self.updates} updates done)")
        if due and self.config.schedule == "joint":
            start = time.perf_counter()
            self._joint_round(step)
            self._timed(start)
        elif due and self.config.mode == "dataset":
            start = time.perf_counter()
            self._dataset_update(step)
            self._timed(start)
        model_outputs, loss_dict, metrics_dict = super().get_train_loss_dict(step)
        if "rgb_loss" in loss_dict:
            loss_dict["rgb_loss"] = loss_dict["rgb_loss"] * self.config.photometric_loss_mult
        if due and self.config.mode == "distill":
            start = time.perf_counter()
            loss_dict["csd_loss"] = self._distill_loss()
            self._timed(start)
        return model_outputs, loss_dict, metrics_dict

    def _timed(self, start: float) -> None:
        self.last_update_seconds = time.perf_counter() - start
        self.update_seconds += self.last_update_seconds
        self._refresh_status()

    def _generator(self, update: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.edit.seed * 1_000_003 + update)

    def select_views(self, update: int) -> List[int]:
        """The training views of update ``update``: one view cycling through the dataset (in2n), or
        ``edit.batch`` views chosen by ``view_selection`` (csd, distill)."""
        if self.config.update == "in2n" and self.config.mode == "dataset":
            return [update % len(self.images)]
        c2w = self.datamanager.train_dataset.cameras.camera_to_worlds
        return select_views(c2w, self.config.edit.batch, self.config.view_selection, self._generator(update))

    def _camera(self, index: int) -> Cameras:
        return view_camera(self.datamanager.train_dataset.cameras, index, self.config.render_max_side, self.device)

    def _edit_size(self, camera: Cameras) -> Tuple[int, int]:
        return model_hw(int(camera.height), int(camera.width), self.guidance.vae_scale_factor)

    def _original(self, index: int, size: Tuple[int, int], device) -> Tensor:
        """Original photo ``index`` resized to ``size``: ``[1, 3, h, w]``."""
        return resize(self.images.original(index).permute(2, 0, 1)[None].to(device), size)

    def _latent_hw(self, size: Tuple[int, int]) -> Tuple[int, int]:
        f = self.guidance.vae_scale_factor
        return size[0] // f, size[1] // f

    def _view_geometry(self, cameras: List[Cameras], depths: List[Tensor], sizes: List[Tuple[int, int]],
                       indices: List[int], crops: Optional[List] = None) -> DepthWarps:
        """Depth warps among rendered views (csd_nerfstudio.warps): each view's depth pooled onto its latent grid
        and its intrinsics rescaled to it (shifted first to its crop, if any)."""
        pooled, intrinsics = [], []
        for k, (camera, depth, size) in enumerate(zip(cameras, depths, sizes)):
            latent_hw = self._latent_hw(size)
            top, left = (0, 0) if crops is None or crops[k] is None else crops[k][:2]
            pooled.append(pool_depth(depth[None].cpu(), latent_hw)[0])
            intrinsics.append(latent_intrinsics(camera.fx, camera.fy, float(camera.cx) - left,
                                                float(camera.cy) - top, depth.shape[1], depth.shape[0], latent_hw))
        c2w = self.datamanager.train_dataset.cameras.camera_to_worlds[indices].float().cpu()
        kind = "z" if isinstance(self.model, SplatfactoModel) else "ray"
        return DepthWarps(torch.stack(pooled), torch.stack(intrinsics), c2w, kind)

    def start_carry(self, update: int) -> float:
        """The share of the scene's edit that csd update ``update`` starts from: ``carry``, or under the joint
        schedule the round's (:func:`csd_nerfstudio.joint.round_plan`: 0 in the first round, which edits the
        photos)."""
        if self.config.schedule == "joint":
            edit = self.config.edit
            return round_plan(self.config.joint, edit.t_min, edit.t_max, update)[1]
        return float(self.config.carry)

    def needs_renders(self, update: int) -> bool:
        """Whether update ``update`` reads the scene's renders: in2n edits them; a csd update only when it starts
        from a share of them (:meth:`start_carry` > 0) or aligns by their depth. The joint schedule's first round
        starts from the photos, so unaligned it renders nothing and aligned only depth (:meth:`needs_colour`; our
        measurement: 30 of the 60 renders of csd-edit-tiny-fast's edit on face at 64 px, 16 s of its 73 s on one
        CPU thread)."""
        return self.needs_colour(update) or self.aligns()

    def needs_colour(self, update: int) -> bool:
        """Whether update ``update`` reads the renders' colour (in2n edits them; a csd update that starts from a share
        of them). An aligned update that does not renders only depth, at DEPTH_SUPERSAMPLE rays per latent pixel
        side (csd_nerfstudio.warps)."""
        return self.config.update == "in2n" or self.start_carry(update) > 0

    def aligns(self) -> bool:
        """Whether csd updates mix depth-warped scores (``edit.align depth``): not with the kernel off
        (``edit.coupling False``), whose views mix nothing, so that arm renders no depth and builds no warps."""
        return self.config.edit.align == "depth" and self.config.edit.coupling

    @torch.no_grad()
    def make_job(self, update: int, indices: Optional[List[int]] = None,
                 on_render: Optional[Callable[[int], None]] = None) -> EditJob:
        """Render the views of update ``update`` (:meth:`select_views`, or ``indices``) on the scene's device
        without gradients; ``on_render(k)`` after the k-th. With ``edit.align depth`` their depth too, and the job
        carries the views' depth warps. An update that reads no render (:meth:`needs_renders`) renders nothing:
        its job holds the photos in their place and ``on_render`` is not called. An aligned one that reads no colour
        (:meth:`needs_colour`: the joint schedule's first round) holds the photos too, and renders only the depth its
        warps need, at :data:`csd_nerfstudio.warps.DEPTH_SUPERSAMPLE` rays per latent pixel side."""
        indices = self.select_views(update) if indices is None else indices
        renders, originals, sizes, cameras, depths = [], [], [], [], []
        align = self.aligns()  # refused with in2n (CSDPipelineConfig._validate)
        render, colour = self.needs_renders(update), self.needs_colour(update)
        self.model.eval()
        try:
            for k, i in enumerate(indices, 1):
                camera = self._camera(i)
                size = self._edit_size(camera)
                originals.append(self._original(i, size, self.device if render else "cpu"))
                sizes.append(tuple(self.images.originals[i].shape[:2]))
                if not render:
                    continue
                if not colour:  # depth alone, on a camera scaled to the latent grid
                    camera = view_camera(self.datamanager.train_dataset.cameras, i,
                                         DEPTH_SUPERSAMPLE * max(self._latent_hw(size)), self.device)
                out = render_view(self.model, camera, i, chunk=self.config.render_chunk, with_depth=align)
                rgb = out[0] if align else out
                if align:
                    cameras.append(camera)
                    depths.append(out[1])
                if colour:
                    renders.append(resize(rgb[None], size))
                if on_render is not None:
                    on_render(k)
        finally:
            self.model.train()
        photos = torch.cat(originals).cpu()
        if not render:
            return EditJob(update, indices, photos, photos, sizes)
        warps = None
        if align:
            edit_size = tuple(photos.shape[-2:])
            warps = self._view_geometry(cameras, depths, [edit_size] * len(indices), indices)
        return EditJob(update, indices, torch.cat(renders).cpu() if colour else photos, photos, sizes, warps=warps)

    def run_job(self, job: EditJob, on_step: Optional[Callable[[int], None]] = None) -> Tensor:
        """Edit the job's renders (the configured update); returns edited images ``[N, 3, h, w]`` in [0, 1] (CPU).
        Under the joint schedule, ``job.update`` is the round, which sets the timesteps and the start
        (:func:`csd_nerfstudio.joint.round_plan`).

        A pure function of the job, the options and the update's seed: the same on any thread or device."""
        gen = self._generator(job.update)
        edit, carry = self.config.edit, self.start_carry(job.update)
        num = len(self.guidance.alphas_cumprod)
        lo, hi = (round(f * num) for f in self.config.in2n_noise_range)
        hi = min(hi, num - 1)
        if self.config.schedule == "joint":
            t_max = round_plan(self.config.joint, edit.t_min, edit.t_max, job.update)[0]
            hi = max(lo, round(hi * t_max / max(edit.t_max, 1)))  # in2n: its noise falls with the rounds' t_max
            edit = dataclasses.replace(edit, t_max=t_max, max_batch=edit.max_batch or self.config.joint.max_batch)
        if self.config.update == "in2n":
            return in2n_update(self.guidance, job, edit, self.text_emb, gen, self.config.in2n_ddim_steps,
                               t_range=(lo, hi), guided_radius=edit.guided_radius)
        return csd_update(self.guidance, job, edit, self.text_emb, self.source_emb, gen, carry=carry,
                          on_step=on_step, guided_radius=edit.guided_radius)

    def apply_job(self, job: EditJob, edited: Tensor) -> None:
        """Write edited views back into the training set at full resolution."""
        for i, img, (h, w) in zip(job.indices, edited, job.sizes):
            self.images.set(i, resize(img[None], (h, w))[0].permute(1, 2, 0))
        self.edited_views.append(list(job.indices))

    def _joint_round(self, step: int) -> None:
        """One round of the joint schedule: render the chosen views, edit them together, write them back."""
        c2w = self.datamanager.train_dataset.cameras.camera_to_worlds
        indices = spread_views(c2w, self.config.joint.views)
        steps = self.config.edit.steps if self.config.update == "csd" else self.config.in2n_ddim_steps
        self.progress = JointProgress(self.updates, self.config.joint.rounds, len(indices), steps,
                                      say=CONSOLE.print, show=self._show_round,
                                      should_stop=lambda: self.stop_requested)
        try:
            job = self.make_job(self.updates, indices=indices, on_render=self.progress.rendered)
            if not self.needs_renders(self.updates):
                self.progress.from_photos()
            edited = self.run_job(job, on_step=self.progress.stepped)
        except RoundStopped as stopped:
            CONSOLE.print(f"csd-edit: {stopped}; nothing of it is written, and a resumed run makes it again")
            return
        ramp_steps = self.config.joint.ramp_steps  # the edits reach the training images over these steps
        if ramp_steps > 1:
            before = [self.images.uint8(i)[..., :3].to(self.images.device) for i in job.indices]
        self.apply_job(job, edited)
        if ramp_steps > 1:
            after = [self.images.uint8(i)[..., :3].to(self.images.device) for i in job.indices]
            self.ramp = TargetRamp(step, ramp_steps, job.indices, before, after)
            self.ramp.apply(self.images, step)
        self.updates += 1
        self.last_update_step = step
        self.progress.finished()
        self.round_seconds.append({"render": self.progress.render_seconds, "edit": self.progress.edit_seconds})
        if self.updates == self.config.joint.rounds:
            CONSOLE.print(f"csd-edit: joint edit done ({self.updates} round{'s' if self.updates > 1 else ''}); "
                          f"the scene fits the edits for {self.config.joint.fit_steps} steps")

    def _dataset_update(self, step: int) -> None:
        job = self.make_job(self.updates)
        self.updates += 1
        self.last_update_step = step
        if not self.asynchronous:
            self.apply_job(job, self.run_job(job))
            return
        if self._pending is not None:  # the previous update's diffusion ran while the scene trained
            self.apply_job(*self._pending.result())
        self._pending = self._executor.submit(lambda j=job: (j, self.run_job(j)))

    def finish_pending(self) -> None:
        """Wait for and apply an in-flight asynchronous update."""
        if self._pending is not None:
            self.apply_job(*self._pending.result())
            self._pending = None

    def _distill_loss(self) -> Tensor:
        """``mult · ½‖z − sg(z − g)‖² / N`` over the latents ``z`` of N views (or patches) rendered with
        gradients."""
        g = self.guidance
        update = self.updates
        self.updates += 1
        indices = self.select_views(update)
        gen = self._generator(update)
        n = len(indices)
        renders, originals = [], []
        align = self.aligns()
        cameras, depths, crops = [], [], []
        for i in indices:
            camera = self._camera(i)
            size = self._edit_size(camera)
            crop = None
            if self.config.patch_size is not None:
                crop = random_crop(int(camera.height), int(camera.width), self.config.patch_size,
                                   g.vae_scale_factor, gen)
            out = render_view(self.model, camera, i, grad=True, crop=crop, with_depth=align)
            rgb = out[0] if align else out
            if align:
                cameras.append(camera)
                depths.append(out[1])
                crops.append(crop)
            if crop is None:
                renders.append(resize(rgb[None], size))
                originals.append(self._original(i, size, rgb.device))
            else:  # crop sides are VAE multiples already
                top, left, h, w = crop
                full = self._original(i, (int(camera.height), int(camera.width)), rgb.device)
                renders.append(rgb[None])
                originals.append(full[..., top : top + h, left : left + w])
        latents = g.encode_images(torch.cat(renders).to(g.device), requires_grad=True).float()
        source = g.encode_images(torch.cat(originals).to(g.device)).float()
        n_emb = (self.text_emb.float().expand(n, -1, -1), self.source_emb.float().expand(n, -1, -1))
        warps = None
        if align:
            warps = self._view_geometry(cameras, depths, [tuple(r.shape[-2:]) for r in renders], indices, crops)
        step = csd_edit_step(g, latents.detach(), source, *n_emb, self.config.edit, generator=gen, warps=warps)
        target = (latents - step.grad.float()).detach()
        self.edited_views.append(indices)
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / n
        return (self.config.distill_loss_mult * loss).to(self.device)
