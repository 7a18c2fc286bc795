"""Seed sweep of CSD against independent editing: ``python -m csd2d.evaluate``.

Runs :func:`csd2d.compare.compare_panorama` and :func:`csd2d.compare.compare_video` for every random-outcome
instruction and seed, on the demo inputs and optionally on extra wide photos (e.g. ``../shared/data/images``,
downscaled to the demo's height), and prints per case the CSD/baseline ratios and in how many seeds CSD was
more consistent. Writes everything to a JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import tyro
from PIL import Image

from .compare import PANORAMA_METRICS, VIDEO_METRICS, compare_panorama, compare_video, raw_key
from .demo import DemoConfig, demo_panorama, demo_video
from .editor import CSDEditor
from .guidance import EMBEDDED_MODEL

__all__ = ["EvalConfig", "evaluate"]


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


def _downscale(path: Path, height: int) -> Image.Image:
    with Image.open(path) as img:
        img = img.convert("RGB")
        return img.resize((round(img.width * height / img.height), height), Image.LANCZOS)


def evaluate(editor: CSDEditor, cfg: EvalConfig) -> Dict:
    d = cfg.demo
    panoramas = {"demo": demo_panorama(d.panorama_height)}
    panoramas.update({Path(p).name: _downscale(Path(p), d.panorama_height) for p in cfg.images})
    frames = demo_video(d.video_frames, d.video_size, d.video_shift)
    results: Dict = {"panorama": {}, "video": {}}
    for instruction in d.instructions:
        for name, image in panoramas.items():
            runs = [compare_panorama(editor, image, instruction, d.configs_for(instruction, s)[0],
                                     csd_lr_scale=d.csd_lr_scale, match_strength=d.match_strength)[0]
                    for s in cfg.seeds]
            results["panorama"][f"{name} | {instruction}"] = runs
        if cfg.video:
            runs = [compare_video(editor, frames, instruction, d.configs_for(instruction, s)[1], d.video_shift,
                                  csd_lr_scale=d.csd_lr_scale, match_strength=d.match_strength)[0]
                    for s in cfg.seeds]
            results["video"][f"demo | {instruction}"] = runs
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


def main(cfg: EvalConfig) -> Dict:
    editor = CSDEditor.from_pretrained(cfg.model, arg_name="--model")
    results = evaluate(editor, cfg)
    cfg.output.write_text(json.dumps(results, indent=1))
    print("\n".join(summary_rows(results)))
    return results


if __name__ == "__main__":
    main(tyro.cli(EvalConfig))
