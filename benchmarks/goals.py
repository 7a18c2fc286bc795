"""The GPU goals of issue 12, checked against the JSON files that ``gpu.sh`` wrote; prints a table and writes
``goals.json`` beside them.

    python -m benchmarks.goals OUT_DIR

Goals (issue 12 set them on one H100; the lent machines are H200s; full-size model, 512²): CSD step overhead ≤
1.03 at N = 16; ≥ 2.5× the official per-window loop at N = 8; a whole-scene 3D edit (the paper's schedule,
pretrain excluded) in ≤ 10 min; csd-edit-small's peak memory at N = 4 ≤ 12 GB. Issue 20's: the whole joint edit
(csd-edit-fast's schedule, base excluded) of ≥ 40 training views in ≤ 300 s, and its peak memory (CUDA max
allocated) ≤ 12 GB, both measured by ``benchmarks.joint_edit`` on the full model. A goal whose figure is missing
(its benchmark failed, stopped before the end or did not run that case) is reported as such, never as met. On the
CPU dry run the figures are the tiny model's and the verdicts mean nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .models import write_json

GB = 1e9


def _load(out: Path, name: str) -> Optional[dict]:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(rows: Sequence[dict], n: int) -> Optional[dict]:
    return next((r for r in rows if r.get("n") == n), None)


def _csd_peak_gb(scene: dict) -> Optional[float]:
    row = scene.get("rows", {}).get("csd")
    if row is None or scene.get("method") != "csd-edit-small" or row.get("batch") != 4:
        return None
    mib = row.get("cuda_max_allocated_mib")
    return None if mib is None else mib * 2**20 / GB


JOINT_MIN_VIEWS = 40
"""Training views the joint-edit goals need (issue 20's ">= 40 training views")."""


def _joint_edit(data: dict) -> Optional[dict]:
    """``joint_edit.json`` when it is the goals' case: finished, the full model, the scene's training views (at
    least JOINT_MIN_VIEWS) edited in every round."""
    views = data.get("views_edited") or []
    if (not data.get("complete") or data.get("model") != "full" or len(views) != data.get("rounds")
            or min(views) < JOINT_MIN_VIEWS or set(views) != {data.get("training_views")}):
        return None
    return data


def _joint_whole_s(data: dict) -> Optional[float]:
    return (_joint_edit(data) or {}).get("whole_edit_s")


def _joint_peak_gb(data: dict) -> Optional[float]:
    mib = ((_joint_edit(data) or {}).get("peak") or {}).get("cuda_max_allocated_mib")
    return None if mib is None else mib * 2**20 / GB


GOALS: List[Dict] = [
    dict(goal="step overhead at N = 16", target="<= 1.03", source="step",
         value=lambda d: (_row(d["rows"], 16) or {}).get("overhead"), met=lambda v: v <= 1.03),
    dict(goal="speed-up over the official per-window loop at N = 8", target=">= 2.5x", source="official_loop",
         value=lambda d: (_row(d["rows"], 8) or {}).get("speedup"), met=lambda v: v >= 2.5),
    dict(goal="whole-scene 3D edit, paper schedule (s)", target="<= 600 s", source="scene3d",
         value=lambda d: d.get("estimates", {}).get("paper_schedule_s"), met=lambda v: v <= 600),
    dict(goal="csd-edit-small peak memory, N = 4 (GB)", target="<= 12 GB", source="scene3d",
         value=_csd_peak_gb, met=lambda v: v <= 12),
    dict(goal=f"whole joint edit, >= {JOINT_MIN_VIEWS} views (s)", target="<= 300 s", source="joint_edit",
         value=_joint_whole_s, met=lambda v: v <= 300),
    dict(goal="joint edit peak memory (GB)", target="<= 12 GB", source="joint_edit",
         value=_joint_peak_gb, met=lambda v: v <= 12),
]


def check(out: Path) -> List[Dict]:
    """One row per goal: its figure (None when missing) and ``met`` (True, False or None when missing)."""
    results = []
    for g in GOALS:
        data = _load(out, g["source"])
        value_fn: Callable = g["value"]
        value = value_fn(data) if data is not None else None
        met = None if value is None else bool(g["met"](value))
        device = (data or {}).get("device")
        results.append(dict(goal=g["goal"], target=g["target"], value=value, met=met, source=g["source"],
                            device=device, gpu=((data or {}).get("machine") or {}).get("gpu")))
    return results


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the OUT_DIR that gpu.sh wrote its JSON files into")
    a = p.parse_args(argv)
    if not a.out.is_dir():
        p.error(f"out: expected the folder gpu.sh wrote, got {str(a.out)!r}, which is not a folder")
    results = check(a.out)
    for r in results:
        verdict = {True: "met", False: "MISSED", None: "no figure"}[r["met"]]
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        print(f"{r['goal']:<54} {r['target']:>9} {value:>10}  {verdict}  ({r['source']}, {r['gpu'] or r['device']})")
    write_json(str(a.out / "goals.json"), {"goals": results})
    return results


if __name__ == "__main__":
    main()
