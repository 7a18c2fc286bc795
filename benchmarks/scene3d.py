"""3D: time per training iteration, time per edited view and peak memory of ``csd-edit`` per update kind, the
paper schedule's whole-scene edit time, and the asynchronous diffusion path against taking turns.

Everything runs ``ns-train``'s own trainer (:func:`csd_nerfstudio.benchmark.train_measured`) on a scene made on
the fly (:func:`csd_nerfstudio.scenes.write_textured_scene`), with an InstructPix2Pix written by
``save_pretrained`` and read back through the ``from_pretrained`` that users run (``--pipeline.diffusion-model
DIR``). ``--model full``: ``csd-edit-small`` (nerfacto, float16 diffusion) with the random-weight SD 1.5-shaped
model of :mod:`benchmarks.models` on 512² views; ``--model tiny``: ``csd-edit-tiny`` with the tiny random model
on 32² views (the CPU dry run).

Arms, one after another in this process (CUDA peak memory is reset before each arm's training, after its setup,
so it counts the models' weights and what the arm allocates; freed memory of earlier arms is not counted):

- ``no-edits``: pretraining steps only (the floor).
- ``csd``: dataset updates of N = edit.batch views every edit-rate steps (csd-edit's default update).
- ``in2n``: Instruct-NeRF2NeRF's update (one view, DDIM) every edit-rate steps.
- ``distill``: the CSD gradient backpropagated into the scene every edit-rate steps.
- ``csd-async``: ``csd`` with the diffusion model on ``--device`` "again" (``cuda:0`` twice on one GPU) and
  ``--pipeline.asynchronous True``: the update runs in a background thread while training goes on. On one GPU
  this measures how much of an update hides behind training steps (both share the GPU's streams and Python's
  GIL), not a second GPU's speed-up.
- ``paper-update``: one update of the paper's 3D schedule (16 random views, csd-edit-paper's settings).
- ``joint``: one round of the joint schedule at the first step (every training view edited together: their
  renders, the CSD-Edit run in ``joint.max_batch`` UNet chunks, the decode and the write-back), then training.

Whole-scene edit time (pretrain excluded, ``EDIT_ITERATIONS`` steps) is estimated from these parts:
paper schedule = steps × s/iteration(no-edits) + updates × s(paper-update), with one update every
``PAPER_EDIT_RATE`` steps; csd-edit's default = steps × s/iteration(csd) (its updates run inside the steps);
csd-edit-fast's joint schedule = rounds × s(joint round) + rounds × fit steps × s/iteration(no-edits), with
csd-edit-fast's rounds and fit steps (a later round renders and edits the same views as the first).

    python -m benchmarks.scene3d --model full --device cuda --json OUT/scene3d.json
    python -m benchmarks.scene3d --model tiny --device cpu --iterations 2 --views 6 --edit-rate 1 --warmup 0 \
        --set edit.steps=2 in2n-ddim-steps=2 --json OUT/scene3d.json      # gpu.sh's CPU dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .models import build_components, machine, write_json

METHOD = {"full": "csd-edit-small", "tiny": "csd-edit-tiny"}
"""The ns-train method each model runs under by default (``--method`` picks another, e.g. csd-edit-splat where
gsplat builds: its CUDA kernels compile on first use)."""
IMAGE = {"full": 512, "tiny": 32}
"""Scene image side per model: 512² (Stable Diffusion's size, the issue's) or 32² for the tiny model (16² latents,
as in the tests)."""
ARMS = ("no-edits", "joint", "csd", "in2n", "distill", "csd-async", "paper-update")
"""Run in this order; gpu.sh's time limit cuts the last ones first (joint, csd-edit-fast's schedule, comes early)."""


def prepare(work: Path, model: str, views: int, seed: int = 0) -> Dict[str, Path]:
    """``work/scene`` (nerfstudio format, ``IMAGE[model]`` px) and ``work/model`` (diffusers layout, safetensors;
    float16 for the full model, csd-edit-small's diffusion dtype). Existing complete folders are reused."""
    from csd2d.io import atomic_dir
    from csd2d.tiny.components import save_components
    from csd_nerfstudio.scenes import write_textured_scene

    work.mkdir(parents=True, exist_ok=True)
    paths = {"scene": work / "scene", "model": work / f"model-{model}"}
    if not (paths["scene"] / "transforms.json").exists():
        with atomic_dir(paths["scene"]) as tmp:
            write_textured_scene(tmp, views=views, size=IMAGE[model], seed=seed)
    if not (paths["model"] / "model_index.json").exists():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):  # random init on the GPU where there is one: seconds instead of a minute
            components = build_components(model, seed)
        dtype = torch.float16 if model == "full" else torch.float32
        for name in ("unet", "vae", "text_encoder"):
            components[name] = components[name].to("cpu", dtype)
        with atomic_dir(paths["model"]) as tmp:
            save_components(components, tmp)
    return paths


def arm_settings(arm: str, model_dir: Path, device: str, views: int,
                 overrides: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Pipeline settings (``method_config``'s) of one arm; ``overrides`` (``--set``) apply to every arm under
    the arm's own."""
    from csd_nerfstudio.config import PAPER_EDIT_RATE, PAPER_VIEWS

    base: Dict[str, object] = {**(overrides or {}), "diffusion_model": str(model_dir), "pretrain_steps": 0}
    return {
        "no-edits": {**base, "pretrain_steps": 10**9},
        "csd": {**base, "update": "csd"},
        "in2n": {**base, "update": "in2n"},
        "distill": {**base, "mode": "distill"},
        # the scene's own device named again (cuda:0 twice on one GPU), with the background thread forced on
        "csd-async": {**base, "update": "csd", "diffusion_device": "cuda:0" if device == "cuda" else device,
                      "asynchronous": True},
        "paper-update": {**base, "update": "csd", "edit_rate": PAPER_EDIT_RATE, "view_selection": "random",
                         "edit.batch": min(PAPER_VIEWS, views)},
        "joint": {**base, "update": "csd", "schedule": "joint", "joint.rounds": 1},
    }[arm]


def run_arm(model: str, arm: str, scene: Path, model_dir: Path, device: str, iterations: int, views: int,
            edit_rate: Optional[int], out: Path, overrides: Optional[Dict[str, object]] = None,
            method: Optional[str] = None) -> Dict[str, float]:
    """Train one arm: seconds per iteration and per edited view, updates, views edited, peak memory."""
    from csd_nerfstudio.benchmark import train_row
    from csd_nerfstudio.config import method_config

    settings = arm_settings(arm, model_dir, device, views, overrides)
    if edit_rate is not None and arm != "paper-update":
        settings["edit_rate"] = edit_rate
    iterations = 1 if arm == "paper-update" else iterations
    if arm == "joint":
        settings["joint.fit_steps"] = iterations
    config = method_config(method or METHOD[model], scene, out / arm, iterations, settings)
    config = dataclasses.replace(config, machine=dataclasses.replace(config.machine,
                                                                     device_type=torch.device(device).type))
    row = {"arm": arm, **train_row(config)}
    gc.collect()  # the arm's pipeline and models, before the next arm's peak is measured
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def estimates(rows: Dict[str, dict]) -> Dict[str, float]:
    """Whole-scene edit seconds (pretrain excluded) from the measured parts; see the module docstring."""
    from csd_nerfstudio.config import EDIT_ITERATIONS, PAPER_EDIT_RATE

    out: Dict[str, float] = {"edit_iterations": EDIT_ITERATIONS}
    if "no-edits" in rows and "paper-update" in rows:
        updates = math.ceil(EDIT_ITERATIONS / PAPER_EDIT_RATE)
        out["paper_updates"] = updates
        out["paper_schedule_s"] = (EDIT_ITERATIONS * rows["no-edits"]["s_per_iteration"]
                                   + updates * rows["paper-update"]["update_s"])
    for arm in ("csd", "in2n", "csd-async"):
        if arm in rows:
            out[f"{arm}_default_schedule_s"] = EDIT_ITERATIONS * rows[arm]["s_per_iteration"]
    if "no-edits" in rows and "joint" in rows:
        from csd_nerfstudio.config import csd_edit_fast

        joint = csd_edit_fast.config.pipeline.joint
        out["joint_rounds"], out["joint_fit_steps"] = joint.rounds, joint.fit_steps
        out["joint_views"] = rows["joint"]["views_edited"]
        out["joint_round_s"] = rows["joint"]["update_s"]
        out["joint_round_render_s"] = rows["joint"].get("round_render_s", float("nan"))
        out["joint_round_edit_s"] = rows["joint"].get("round_edit_s", float("nan"))
        out["joint_schedule_s"] = joint.rounds * (rows["joint"]["update_s"]
                                                  + joint.fit_steps * rows["no-edits"]["s_per_iteration"])
    if "csd" in rows and "csd-async" in rows:
        out["async_speedup"] = rows["csd"]["s_per_iteration"] / rows["csd-async"]["s_per_iteration"]
    return out


def run(model: str, device: str, arms: Sequence[str], iterations: int, views: int, edit_rate: Optional[int],
        warmup: int, work: Optional[Path], json_path: Optional[str],
        overrides: Optional[Dict[str, object]] = None, method: Optional[str] = None) -> dict:
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="csd_scene3d_")) if own else work
    try:
        start = time.perf_counter()
        paths = prepare(work, model, views)
        result = dict(benchmark="scene3d", model=model, method=method or METHOD[model], image=IMAGE[model],
                      views=views, device=device, iterations=iterations, overrides=dict(overrides or {}),
                      machine=machine(), prepare_s=time.perf_counter() - start, rows={}, estimates={})
        if warmup:  # CUDA context, cuDNN selection, first UNet call: kept out of the first arm's time
            run_arm(model, "csd", paths["scene"], paths["model"], device, warmup, views, edit_rate, work / "runs",
                    overrides, method)
        for arm in arms:
            row = run_arm(model, arm, paths["scene"], paths["model"], device, iterations, views, edit_rate,
                          work / "runs", overrides, method)
            result["rows"][arm] = row
            result["estimates"] = estimates(result["rows"])
            print_row(row)
            write_json(json_path, result)  # after every arm: a run stopped by its time limit keeps what it did
        return result
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def print_row(r: dict) -> None:
    mem = r.get("cuda_max_allocated_mib", r["peak_rss_mib"])
    kind = "CUDA max allocated" if "cuda_max_allocated_mib" in r else "peak RSS"
    print(f"{r['arm']:<13} {r['s_per_iteration']:8.3f} s/it  {r['s_per_edited_view']:8.3f} s/edited view  "
          f"{r['views_edited']:4d} views in {r['updates']:3d} updates (N={r['batch']})  {mem:9.0f} MiB {kind}",
          flush=True)


def print_estimates(e: Dict[str, float]) -> None:
    for k, v in e.items():
        print(f"{k:<32} {v:10.2f}" + (f"  ({v / 60:.1f} min)" if k.endswith("_s") else ""))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(METHOD), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--method", default=None, help="ns-train method (default: csd-edit-small for full, "
                                                  "csd-edit-tiny for tiny; csd-edit-splat needs CUDA and gsplat)")
    p.add_argument("--iterations", type=int, default=60, help="training steps per arm (paper-update: 1)")
    p.add_argument("--views", type=int, default=20, help="cameras of the generated scene")
    p.add_argument("--edit-rate", type=int, default=None, help="steps between updates (default: the method's)")
    p.add_argument("--warmup", type=int, default=11, help="steps of an unreported csd run first (0: none)")
    p.add_argument("--work", type=Path, default=None, help="keep the scene and model here (default: a temp dir)")
    p.add_argument("--prepare-only", action="store_true", help="write the scene and model into --work and stop")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="pipeline settings for every arm, e.g. edit.max-batch=6 render-chunk=32768")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from csd_nerfstudio.evaluate import parse_overrides

    overrides = parse_overrides(a.set)
    if a.prepare_only:
        if a.work is None:
            p.error("--prepare-only: expected --work DIR to keep the scene and model in, got none")
        return {k: str(v) for k, v in prepare(a.work, a.model, a.views).items()}
    result = run(a.model, a.device, a.arms, a.iterations, a.views, a.edit_rate, a.warmup, a.work, a.json, overrides,
                 a.method)
    print_estimates(result["estimates"])
    return result


if __name__ == "__main__":
    main()
