"""Speed and memory of the 3D methods on a scene; prints a table and writes JSON.

::

    python -m csd_nerfstudio.benchmark speed --data SCENE --output speed.json
    python -m csd_nerfstudio.benchmark profile --data SCENE --output profile.json
    python -m csd_nerfstudio.benchmark distill-memory --data SCENE --patch-size 32 --output mem.json

``speed`` trains each arm for ``--iterations`` steps and reports wall seconds per iteration (setup excluded):
``no-edits`` (pretraining only), ``csd`` and ``in2n`` (editing from step 0). ``profile`` times the parts of one
dataset update. ``distill-memory`` reports the peak resident memory of a few distill steps (run it once per
patch size: the peak is per process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Literal, Optional

import numpy as np
import torch
import tyro

from csd2d.io import write_text_atomic

__all__ = ["tiny_config", "train_measured", "train_row", "peak_memory", "speed", "profile_update", "distill_memory"]


def tiny_config(data: Path, output: Path, iterations: int, edit: Optional[Dict] = None, **pipeline):
    """csd-edit-tiny on ``data`` for ``iterations`` steps, no evaluation, one checkpoint at the end."""
    from .config import method_config

    settings = {**pipeline, **{f"edit.{k}": v for k, v in (edit or {}).items()}}
    return method_config("csd-edit-tiny", data, output, iterations, settings)


def train_measured(config, before_train: Optional[Callable] = None):
    """Set up and train ``config`` in this process (no training with ``max_num_iterations`` 0);
    ``before_train(pipeline)`` runs once set up. Returns the pipeline (its update thread stopped) and
    ``{"seconds", "peak_rss_mib"[, "cuda_max_allocated_mib"]}``: training's wall time and peak memory.

    A run is a function of ``config.machine.seed`` on a CPU (our measurement: csd-edit-tiny, 12-view scene at
    64 px, two runs of 100 steps from scratch rendered 14.5 of 255 apart on average before, bit-identical after):

    - Python's, numpy's and torch's RNGs are seeded from it first, as ns-train's ``train_loop`` seeds them:
      nerfstudio's CacheDataloader caches the training images in the order of Python's ``random.sample``, and the
      pixel sampler's draws index that order, so an unseeded run trains on other rays.
    - On a CPU, torch's deterministic algorithms are on while it trains (restored after): the backward of
      nerfacto's hash-grid lookup (``hash_table[index]``, an accumulating ``index_put_``) adds with atomics on
      more than one thread, in a different order from run to run (two threads: weights 2e-1 apart after 100
      steps, renders 0.31 of 255). One thread adds in order anyway. The ordered version cost nothing measurable
      (that backward at csd-edit-tiny's batch on two threads: 82.8 ms, against 81.5 ms with atomics)."""
    from nerfstudio.engine.trainer import Trainer

    random.seed(config.machine.seed)
    np.random.seed(config.machine.seed)
    torch.manual_seed(config.machine.seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if config.machine.device_type == "cpu" and not was_deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op with no such version warns, never fails
    try:
        trainer: Trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        if before_train is not None:
            before_train(trainer.pipeline)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if config.max_num_iterations > 0:
            trainer.train()
        seconds = time.perf_counter() - start
        trainer.pipeline.close()
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
    return trainer.pipeline, {"seconds": seconds, **peak_memory()}


def train_row(config) -> Dict[str, float]:
    """Train ``config`` in this process: wall seconds per iteration, updates and views edited, update seconds
    (in all and per edited view), N and the edit rate, peak memory."""
    pipe, cost = train_measured(config)
    views = sum(len(v) for v in pipe.edited_views)
    return {"iterations": config.max_num_iterations,
            "s_per_iteration": cost.pop("seconds") / config.max_num_iterations, "updates": len(pipe.edited_views),
            "views_edited": views, "update_s": pipe.update_seconds,
            "s_per_edited_view": pipe.update_seconds / views if views else float("nan"),
            "batch": pipe.config.edit.batch, "edit_rate": pipe.config.edit_rate, **_round_stages(pipe), **cost}


def _round_stages(pipe) -> Dict[str, float]:
    """A joint schedule's stages summed over its rounds: the views' renders and the edit (CSD, VAE, write-back)."""
    if not pipe.round_seconds:
        return {}
    return {"round_render_s": sum(r["render"] for r in pipe.round_seconds),
            "round_edit_s": sum(r["edit"] for r in pipe.round_seconds)}


ARMS = {"no-edits": dict(pretrain_steps=10**9), "csd": dict(pretrain_steps=0, update="csd"),
        "in2n": dict(pretrain_steps=0, update="in2n"), "distill": dict(pretrain_steps=0, mode="distill")}


def speed(data: Path, iterations: int, arms: List[str]) -> Dict[str, Dict[str, float]]:
    """csd-edit-tiny per arm: seconds per iteration, seconds per edited view and peak memory. With several arms
    each runs in its own process, so that each peak is its own."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            if len(arms) == 1:
                config = tiny_config(data, Path(tmp) / arm, iterations, **ARMS[arm])
                config.set_timestamp()
                out[arm] = train_row(config)
                continue
            result = Path(tmp) / f"{arm}.json"
            subprocess.run([sys.executable, "-m", "csd_nerfstudio.benchmark", "speed", "--data", str(data),
                            "--iterations", str(iterations), "--arms", arm, "--output", str(result)], check=True,
                           stdout=subprocess.DEVNULL)
            out[arm] = json.loads(result.read_text())["result"][arm]
    return out


@contextlib.contextmanager
def _timed(obj, name: str, totals: Dict[str, float], key: str) -> Iterator[None]:
    """Accumulate the wall time of ``obj.name(...)`` calls into ``totals[key]``."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        setattr(obj, name, original)


def profile_update(data: Path, update: Literal["csd", "in2n"], repeats: int = 3) -> Dict[str, float]:
    """Mean seconds of the parts of one dataset update of csd-edit-tiny (after one warm-up update)."""
    import csd2d.csd as csd_module

    from . import pipeline as pipeline_module

    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(data, Path(tmp), 1, pretrain_steps=0, update=update)
        pipe = cfg.pipeline.setup(device="cpu", test_mode="val")
        g = pipe.guidance
        pipe.apply_job(pipe.make_job(0), pipe.run_job(pipe.make_job(0)))  # warm-up
        totals: Dict[str, float] = defaultdict(float)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_timed(pipeline_module, "render_view", totals, "render"))
            stack.enter_context(_timed(g.vae, "encode", totals, "vae encode"))
            stack.enter_context(_timed(g.vae, "decode", totals, "vae decode"))
            stack.enter_context(_timed(g.unet, "forward", totals, "unet"))
            stack.enter_context(_timed(csd_module, "csd_gradient", totals, "kernel"))
            stack.enter_context(_timed(pipe, "apply_job", totals, "write-back"))
            for k in range(repeats):
                start = time.perf_counter()
                pipe._dataset_update(step=k)
                totals["total"] += time.perf_counter() - start
        out = {k: v / repeats for k, v in totals.items()}
        out["other"] = out["total"] - sum(v for k, v in out.items() if k != "total")
        return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def peak_memory() -> Dict[str, float]:
    """This process's peak resident memory (MiB) and, on a GPU, CUDA's max allocated since its last reset."""
    out = {"peak_rss_mib": _peak_rss_mb()}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def distill_memory(data: Path, patch_size: Optional[int], steps: int, method: str) -> Dict[str, float]:
    """Peak resident memory (MiB) of this process after ``steps`` distill steps, and the seconds per step."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(data, Path(tmp), 1, pretrain_steps=0, mode="distill", patch_size=patch_size,
                          edit_rate=1)
        if method == "csd-edit":  # the full nerfacto of csd-edit (the 8 GB case of the issue)
            from .config import csd_edit

            full = csd_edit.config.pipeline.model
            cfg.pipeline.model = dataclasses.replace(full, lpips=False)
        pipe = cfg.pipeline.setup(device="cpu", test_mode="val")
        before = _peak_rss_mb()
        start = time.perf_counter()
        for step in range(steps):
            _, losses, _ = pipe.get_train_loss_dict(step)
            sum(losses.values()).backward()
            pipe.model.zero_grad(set_to_none=True)
        seconds = (time.perf_counter() - start) / steps
        return {"peak_rss_mib": _peak_rss_mb(), "rss_before_steps_mib": before, "seconds_per_step": seconds}


@dataclasses.dataclass
class Args:
    """Benchmark csd-edit-tiny on a scene (nerfstudio format, e.g. made by csd_nerfstudio.scenes)."""

    task: tyro.conf.Positional[Literal["speed", "profile", "distill-memory"]]
    data: Path
    """The scene folder (transforms.json + images)."""
    output: Optional[Path] = None
    """Write the results as JSON here."""
    iterations: int = 100
    """speed: training steps per arm."""
    arms: List[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    """speed: arms to run (no-edits, csd, in2n, distill)."""
    update: Literal["csd", "in2n"] = "csd"
    """profile: which dataset update."""
    patch_size: Optional[int] = None
    """distill-memory: patch side in pixels (None: whole views)."""
    steps: int = 3
    """distill-memory: distill steps."""
    method: Literal["csd-edit-tiny", "csd-edit"] = "csd-edit-tiny"
    """distill-memory: whose nerfacto to use."""


def main(args: Args) -> Dict:
    torch.manual_seed(0)
    if args.task == "speed":
        result = speed(args.data, args.iterations, args.arms)
        rows = [f"{arm:10s} {r['s_per_iteration']:8.3f} s/iteration {r['s_per_edited_view']:8.3f} s/edited view "
                f"{r['peak_rss_mib']:8.0f} MiB peak RSS" for arm, r in result.items()]
    elif args.task == "profile":
        result = profile_update(args.data, args.update)
        rows = [f"{part:12s} {s:8.3f} s ({100 * s / result['total']:5.1f} %)" for part, s in result.items()]
    else:
        result = distill_memory(args.data, args.patch_size, args.steps, args.method)
        rows = [f"{k:22s} {v:10.2f}" for k, v in result.items()]
    result = {"task": args.task, "args": {k: str(v) for k, v in dataclasses.asdict(args).items()},
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "result": result}
    print("\n".join(rows))
    if args.output is not None:
        write_text_atomic(args.output, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
    sys.exit(0)
