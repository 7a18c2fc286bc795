"""Sharding the particles over 2 gloo CPU processes gives the single-process step and video edit (≤ 1e-5)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from csd2d import CSDEditor, IP2PGuidance
from csd2d.csd import StepConfig, csd_edit_step
from csd2d.distributed import ShardedGuidance, shard_bounds

from conftest import FAST_VIDEO, synthetic_video


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(g: IP2PGuidance, n: int):
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(n, 4, 8, 8, generator=gen)
    target = source + 0.3 * torch.randn(n, 4, 8, 8, generator=gen)
    return target, source, g.encode_prompt("make it red").expand(n, -1, -1), g.encode_prompt("").expand(n, -1, -1)


def _step(g, n: int) -> torch.Tensor:
    return csd_edit_step(g, *_inputs(g, n), StepConfig(), generator=torch.Generator().manual_seed(3)).grad


def _video(g) -> np.ndarray:
    frames = CSDEditor(g).edit_video(synthetic_video(5, size=(16, 16)), "make it red", progress=False, **FAST_VIDEO)
    return np.stack([np.asarray(f, dtype=np.float32) for f in frames])


def _worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = ShardedGuidance(IP2PGuidance.from_pretrained(model_dir))
        torch.save(dict(step3=_step(g, 3), step1=_step(g, 1), video=torch.from_numpy(_video(g))),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_shard_bounds_cover_every_particle_once():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            parts = [shard_bounds(n, r, world) for r in range(world)]
            assert sum(hi - lo for lo, hi in parts) == n
            assert all(parts[i][1] == parts[i + 1][0] for i in range(world - 1))


def test_sharded_guidance_needs_a_process_group(guidance):
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ShardedGuidance(guidance)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_model_dir, guidance, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    single = dict(step3=_step(guidance, 3), step1=_step(guidance, 1), video=torch.from_numpy(_video(guidance)))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key in ("step3", "step1"):  # N = 3: shards of 2 and 1; N = 1: rank 1 scores nothing
            assert single[key].abs().max() > 1e-3
            torch.testing.assert_close(got[key], single[key], atol=1e-5, rtol=0)
        # 8-bit frames: equal up to a rounding flip where a value sits on a .5 boundary
        assert (got["video"] - single["video"]).abs().max() <= 1.0
        assert (got["video"] != single["video"]).float().mean() < 1e-3


@pytest.mark.slow
def test_torchrun_cli_writes_the_single_process_video(tiny_model_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m csd2d video ...` (gloo on CPU): rank 0 writes the same frames as one process."""
    import subprocess
    import sys

    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(synthetic_video(5, size=(16, 16))):
        frame.save(frames / f"{i:03d}.png")
    flags = ["video", str(frames), "--prompt", "make it red", "--model", str(tiny_model_dir), "--steps", "2",
             "--batch", "6", "--overlap", "2", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "csd2d", *flags, "--output", str(tmp_path / "one")], check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_free_port())]
    run = subprocess.run([*torchrun, "-m", "csd2d", *flags, "--output", str(tmp_path / "two")], check=True, env=env,
                         capture_output=True, text=True)
    assert "csd2d: 2 ranks share the particles" in run.stderr
    one, two = (sorted((tmp_path / d).glob("*.png")) for d in ("one", "two"))
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-2
    assert not list(tmp_path.glob(".csd2d-tmp*"))
