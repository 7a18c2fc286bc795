"""Peak memory of one joint round against the number of views: it must not grow with the scene.

A made scene (:func:`csd_nerfstudio.scenes.write_textured_scene`) of each size, csd-edit-tiny with the joint
schedule, one round of every view right at the start (no pretraining: memory does not depend on the fit), one
fit step. Each size runs in its own process; it reports the process's peak RSS (and CUDA max allocated on a
GPU), the RSS just before the round, and the round's seconds.

    python -m benchmarks.joint_memory --views 40 200 --json OUT/joint_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from .models import write_json


def one(views: int, size: int, steps: int, out: Path) -> Dict:
    """Run one size in this process and return its figures."""
    import torch

    from csd_nerfstudio.benchmark import _peak_rss_mb, peak_memory, tiny_config
    from csd_nerfstudio.scenes import write_textured_scene

    scene = write_textured_scene(out / "scene", views=views, size=size, seed=0)
    cfg = tiny_config(scene, out, iterations=1, pretrain_steps=0, schedule="joint", edit={"steps": steps},
                      **{"joint.rounds": 1, "joint.fit_steps": 1})
    pipe = cfg.pipeline.setup(device="cuda" if torch.cuda.is_available() else "cpu", test_mode="val")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = _peak_rss_mb()
    start = time.perf_counter()
    pipe.get_train_loss_dict(0)
    seconds = time.perf_counter() - start
    assert pipe.edited_views == [list(range(len(pipe.images)))]
    return {"views": len(pipe.images), "size": size, "csd_steps": steps, "round_seconds": seconds,
            "peak_rss_mib_before_round": before, **peak_memory()}


def main(argv: List[str] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, nargs="+", default=[40, 200])
    parser.add_argument("--size", type=int, default=64, help="view side in pixels (made scene)")
    parser.add_argument("--steps", type=int, default=20, help="CSD steps of the round (csd-edit's 20)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args(argv)
    if args.one is not None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(args.one, args.size, args.steps, Path(tmp))))
        return {}
    rows = []
    for views in args.views:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.joint_memory", "--one", str(views), "--size",
                               str(args.size), "--steps", str(args.steps)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"joint_memory: {views} views failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in rows[0] else "peak_rss_mib"
    print(f"{'views':>6} {'round s':>8} {'RSS before':>11} {'peak RSS':>9} {key + ' / first':>26}")
    for r in rows:
        print(f"{r['views']:>6} {r['round_seconds']:8.1f} {r['peak_rss_mib_before_round']:11.0f} "
              f"{r['peak_rss_mib']:9.0f} {r[key] / rows[0][key]:26.3f}")
    payload = {"rows": rows, "peak_ratio_last_to_first": rows[-1][key] / rows[0][key], "measure": key}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
