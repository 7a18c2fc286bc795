"""The whole joint edit (``--pipeline.schedule joint``, csd-edit-fast's schedule) timed stage by stage on one device.

One ``ns-train`` run (:func:`csd_nerfstudio.benchmark.train_measured`, nerfstudio's own Trainer) on a made scene
(:func:`csd_nerfstudio.scenes.write_textured_scene`) with an InstructPix2Pix written by ``save_pretrained`` and read
back through ``--pipeline.diffusion-model DIR`` (:func:`benchmarks.scene3d.prepare`):

- the base: ``--pretrain-steps`` steps of nerfacto from scratch on the photos. Its seconds are recorded and kept
  out of the edit's, as are the setup's (loading the scene, nerfacto and the diffusion model);
- then csd-edit-fast's joint schedule (its rounds and fit steps, read from :data:`csd_nerfstudio.config.csd_edit_fast`)
  on the settings of ``--model full``'s csd-edit-small (nerfacto, float16 diffusion, 512² views) or ``--model
  tiny``'s csd-edit-tiny (32² views, the CPU dry run): every round edits every training view together (CSD, VAE,
  write-back) and the scene trains ``fit_steps`` real training steps on the edits. The first round edits the
  photos and so renders nothing; each later one first renders every view, its start.

Stages, per round: the renders of every view and the joint CSD edit (the round's own clock,
:class:`csd_nerfstudio.joint.JointProgress`), the fit steps (from the end of the round to the next round, or to the
end of the last step); then the final save (checkpoint and ``OUTPUT/edited/``). The whole edit runs from the start
of the first round to the end of training; its stages are measured separately, so that their sum against the whole
(``unaccounted_s``) checks the split. On CUDA the clock is synchronised at each boundary. Peak memory: CUDA max
allocated from the first round on (per stage and in all) on a GPU; the process's peak RSS on a CPU (the setup's
included: RSS has no reset).

    python -m benchmarks.joint_edit --model full --device cuda --views 40 --json OUT/joint_edit.json
    python -m benchmarks.joint_edit --model tiny --device cpu --views 6 --pretrain-steps 2 \\
        --set edit.steps=2 joint.fit-steps=2 --json OUT/joint_edit.json      # gpu.sh's CPU dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .models import machine, write_json
from .scene3d import IMAGE, METHOD

VIEWS = 40
"""Training views edited together by default: issue 20's ">= 40 training views"."""
PRETRAIN_STEPS = 100
"""The base's nerfacto steps from scratch (ours: about 8 s at csd-edit-small's 0.084 s per step on an H200,
benchmarks/RESULTS.md §0). How well the base fits does not change what a round or a fit step costs: nerfacto
renders a fixed number of samples per ray."""
SCHEDULE_FROM = "csd-edit-fast"
"""The method whose joint schedule is timed (its rounds, fit steps and step normalisation)."""


def fast_settings() -> Dict[str, object]:
    """csd-edit-fast's schedule as pipeline settings, read from the method configs: ``schedule``, every
    ``joint.*`` field, and each other setting csd-edit-fast changes over csd-edit (``edit.normalization``)."""
    from csd_nerfstudio.config import csd_edit, csd_edit_fast

    fast, base = csd_edit_fast.config.pipeline, csd_edit.config.pipeline
    out: Dict[str, object] = {"schedule": fast.schedule}
    out.update({f"joint.{f.name}": getattr(fast.joint, f.name) for f in dataclasses.fields(fast.joint)})
    for f in dataclasses.fields(fast):
        mine, theirs = getattr(fast, f.name), getattr(base, f.name)
        if f.name in ("schedule", "joint") or mine == theirs:
            continue
        if dataclasses.is_dataclass(mine):
            out.update({f"{f.name}.{g.name}": getattr(mine, g.name) for g in dataclasses.fields(mine)
                        if getattr(mine, g.name) != getattr(theirs, g.name)})
        else:
            out[f.name] = mine
    return out


def cameras_for(views: int) -> int:
    """Cameras of a made scene whose nerfstudio split (``train_split_fraction`` of them, rounded up, train) leaves
    ``views`` training views: the fewest that do."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    fraction = NerfstudioDataParserConfig().train_split_fraction
    n = views
    while math.ceil(n * fraction) < views:
        n += 1
    return n


def _cameras(scene: Path) -> int:
    return len(json.loads((scene / "transforms.json").read_text())["frames"])


def prepare(work: Path, model: str, views: int, seed: int = 0) -> Dict[str, Path]:
    """The scene (``cameras_for(views)`` cameras at ``IMAGE[model]`` px) and the saved model, through
    :func:`benchmarks.scene3d.prepare` (so that scene3d with ``--views`` that many cameras and the same ``--work``
    shares them); when ``work/scene`` holds another number of cameras, the scene goes to ``work/scene-CAMERAS``."""
    from csd2d.io import atomic_dir
    from csd_nerfstudio.scenes import write_textured_scene

    from .scene3d import prepare as prepare_scene3d

    cameras = cameras_for(views)
    paths = prepare_scene3d(work, model, cameras, seed)
    if _cameras(paths["scene"]) != cameras:
        paths["scene"] = work / f"scene-{cameras}"
        if not (paths["scene"] / "transforms.json").exists():
            with atomic_dir(paths["scene"]) as tmp:
                write_textured_scene(tmp, views=cameras, size=IMAGE[model], seed=seed)
    return paths


class Timeline:
    """Boundaries of the joint edit inside one training run, from wrappers put on the pipeline before training:
    each round's start and end (``_joint_round``), the steps (``get_train_loss_dict``) and the end of the last step
    (the trainer's first ``finish_pending`` after it, at the start of its final save). ``on_change(self)`` runs at
    every boundary (gpu.sh's time limit keeps what was measured)."""

    def __init__(self, device: str, steps: int, on_change=lambda timeline: None) -> None:
        self.cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.steps = steps
        """The run's training steps (its max_num_iterations)."""
        self.on_change = on_change
        self.train_start: Optional[float] = None
        self.round_starts: List[float] = []
        self.round_ends: List[float] = []
        self.round_steps: List[int] = []
        self.steps_seen = 0
        self.step_counts: List[int] = []
        """Training steps from each round's step on (the round's step included: its training step is a fit step)."""
        self.steps_end: Optional[float] = None
        self.peaks: Dict[str, float] = {}
        """CUDA max allocated (MiB) per stage: ``round R`` and ``fit R`` (1-based), ``final save``."""
        self.pipe = None

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _peak(self, stage: str) -> None:
        if self.cuda:
            self.peaks[stage] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()

    def install(self, pipe) -> None:
        """``train_measured``'s ``before_train``: wrap the pipeline's methods (instance attributes)."""
        self.pipe = pipe
        joint_round, loss_dict, finish_pending = pipe._joint_round, pipe.get_train_loss_dict, pipe.finish_pending

        def timed_round(step: int) -> None:
            start = self.now()
            if self.round_starts:
                self._peak(f"fit {len(self.round_starts)}")
            elif self.cuda:
                torch.cuda.reset_peak_memory_stats()  # the edit's peak: from the first round on
            self.round_starts.append(start)
            self.round_steps.append(step)
            self.step_counts.append(0)
            joint_round(step)
            self.round_ends.append(self.now())
            self._peak(f"round {len(self.round_ends)}")
            self.on_change(self)

        def counted_step(step: int):
            out = loss_dict(step)  # a due round runs in here and opens its count (timed_round)
            self.steps_seen += 1
            if self.step_counts:
                self.step_counts[-1] += 1
            return out

        def end_of_steps() -> None:
            if self.steps_end is None and self.round_ends and self.steps_seen >= self.steps:
                self.steps_end = self.now()
                self._peak(f"fit {len(self.round_ends)}")
                self.on_change(self)
            finish_pending()

        pipe._joint_round, pipe.get_train_loss_dict, pipe.finish_pending = timed_round, counted_step, end_of_steps
        self.train_start = time.perf_counter()


def run(model: str, device: str, views: int, pretrain_steps: int, work: Optional[Path], json_path: Optional[str],
        overrides: Optional[Dict[str, object]] = None) -> dict:
    from csd_nerfstudio.benchmark import peak_memory, train_measured
    from csd_nerfstudio.config import method_config

    own = work is None
    work = Path(tempfile.mkdtemp(prefix="csd_joint_edit_")) if own else work
    try:
        start = time.perf_counter()
        paths = prepare(work, model, views)
        schedule = fast_settings()
        settings = {**schedule, **(overrides or {}), "diffusion_model": str(paths["model"]),
                    "pretrain_steps": pretrain_steps}
        config = method_config(METHOD[model], paths["scene"], work / "runs" / "joint-edit", 1, settings)
        joint, steps = config.pipeline.joint, config.pipeline.edit.steps
        iterations = pretrain_steps + joint.edit_steps  # csd-edit-fast's max_num_iterations
        config = dataclasses.replace(config, max_num_iterations=iterations, machine=dataclasses.replace(
            config.machine, device_type=torch.device(device).type))
        result = dict(benchmark="joint_edit", model=model, method=METHOD[model], schedule_from=SCHEDULE_FROM,
                      schedule=schedule, overrides=dict(overrides or {}), image=IMAGE[model], views=views,
                      cameras=_cameras(paths["scene"]), device=device, machine=machine(),
                      pretrain_steps=pretrain_steps, rounds=joint.rounds, fit_steps=joint.fit_steps, csd_steps=steps,
                      iterations=iterations, prepare_s=time.perf_counter() - start, complete=False)
        timeline = Timeline(device, iterations, on_change=lambda t: write_json(json_path, _fill(result, t)))
        setup_start = time.perf_counter()
        _, cost = train_measured(config, before_train=timeline.install)
        end = time.perf_counter()
        if timeline.cuda:
            timeline.peaks["final save"] = torch.cuda.max_memory_allocated() / 2**20
        result["setup_s"] = timeline.train_start - setup_start
        result["training_s"] = cost["seconds"]
        _fill(result, timeline, end)
        result["complete"] = len(timeline.round_ends) == joint.rounds and timeline.steps_end is not None
        result["peak"] = {"peak_rss_mib": peak_memory()["peak_rss_mib"]}
        if timeline.peaks:  # CUDA: the edit's, the max over its stages (each reset at its start)
            result["peak"]["cuda_max_allocated_mib"] = max(timeline.peaks.values())
            result["peak"]["stages_mib"] = dict(timeline.peaks)
        write_json(json_path, result)
        return result
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _fill(result: dict, t: Timeline, end: Optional[float] = None) -> dict:
    """Write what ``t`` has measured into ``result`` (rounds, stages, whole edit once ``end`` is known)."""
    pipe = t.pipe
    if not t.round_starts:
        return result
    result["pretrain_s"] = t.round_starts[0] - t.train_start
    rounds = []
    for r, (start, stop) in enumerate(zip(t.round_starts, t.round_ends)):
        done = r < len(pipe.round_seconds)  # a round given up (Ctrl-C, SIGTERM) wrote and timed nothing
        seconds = pipe.round_seconds[r] if done else {"render": None, "edit": None}
        fit_end = t.round_starts[r + 1] if r + 1 < len(t.round_starts) else t.steps_end
        fit_steps = t.step_counts[r] if r + 1 < len(t.round_starts) or t.steps_end is not None else None
        row = dict(round=r + 1, step=t.round_steps[r], views_edited=len(pipe.edited_views[r]) if done else 0,
                   render_s=seconds["render"], edit_s=seconds["edit"], round_s=stop - start,
                   fit_steps=fit_steps, fit_s=None if fit_end is None else fit_end - stop)
        row["s_per_fit_step"] = None if row["fit_s"] is None or not fit_steps else row["fit_s"] / fit_steps
        row["round_peak_mib"] = t.peaks.get(f"round {r + 1}")
        row["fit_peak_mib"] = t.peaks.get(f"fit {r + 1}")
        rounds.append(row)
    result["rounds_detail"] = rounds
    result["training_views"] = len(pipe.images)
    result["views_edited"] = [r["views_edited"] for r in rounds]
    if end is None or t.steps_end is None:
        return result
    stages = {"render_s": sum(r["render_s"] for r in rounds), "edit_s": sum(r["edit_s"] for r in rounds),
              "fit_s": sum(r["fit_s"] for r in rounds), "final_save_s": end - t.steps_end}
    result["stages"] = stages
    result["whole_edit_s"] = end - t.round_starts[0]
    result["stages_sum_s"] = sum(stages.values())
    result["unaccounted_s"] = result["whole_edit_s"] - result["stages_sum_s"]
    return result


def print_table(r: dict) -> None:
    gpu = r["machine"].get("gpu")
    print(f"joint edit: {r['method']} with {r['schedule_from']}'s schedule ({r['rounds']} rounds x {r['fit_steps']} "
          f"fit steps, {r['csd_steps']} CSD steps), {r['views']} training views at {r['image']}², {r['device']}"
          + (f" ({gpu})" if gpu else ""))
    print(f"excluded: setup {r.get('setup_s', float('nan')):.1f} s, base {r['pretrain_steps']} pretrain steps "
          f"{r.get('pretrain_s', float('nan')):.1f} s")
    print(f"{'round':>5} {'views':>5} {'render s':>9} {'edit s':>8} {'fit steps':>9} {'fit s':>8} {'s/step':>7} "
          f"{'peak MiB':>9}")
    for row in r.get("rounds_detail", []):
        peak = max((p for p in (row["round_peak_mib"], row["fit_peak_mib"]) if p is not None), default=None)
        print(f"{row['round']:>5} {row['views_edited']:>5} {row['render_s']:>9.2f} {row['edit_s']:>8.2f} "
              f"{row['fit_steps'] or 0:>9} {row['fit_s'] or float('nan'):>8.2f} "
              f"{row['s_per_fit_step'] or float('nan'):>7.3f} {'-' if peak is None else f'{peak:.0f}':>9}")
    if "whole_edit_s" not in r:
        print("whole edit: not finished")
        return
    s = r["stages"]
    mem = r["peak"].get("cuda_max_allocated_mib")
    mem_text = f"{mem / 1024:.2f} GiB CUDA max allocated" if mem is not None else \
        f"{r['peak']['peak_rss_mib'] / 1024:.2f} GiB peak RSS"
    print(f"final save {s['final_save_s']:.2f} s")
    print(f"whole edit {r['whole_edit_s']:.2f} s ({r['whole_edit_s'] / 60:.1f} min) = render {s['render_s']:.2f} + "
          f"edit {s['edit_s']:.2f} + fit {s['fit_s']:.2f} + save {s['final_save_s']:.2f} "
          f"({r['unaccounted_s']:+.3f} s unaccounted); peak {mem_text}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(METHOD), default="full",
                   help="full: csd-edit-small at 512²; tiny: csd-edit-tiny at 32² (benchmarks.scene3d's METHOD)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--views", type=int, default=VIEWS, help=f"training views edited together (default {VIEWS}, "
                                                            "ours); the scene gets the cameras that leave them")
    p.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS,
                   help=f"the base's nerfacto steps (default {PRETRAIN_STEPS}, ours), kept out of the edit time")
    p.add_argument("--work", type=Path, default=None, help="keep the scene and model here (default: a temp dir); "
                                                           "shared with benchmarks.scene3d's --work")
    p.add_argument("--prepare-only", action="store_true", help="write the scene and model into --work and stop")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="pipeline settings over csd-edit-fast's schedule, e.g. edit.steps=2 joint.fit-steps=2")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.views < 1:
        p.error(f"--views: expected a positive number of training views, got {a.views}")
    if a.pretrain_steps < 0:
        p.error(f"--pretrain-steps: expected a non-negative number of steps, got {a.pretrain_steps}")
    from csd_nerfstudio.evaluate import parse_overrides

    overrides = parse_overrides(a.set)
    if a.prepare_only:
        if a.work is None:
            p.error("--prepare-only: expected --work DIR to keep the scene and model in, got none")
        return {k: str(v) for k, v in prepare(a.work, a.model, a.views).items()}
    result = run(a.model, a.device, a.views, a.pretrain_steps, a.work, a.json, overrides)
    print_table(result)
    if result.get("training_views") != a.views:
        raise SystemExit(f"joint_edit: --views: expected {a.views} training views in the scene, the run had "
                         f"{result.get('training_views')}")
    return result


if __name__ == "__main__":
    main()
