"""Seed sweep of CSD against independent editing: ``python -m csd2d.evaluate``.

Runs :func:`csd2d.compare.compare_panorama` and :func:`csd2d.compare.compare_video` for every random-outcome
instruction and seed, on the demo inputs and optionally on extra wide photos (e.g. ``../shared/data/images``,
downscaled to the demo's height), and prints per case the CSD/baseline ratios and in how many seeds CSD was
more consistent. With ``align`` every case also runs CSD with aligned mixing (:data:`ALIGNED_ARMS`), and a
fast-pan clip (the demo video panning ``fast_pan_shift`` px per frame) joins the inputs under ``"fast_pan"``; a
second table compares aligned CSD with CSD. Writes everything to a JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import tyro
from PIL import Image

from .compare import PANORAMA_METRICS, VIDEO_METRICS, compare_panorama, compare_video, raw_key
from .demo import DemoConfig, demo_panorama, demo_video
from .editor import CSDEditor
from .guidance import EMBEDDED_MODEL

__all__ = ["ALIGNED_ARMS", "EvalConfig", "evaluate", "summary_rows", "aligned_rows"]

ALIGNED_ARMS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "panorama": {"csd_aligned": {"align": "offsets"}},
    "video": {"csd_aligned": {"align": "flow"}},
}
"""The aligned CSD arms per kind of input, named by the settings they change (strength-matched like CSD)."""


@dataclass
class EvalConfig:
    """Compare CSD with independent editing over seeds and inputs."""

    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds to run."""
    images: Tuple[Path, ...] = ()
    """Extra wide photos to edit as panoramas (downscaled to the demo's panorama height)."""
    output: Path = Path("csd-eval.json")
    """Where to write all numbers."""
    model: str = EMBEDDED_MODEL
    demo: DemoConfig = field(default_factory=DemoConfig)
    video: bool = True
    """Also run the video comparison."""
    align: bool = True
    """Also run CSD with aligned mixing (:data:`ALIGNED_ARMS`: flow for videos, window offsets for panoramas)."""
    fast_pan_shift: int = 12
    """Also edit a fast-pan clip: the demo video panning this many px per frame (0: not). The README's pan-speed
    probe: CSD's advantage shrinks at 8–16 px per frame, where frames overlap less."""


def _downscale(path: Path, height: int) -> Image.Image:
    with Image.open(path) as img:
        img = img.convert("RGB")
        return img.resize((round(img.width * height / img.height), height), Image.LANCZOS)


def evaluate(editor: CSDEditor, cfg: EvalConfig) -> Dict:
    d = cfg.demo
    panoramas = {"demo": demo_panorama(d.panorama_height)}
    panoramas.update({Path(p).name: _downscale(Path(p), d.panorama_height) for p in cfg.images})
    clips = {"video": ("demo", d.video_shift)}
    if cfg.fast_pan_shift:
        clips["fast_pan"] = (f"demo {cfg.fast_pan_shift} px", cfg.fast_pan_shift)
    arms = ALIGNED_ARMS if cfg.align else {}
    results: Dict = {"panorama": {}, "video": {}}
    for instruction in d.instructions:
        for name, image in panoramas.items():
            runs = [compare_panorama(editor, image, instruction, d.configs_for(instruction, s)[0],
                                     csd_lr_scale=d.csd_lr_scale, match_strength=d.match_strength,
                                     arms=arms.get("panorama"))[0]
                    for s in cfg.seeds]
            results["panorama"][f"{name} | {instruction}"] = runs
        if not cfg.video:
            continue
        for kind, (name, shift) in clips.items():
            frames = demo_video(d.video_frames, d.video_size, shift)
            runs = [compare_video(editor, frames, instruction, d.configs_for(instruction, s)[1], shift,
                                  csd_lr_scale=d.csd_lr_scale, match_strength=d.match_strength,
                                  arms=arms.get("video"))[0]
                    for s in cfg.seeds]
            results.setdefault(kind, {})[f"{name} | {instruction}"] = runs
    return results


def summary_rows(results: Dict) -> List[str]:
    """One markdown row per case and metric: CSD/baseline ratios over seeds (against the codec round trip, and
    the mean against the input itself as "raw"), how often CSD was better, the strength ratio and matching."""
    rows = ["| input | instruction | metric | CSD / baseline (mean) | min | max | CSD better | raw mean | "
            "strength ratio | matched |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, metrics in (("panorama", PANORAMA_METRICS), ("video", VIDEO_METRICS)):
        for case, runs in results[kind].items():
            name, instruction = case.split(" | ")
            for m in metrics:
                ratios = [r["ratio_csd_over_baseline"][m] for r in runs]
                raw = [r["ratio_csd_over_baseline"][raw_key(m)] for r in runs]
                strength = [r["ratio_csd_over_baseline"]["edit_strength"] for r in runs]
                better = sum(r["csd"][m] < r["baseline"][m] for r in runs)
                matched = sum(r["matched_strength"] for r in runs)
                rows.append(f"| {kind}: {name} | {instruction} | {m} | {sum(ratios) / len(ratios):.2f} | "
                            f"{min(ratios):.2f} | {max(ratios):.2f} | {better}/{len(runs)} | "
                            f"{sum(raw) / len(raw):.2f} | {sum(strength) / len(strength):.2f} | "
                            f"{matched}/{len(runs)} |")
    return rows


def aligned_rows(results: Dict) -> List[str]:
    """One markdown row per case and arm of :data:`ALIGNED_ARMS` on the primary metric (colour-map spread,
    temporal inconsistency; against the codec round trip): CSD / baseline, the aligned arm over the baseline and
    over CSD (mean, min, max over seeds), in how many seeds it beat CSD, and how many of its runs and CSD's matched
    the baseline's strength. Empty without aligned arms."""
    rows = ["| input | instruction | metric | arm | CSD / baseline | arm / baseline | arm / CSD (mean) | min | max | "
            "arm better | matched (arm, CSD) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, metric in (("panorama", PANORAMA_METRICS[0]), ("video", VIDEO_METRICS[0]),
                         ("fast_pan", VIDEO_METRICS[0])):
        for case, runs in results.get(kind, {}).items():
            name, instruction = case.split(" | ")
            for arm in runs[0].get("arms", {}):
                csd = [r["ratio_csd_over_baseline"][metric] for r in runs]
                over_base = [r["arms"][arm]["ratio_over_baseline"][metric] for r in runs]
                over_csd = [r["arms"][arm]["ratio_over_csd"][metric] for r in runs]
                better = sum(r[arm][metric] < r["csd"][metric] for r in runs)
                matched = sum(r["arms"][arm]["matched_strength"] for r in runs)
                csd_matched = sum(r["matched_strength"] for r in runs)
                rows.append(f"| {kind}: {name} | {instruction} | {metric} | {arm} | {_mean(csd):.2f} | "
                            f"{_mean(over_base):.2f} | {_mean(over_csd):.2f} | {min(over_csd):.2f} | "
                            f"{max(over_csd):.2f} | {better}/{len(runs)} | {matched}/{len(runs)}, "
                            f"{csd_matched}/{len(runs)} |")
    return rows if len(rows) > 2 else []


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def main(cfg: EvalConfig) -> Dict:
    editor = CSDEditor.from_pretrained(cfg.model, arg_name="--model")
    results = evaluate(editor, cfg)
    cfg.output.write_text(json.dumps(results, indent=1))
    print("\n".join(summary_rows(results)))
    aligned = aligned_rows(results)
    if aligned:
        print()
        print("\n".join(aligned))
    return results


if __name__ == "__main__":
    main(tyro.cli(EvalConfig))
