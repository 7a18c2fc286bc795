"""The CSD-Edit pipeline: rendered views → CSD-Edit (csd2d) → scene update.

Two modes:

- ``dataset`` (the CSD authors' recipe, Instruct-NeRF2NeRF's iterative dataset update with CSD): every
  ``edit_rate`` steps, render ``num_views`` neighbouring training views, edit them *jointly* with CSD-Edit
  (each conditioned on its original photo), and write the edited images back into the training set.
- ``distill`` (the paper's equation with θ the scene): render ``num_views`` views with gradients, encode
  them with the VAE and push the CSD-Edit gradient into the scene through the loss
  ``½‖z − sg(z − g)‖²`` (its gradient with respect to the latents ``z`` is ``g``).

When ``diffusion_device`` differs from the scene's device, the diffusion work of the next dataset update runs in
a background thread while the scene keeps training (the edits land one update later).
"""

from __future__ import annotations

import copy
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor

from csd2d import DEFAULT_MODEL, EditConfig, IP2PGuidance, csd_edit_step, optimize_latents
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerDropdown, ViewerNumber, ViewerText

__all__ = ["CSDPipelineConfig", "CSDPipeline", "neighbouring_views", "TrainImages", "EditJob"]


@dataclass
class CSDPipelineConfig(VanillaPipelineConfig):
    """CSD-Edit: edit a scene with a text instruction, N rendered views at a time."""

    _target: Type = field(default_factory=lambda: CSDPipeline)
    prompt: str = "don't change the image"
    """The editing instruction (InstructPix2Pix style, e.g. "turn him into a clown")."""
    guidance_scale: float = 7.5
    """Text (instruction) classifier-free guidance scale."""
    image_guidance_scale: float = 1.5
    """Image classifier-free guidance scale (higher keeps closer to the original photo)."""
    diffusion_model: str = DEFAULT_MODEL
    """InstructPix2Pix model: hub id, local directory (diffusers layout, safetensors) or "embedded"."""
    diffusion_device: Optional[str] = None
    """Device of the diffusion model, e.g. cuda:1; None uses the scene's device."""
    diffusion_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype of the diffusion model."""
    asynchronous: Optional[bool] = None
    """Run dataset updates in a background thread; None: only when diffusion-device differs from the scene's."""
    num_views: int = 4
    """N, the CSD batch: views edited together (the SVGD particles)."""
    edit_rate: int = 10
    """Steps between CSD updates."""
    mode: Literal["dataset", "distill"] = "dataset"
    """dataset: edit N rendered views and write them into the training set (IN2N-style update with CSD);
    distill: backpropagate the CSD-Edit gradient of N rendered views into the scene every edit-rate steps."""
    t_min: int = 20
    """Smallest diffusion timestep."""
    t_max: int = 980
    """Largest diffusion timestep."""
    kernel: bool = True
    """Couple the N views through the CSD kernel; False edits each view independently (baseline)."""
    repulsion: float = 1.0
    """Weight of the kernel's repulsive term."""
    max_batch: Optional[int] = None
    """Largest UNet batch (caps diffusion memory)."""
    edit_steps: int = 20
    """dataset mode: CSD-Edit optimisation steps per update."""
    edit_lr: float = 0.5
    """dataset mode: learning rate of those steps."""
    render_max_side: int = 512
    """Views are rendered (and edited) with their long side at most this many pixels."""
    distill_loss_mult: float = 1.0
    """distill mode: weight of the CSD term ("csd_loss" in the loss dict)."""
    photometric_loss_mult: float = 1.0
    """Weight of the scene's photometric loss against the (original or edited) training images."""
    view_selection: Literal["neighbours", "random"] = "neighbours"
    """How the N views are chosen. neighbours: a random anchor camera and its N−1 nearest cameras by position
    and viewing direction; they look alike, so the kernel couples them strongly, and random anchors cover the
    scene over time. random: N views drawn uniformly."""
    seed: int = 0
    """Seed of view selection and diffusion noise; update k uses seed·1000003 + k, whatever the timing."""

    def edit_config(self) -> EditConfig:
        """The csd2d editing knobs these options stand for."""
        return EditConfig(
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
            t_min=self.t_min,
            t_max=self.t_max,
            coupling=self.kernel,
            repulsion=self.repulsion,
            max_batch=self.max_batch,
            steps=self.edit_steps,
            lr=self.edit_lr,
            batch=self.num_views,
            seed=self.seed,
        )


def neighbouring_views(c2w: Tensor, n: int, anchor: int) -> List[int]:
    """``anchor`` and its ``n − 1`` nearest cameras: distance ``‖c_i − c_a‖ / scale + (1 − cos∠(d_i, d_a))``
    with camera centres ``c``, viewing directions ``d`` (−z of the OpenGL camera) and ``scale`` the median
    centre distance."""
    centres = c2w[:, :3, 3].float()
    dirs = F.normalize(-c2w[:, :3, 2].float(), dim=-1)
    dist = (centres - centres[anchor]).norm(dim=-1)
    scale = dist[dist > 0].median() if (dist > 0).any() else torch.tensor(1.0)
    score = dist / scale + (1 - dirs @ dirs[anchor])
    score[anchor] = -1.0
    return score.argsort()[:n].tolist()


class TrainImages:
    """Read and write the training images a datamanager caches (VanillaDataManager or FullImageDatamanager),
    keeping a copy of the originals for conditioning."""

    def __init__(self, datamanager) -> None:
        self.dm = datamanager
        if hasattr(datamanager, "train_image_dataloader"):
            batch = datamanager.train_image_dataloader.cached_collated_batch
            if batch is None or not isinstance(batch.get("image"), Tensor):
                raise ValueError(
                    "pipeline.datamanager: expected all training images cached in one tensor "
                    "(train-num-images-to-sample-from -1 and images of one size)"
                )
            self._batch = batch
            self._pos = {int(i): p for p, i in enumerate(batch["image_idx"].tolist())}
            self.originals = [batch["image"][self._pos[i]].clone() for i in range(len(self._pos))]
        elif hasattr(datamanager, "cached_train"):
            self._batch = None
            self.originals = [d["image"].clone() for d in datamanager.cached_train]
        else:
            raise ValueError(f"pipeline.datamanager: cannot edit the images of {type(datamanager).__name__}")

    def __len__(self) -> int:
        return len(self.originals)

    def get(self, index: int) -> Tensor:
        """Current training image ``index`` as float ``[H, W, 3]`` in [0, 1]."""
        img = self._batch["image"][self._pos[index]] if self._batch is not None else self.dm.cached_train[index]["image"]
        return _to_float(img)

    def original(self, index: int) -> Tensor:
        return _to_float(self.originals[index])

    def set(self, index: int, image: Tensor) -> None:
        """Replace training image ``index`` with ``image`` (float ``[H, W, 3]``), in the cache's dtype."""
        dst = self._batch["image"][self._pos[index]] if self._batch is not None else self.dm.cached_train[index]["image"]
        value = image[..., : dst.shape[-1]].to(dst.device)
        if dst.dtype == torch.uint8:
            value = (value.clamp(0, 1) * 255).round()
        dst.copy_(value.to(dst.dtype))


def _to_float(img: Tensor) -> Tensor:
    img = img[..., :3]
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


@dataclass
class EditJob:
    """Everything a dataset update needs, detached from the scene (so it can run on another thread)."""

    update: int
    indices: List[int]
    renders: Tensor  # [N, 3, h, w] in [0, 1]
    originals: Tensor  # [N, 3, h, w] in [0, 1]
    sizes: List[Tuple[int, int]]  # full (H, W) of each training image


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
        self.edited_views: List[List[int]] = []
        if test_mode != "val":  # ns-render / ns-viewer / eval: the scene only, no diffusion model
            return
        if config.num_views < 1 or config.edit_rate < 1:
            raise ValueError(f"pipeline.num-views/edit-rate: expected positive integers, got "
                             f"{config.num_views}/{config.edit_rate}")
        self.images = TrainImages(self.datamanager)
        self.diffusion_device = torch.device(config.diffusion_device or device)
        self.guidance = IP2PGuidance.from_pretrained(
            config.diffusion_model, device=self.diffusion_device, torch_dtype=getattr(torch, config.diffusion_dtype),
            arg_name="--pipeline.diffusion-model",
        )
        self.text_emb = self.guidance.encode_prompt([config.prompt])
        self.source_emb = self.guidance.encode_prompt([""])
        asynchronous = config.asynchronous
        if asynchronous is None:
            asynchronous = self.diffusion_device != torch.device(device)
        self.asynchronous = bool(asynchronous)
        if self.asynchronous:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csd-diffusion")
        self.paused = False
        # Live controls in the viewer's web UI.
        self.viewer_prompt = ViewerText("CSD prompt", config.prompt, cb_hook=self._on_prompt, hint="Edit instruction")
        self.viewer_guidance = ViewerNumber("Text guidance", config.guidance_scale, cb_hook=self._on_setting)
        self.viewer_image_guidance = ViewerNumber("Image guidance", config.image_guidance_scale, cb_hook=self._on_setting)
        self.viewer_views = ViewerNumber("Views (N)", config.num_views, cb_hook=self._on_setting)
        self.viewer_mode = ViewerDropdown("Mode", config.mode, ["dataset", "distill"], cb_hook=self._on_setting)
        self.viewer_pause = ViewerCheckbox("Pause editing", False, cb_hook=self._on_setting)
        self.last_update_seconds: Optional[float] = None
        self.viewer_status = ViewerText("CSD status", self.status_text(), disabled=True,
                                        hint="Read-only: current prompt, updates done, last update's wall time")

    def status_text(self) -> str:
        """One line for the viewer's read-only "CSD status" element."""
        last = "-" if self.last_update_seconds is None else f"{self.last_update_seconds:.2f} s"
        return f"prompt: {self.config.prompt} | updates: {len(self.edited_views)} | last update: {last}"

    def _refresh_status(self) -> None:
        if hasattr(self, "viewer_status"):
            self.viewer_status.value = self.status_text()

    # ------------------------------------------------------------------ viewer callbacks
    def _on_prompt(self, element) -> None:
        self.set_prompt(str(element.value))

    def _on_setting(self, _element=None) -> None:
        self.config.guidance_scale = float(self.viewer_guidance.value)
        self.config.image_guidance_scale = float(self.viewer_image_guidance.value)
        self.config.num_views = max(1, int(self.viewer_views.value))
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

    # ------------------------------------------------------------------ training
    def get_train_loss_dict(self, step: int):
        due = self.guidance is not None and not self.paused and step % self.config.edit_rate == 0
        if due and self.config.mode == "dataset":
            start = time.perf_counter()
            self._dataset_update(step)
            self.last_update_seconds = time.perf_counter() - start
            self._refresh_status()
        model_outputs, loss_dict, metrics_dict = super().get_train_loss_dict(step)
        if "rgb_loss" in loss_dict:
            loss_dict["rgb_loss"] = loss_dict["rgb_loss"] * self.config.photometric_loss_mult
        if due and self.config.mode == "distill":
            start = time.perf_counter()
            loss_dict["csd_loss"] = self._distill_loss()
            self.last_update_seconds = time.perf_counter() - start
            self._refresh_status()
        return model_outputs, loss_dict, metrics_dict

    def _generator(self, update: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + update)

    def select_views(self, update: int) -> List[int]:
        n = min(self.config.num_views, len(self.images))
        gen = self._generator(update)
        if self.config.view_selection == "random":
            return torch.randperm(len(self.images), generator=gen)[:n].tolist()
        anchor = int(torch.randint(len(self.images), (1,), generator=gen))
        c2w = self.datamanager.train_dataset.cameras.camera_to_worlds
        return neighbouring_views(c2w, n, anchor)

    def _camera(self, index: int) -> Cameras:
        cams = self.datamanager.train_dataset.cameras
        camera = copy.deepcopy(cams[index : index + 1]).to(self.device)
        side = max(int(camera.width), int(camera.height))
        if side > self.config.render_max_side:
            camera.rescale_output_resolution(self.config.render_max_side / side)
        return camera

    def _edit_size(self, camera: Cameras) -> Tuple[int, int]:
        f = self.guidance.vae_scale_factor
        h, w = int(camera.height), int(camera.width)
        return max(f, round(h / f) * f), max(f, round(w / f) * f)

    def _original(self, index: int, size: Tuple[int, int], device) -> Tensor:
        """Original photo ``index`` resized to the edit size: ``[1, 3, h, w]``."""
        return _resize(self.images.original(index).permute(2, 0, 1)[None].to(device), size)

    def _embeddings(self, n: int) -> Tuple[Tensor, Tensor]:
        """Instruction and source-prompt embeddings for ``n`` particles."""
        return self.text_emb.float().expand(n, -1, -1), self.source_emb.float().expand(n, -1, -1)

    @torch.no_grad()
    def make_job(self, update: int) -> EditJob:
        """Render the views of update ``update`` (on the scene's device, no gradients)."""
        indices = self.select_views(update)
        renders, originals, sizes = [], [], []
        self.model.eval()
        for i in indices:
            camera = self._camera(i)
            size = self._edit_size(camera)
            rgb = self.model.get_outputs_for_camera(camera)["rgb"]
            renders.append(_resize(rgb.permute(2, 0, 1)[None], size))
            originals.append(self._original(i, size, rgb.device))
            sizes.append(tuple(self.images.originals[i].shape[:2]))
        self.model.train()
        return EditJob(update, indices, torch.cat(renders).cpu(), torch.cat(originals).cpu(), sizes)

    def run_job(self, job: EditJob) -> Tensor:
        """CSD-Edit the job's renders jointly; returns edited images ``[N, 3, h, w]`` in [0, 1] (CPU).

        A pure function of the job, the options and the update's seed: the same on any thread or device."""
        g = self.guidance
        cfg = self.config.edit_config()
        n = len(job.indices)
        source = g.encode_images(job.originals.to(g.device), max_batch=cfg.max_batch).float()
        target = g.encode_images(job.renders.to(g.device), max_batch=cfg.max_batch).float()
        with torch.no_grad():
            optimize_latents(g, target, source, *self._embeddings(n), cfg, generator=self._generator(job.update))
        return g.decode_latents(target, max_batch=cfg.max_batch).cpu()

    def apply_job(self, job: EditJob, edited: Tensor) -> None:
        """Write edited views back into the training set at full resolution."""
        for i, img, (h, w) in zip(job.indices, edited, job.sizes):
            self.images.set(i, _resize(img[None], (h, w))[0].permute(1, 2, 0))
        self.edited_views.append(list(job.indices))

    def _dataset_update(self, step: int) -> None:
        job = self.make_job(self.updates)
        self.updates += 1
        if not self.asynchronous:
            self.apply_job(job, self.run_job(job))
            return
        if self._pending is not None:  # the previous update's diffusion ran while the scene trained
            self.apply_job(*self._pending.result())
        self._pending = self._executor.submit(lambda j=job: (j, self.run_job(j)))

    def finish_pending(self) -> None:
        """Wait for and apply an in-flight asynchronous update (e.g. before saving)."""
        if self._pending is not None:
            self.apply_job(*self._pending.result())
            self._pending = None

    def _render_with_grad(self, camera: Cameras, index: int) -> Tensor:
        """Render training view ``index`` through ``camera`` (its downscaled copy) with gradients: ``[3, h, w]``."""
        if isinstance(self.model, SplatfactoModel):  # rasterises whole cameras
            rgb = self.model.get_outputs(camera)["rgb"]
            return rgb[0].permute(2, 0, 1) if rgb.ndim == 4 else rgb.permute(2, 0, 1)
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        rays.camera_indices = torch.full_like(rays.camera_indices, index)
        h, w = rays.shape
        rgb = self.model(rays.flatten())["rgb"]
        return rgb.reshape(h, w, 3).permute(2, 0, 1)

    def _distill_loss(self) -> Tensor:
        """``mult · ½‖z − sg(z − g)‖² / N`` over the latents ``z`` of N views rendered with gradients."""
        g = self.guidance
        update = self.updates
        self.updates += 1
        indices = self.select_views(update)
        n = len(indices)
        renders, originals = [], []
        for i in indices:
            camera = self._camera(i)
            size = self._edit_size(camera)
            rgb = self._render_with_grad(camera, i)
            renders.append(_resize(rgb[None], size))
            originals.append(self._original(i, size, rgb.device))
        latents = g.encode_images(torch.cat(renders).to(g.device), requires_grad=True).float()
        source = g.encode_images(torch.cat(originals).to(g.device)).float()
        cfg = self.config.edit_config()
        step = csd_edit_step(g, latents.detach(), source, *self._embeddings(n), cfg,
                             generator=self._generator(update))
        target = (latents - step.grad.float()).detach()
        self.edited_views.append(indices)
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / n
        return (self.config.distill_loss_mult * loss).to(self.device)


def _resize(images: Tensor, size: Tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images.float()
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
