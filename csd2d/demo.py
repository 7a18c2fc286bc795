"""``csd2d demo``: CSD against independent editing on a panorama and a video, with the embedded model.

Inputs are made from scikit-image's bundled photos that the embedded model never saw in training
(``coffee`` and ``chelsea``): a wide panorama of the two side by side, and a camera pan across ``chelsea``.
For each random-outcome instruction both are edited with CSD and with the independent baseline
(``coupling=False``, same code path, same seed), and the metrics of :mod:`csd2d.metrics` are reported.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image

from .config import PanoramaConfig, VideoConfig
from .editor import CSDEditor
from .compare import PANORAMA_METRICS, STRENGTH_TOLERANCE, VIDEO_METRICS, compare_panorama, compare_video, raw_key
from .io import atomic_dir, refuse_existing, save_image
from .sheets import write_contact_sheet, write_side_by_side_gif
from .tiny.edits import RANDOM_EDITS

__all__ = ["DemoConfig", "demo_panorama", "demo_video", "report_markdown", "run_demo"]


_DEMO_EDIT = dict(steps=20, lr=0.5, guidance_scale=3.0, t_max=900, vae_tile=0)
"""Editing settings both demo inputs share, where they differ from the configs' defaults (tuned for the embedded
model: README, "Two commands"). Image guidance is set per instruction below."""


_DEMO_IMAGE_GUIDANCE = {"recolor it": (2.0, 2.0), "make it night": (5.0, 4.0)}
"""Image guidance ``(panorama, video)`` per instruction: the embedded model needs a different s_I per edit, as
InstructPix2Pix does. Our measurement over seeds 0–4 (README, "Embedded model: design notes")."""


def _demo_pano_config() -> PanoramaConfig:
    return PanoramaConfig(window=16, stride=4, **_DEMO_EDIT)


def _demo_video_config() -> VideoConfig:
    return VideoConfig(batch=12, image_guidance_scale=5.0, **_DEMO_EDIT)


@dataclass
class DemoConfig:
    """The demo's inputs and editing settings (the embedded model works on 64 px windows)."""

    instructions: Tuple[str, ...] = RANDOM_EDITS
    """Instructions to compare (the random-outcome ones are where CSD should matter)."""
    panorama: PanoramaConfig = field(default_factory=_demo_pano_config)
    video: VideoConfig = field(default_factory=_demo_video_config)
    csd_lr_scale: float = 4.0
    """CSD's (starting) learning rate relative to the baseline's. ``csd_gradient`` averages with weight 1/N while
    the off-diagonal kernel weights are small, so at one learning rate CSD edits far less than independent
    editing; this factor brings the two to comparable edit strength (both strengths are reported)."""
    match_strength: bool = True
    """Search CSD's learning rate (starting from ``csd_lr_scale``) until its edit strength is within 10 % of the
    baseline's, so that consistency is compared at matched strength."""
    panorama_height: int = 64
    """Panorama height in pixels (each photo is resized to it)."""
    video_frames: int = 12
    video_size: int = 64
    """Video frame side in pixels."""
    video_shift: int = 2
    """Camera pan per frame in pixels."""
    seed: int = 0
    image_guidance: Dict[str, Tuple[float, float]] = field(default_factory=lambda: dict(_DEMO_IMAGE_GUIDANCE))
    """Image guidance scale s_I ``(panorama, video)`` per instruction (instructions not listed keep the panorama
    and video configs' own). As with InstructPix2Pix, s_I is set per edit: see :data:`_DEMO_IMAGE_GUIDANCE`."""

    def configs_for(self, instruction: str, seed: Optional[int] = None) -> Tuple[PanoramaConfig, VideoConfig]:
        """The panorama and video configs for ``instruction`` (its image guidance) and ``seed`` (default
        ``self.seed``)."""
        seed = self.seed if seed is None else seed
        pano, video = self.image_guidance.get(
            instruction, (self.panorama.image_guidance_scale, self.video.image_guidance_scale))
        return (dataclasses.replace(self.panorama, seed=seed, image_guidance_scale=pano),
                dataclasses.replace(self.video, seed=seed, image_guidance_scale=video))


def _skimage(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def demo_panorama(height: int = 96) -> Image.Image:
    """``coffee`` and ``chelsea`` side by side, each resized to ``height`` px."""
    parts = [_skimage(n) for n in ("coffee", "chelsea")]
    parts = [p.resize((round(p.width * height / p.height), height), Image.LANCZOS) for p in parts]
    out = Image.new("RGB", (sum(p.width for p in parts), height))
    x = 0
    for p in parts:
        out.paste(p, (x, 0))
        x += p.width
    return out


def demo_video(frames: int = 16, size: int = 64, shift: int = 2) -> List[Image.Image]:
    """A horizontal camera pan across ``chelsea``: frame ``t`` shows columns ``[t·shift, t·shift + size)``."""
    cat = _skimage("chelsea")
    width = size + shift * (frames - 1)
    height = max(size, round(cat.height * width / cat.width))
    cat = cat.resize((round(cat.width * height / cat.height), height), Image.LANCZOS)
    top = (cat.height - size) // 2
    return [cat.crop((t * shift, top, t * shift + size, top + size)) for t in range(frames)]


def run_demo(editor: CSDEditor, output: Path, config: DemoConfig = DemoConfig(), progress: bool = True,
             overwrite: bool = False, allow_foreign: bool = False) -> Dict:
    """Run the comparison, write images, ``report.json`` and ``report.md`` into ``output`` (atomically;
    ``allow_foreign``: replace a folder csd2d did not write, see :func:`csd2d.io.check_folder_output`)."""
    output = Path(output)
    refuse_existing(output, overwrite)
    report: Dict = {"model": "embedded", "seed": config.seed, "panorama": {}, "video": {}}
    start = time.time()
    with atomic_dir(output, allow_foreign=allow_foreign) as tmp:
        pano = demo_panorama(config.panorama_height)
        frames = demo_video(config.video_frames, config.video_size, config.video_shift)
        report["panorama_input"] = {"size": list(pano.size)}
        report["video_input"] = {"frames": len(frames), "size": config.video_size, "shift_px": config.video_shift}
        for instruction in config.instructions:
            slug = instruction.replace(" ", "_")
            pano_cfg, video_cfg = config.configs_for(instruction)
            entry, outs = compare_panorama(editor, pano, instruction, pano_cfg, progress, config.csd_lr_scale,
                                           config.match_strength)
            report["panorama"][instruction] = entry
            rows = {"input": [pano], "independent (baseline)": [outs["baseline"]], "CSD": [outs["csd"]]}
            write_contact_sheet(tmp / f"panorama_{slug}.png", rows)
            entry, vids = compare_video(editor, frames, instruction, video_cfg, config.video_shift, progress,
                                        config.csd_lr_scale, config.match_strength)
            report["video"][instruction] = entry
            columns = {"input": frames, "independent (baseline)": vids["baseline"], "CSD": vids["csd"]}
            sheets = write_side_by_side_gif(tmp / f"video_{slug}.gif", columns, fps=8.0)
            save_image(sheets[0], tmp / f"video_{slug}_first_frame.png")
        report["seconds"] = round(time.time() - start, 1)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(report_markdown(report))
    return report


def report_markdown(report: Dict) -> str:
    """A short human-readable table of ``report`` (lower inconsistency is better)."""
    lines = ["# CSD vs independent editing (embedded model)", "",
             "Lower inconsistency is better. Inconsistency is measured against the input's VAE round trip (what an "
             "edit that changes nothing outputs); the `raw` columns measure against the input itself, codec loss "
             "included, and `zero edit` is that loss alone. A comparison is fair when the edit strengths match "
             f"(within {STRENGTH_TOLERANCE:.0%}); CSD's learning rate is searched for that (its scale is listed).",
             "", "| input | instruction | metric | independent | CSD | CSD / independent | raw: independent | "
             "raw: CSD | raw: CSD / independent | raw: zero edit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, metrics in (("panorama", PANORAMA_METRICS), ("video", VIDEO_METRICS)):
        for instruction, entry in report[kind].items():
            b, c = entry["baseline"], entry["csd"]
            for m in metrics:
                raw = raw_key(m)
                lines.append(f"| {kind} | {instruction} | {m} | {b[m]:.4f} | {c[m]:.4f} | "
                             f"{c[m] / max(b[m], 1e-8):.2f} | {b[raw]:.4f} | {c[raw]:.4f} | "
                             f"{c[raw] / max(b[raw], 1e-8):.2f} | {entry['codec_floor'][m]:.4f} |")
            m = "edit_strength"
            lines.append(f"| {kind} | {instruction} | {m} | {b[m]:.4f} | {c[m]:.4f} | {c[m] / max(b[m], 1e-8):.2f} "
                         "| | | | |")
            lines.append(f"| {kind} | {instruction} | strength matched | | lr × {entry['csd_lr_scale']:.2f} | "
                         f"{'yes' if entry['matched_strength'] else 'no'} | | | | |")
    lines += ["", f"Total time: {report.get('seconds', 0)} s."]
    return "\n".join(lines) + "\n"
