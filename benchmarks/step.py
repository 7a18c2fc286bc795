"""One CSD-Edit step against its floor: the same UNet evaluations alone.

For each N the real step (:func:`csd2d.csd.csd_edit_step`) is timed twice: plain (the step time), and with
timers wrapped around ``unet.forward``, ``csd2d.csd.csd_gradient`` (kernel + mixing) and the VAE's
``encode``/``decode`` (the split). The floor replays the step's UNet calls — ``6 N`` rows (target and source
× three guidance branches) in chunks of ``max_batch`` — on prepared inputs.
``overhead = step / floor`` (goal ≤ 1.03 at N = 16 on a GPU, issue 12). The aligned row times the same step with
the kernel mixing warped scores (:mod:`csd2d.align`; every pair a sub-pixel shift, so every pair resamples):
``align cost = (aligned step − step) / UNet alone`` (goal ≤ 0.10 at N = 16 on a GPU, issue 23).

    python -m benchmarks.step --model full --device cuda --dtype float16 --json OUT/step.json
    python -m benchmarks.step --model tiny --device cpu --ns 1 2 4 --repeats 1
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch

import csd2d.csd as csd_module
from csd2d.align import GridWarps, pixel_grid, to_sample_grid
from csd2d.csd import StepConfig, csd_edit_step
from csd2d.guidance import IP2PGuidance

from .models import SPECS, Timer, build_guidance, machine, median_time, write_json

NS = (1, 2, 4, 8, 16, 32)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_inputs(guidance: IP2PGuidance, n: int, image: int, seed: int = 0):
    """Random target/source latents of ``n`` particles (``image`` px) and their prompt embeddings."""
    g = torch.Generator().manual_seed(seed)
    side = image // guidance.vae_scale_factor
    shape = (n, guidance.latent_channels, side, side)
    source = torch.randn(shape, generator=g).to(guidance.device, guidance.dtype)
    target = (source + 0.1 * torch.randn(shape, generator=g).to(source)).contiguous()
    emb_t = guidance.encode_prompt("turn it into a painting").expand(n, -1, -1)
    emb_s = guidance.encode_prompt("").expand(n, -1, -1)
    return target, source, emb_t, emb_s


def shifted_warps(n: int, side: int, seed: int = 0) -> GridWarps:
    """Warps among ``n`` particles of ``side²`` latents where pair (i, j) is a random sub-pixel shift of up to 4
    latents, masked where it leaves the grid: the aligned step's resampling at its full cost."""
    g = torch.Generator().manual_seed(seed)
    shift = (torch.rand(n, n, 1, 1, 2, generator=g) - 0.5) * 8
    coords = pixel_grid(side, side)[None, None] + shift
    mask = ((coords >= 0) & (coords < side)).all(-1).float()
    return GridWarps(to_sample_grid(coords, side, side), mask)


def step_fn(guidance, inputs, config: StepConfig, seed: int = 0, warps=None):
    def run():
        gen = torch.Generator().manual_seed(seed)
        return csd_edit_step(guidance, *inputs, config, generator=gen, warps=warps)

    return run


def unet_floor_fn(guidance: IP2PGuidance, n: int, side: int, max_batch: Optional[int]):
    """The step's UNet evaluations alone: ``6 n`` rows of (z ‖ image latent), text and timestep, chunked."""
    rows = 6 * n
    dev, dt = guidance.device, guidance.dtype
    x = torch.randn(rows, 2 * guidance.latent_channels, side, side, device=dev, dtype=dt)
    text = guidance.encode_prompt("").expand(rows, -1, -1).to(dt)
    ts = torch.full((rows,), 250, device=dev, dtype=torch.long)
    step = max_batch or rows

    @torch.no_grad()
    def run():
        for i in range(0, rows, step):
            guidance.unet(x[i : i + step], ts[i : i + step], encoder_hidden_states=text[i : i + step]).sample

    return run


@contextmanager
def instrumented(guidance: IP2PGuidance, timer: Timer) -> Iterator[Timer]:
    """Time the UNet, the kernel + mixing and the VAE inside the real step (restored on exit)."""
    original_kernel = csd_module.csd_gradient
    guidance.unet.forward = timer.wrap("unet", guidance.unet.forward)
    guidance.vae.encode = timer.wrap("vae", guidance.vae.encode)
    guidance.vae.decode = timer.wrap("vae", guidance.vae.decode)
    csd_module.csd_gradient = timer.wrap("kernel", original_kernel)
    try:
        yield timer
    finally:
        csd_module.csd_gradient = original_kernel
        del guidance.unet.forward, guidance.vae.encode, guidance.vae.decode


def bench_n(guidance: IP2PGuidance, n: int, image: int, repeats: int, max_batch: Optional[int] = None) -> dict:
    inputs = make_inputs(guidance, n, image)
    config = StepConfig(max_batch=max_batch)
    side = image // guidance.vae_scale_factor
    step = median_time(step_fn(guidance, inputs, config), guidance.device, repeats)
    floor = median_time(unet_floor_fn(guidance, n, side, max_batch), guidance.device, repeats)
    aligned = median_time(step_fn(guidance, inputs, config, warps=shifted_warps(n, side)), guidance.device, repeats)
    timer = Timer(guidance.device)
    run = step_fn(guidance, inputs, config)
    with instrumented(guidance, timer):
        for _ in range(repeats):
            with timer("total"):
                run()
    split = {k: v / repeats for k, v in timer.totals.items()}
    rest = split["total"] - split.get("unet", 0.0) - split.get("kernel", 0.0) - split.get("vae", 0.0)
    return dict(
        n=n,
        unet_rows=6 * n,
        step_s=step,
        unet_alone_s=floor,
        overhead=step / floor,
        aligned_step_s=aligned,
        align_cost=(aligned - step) / floor,
        split_unet_s=split.get("unet", 0.0),
        split_kernel_s=split.get("kernel", 0.0),
        split_vae_s=split.get("vae", 0.0),
        split_rest_s=rest,
    )


def run(model: str, device: str, dtype: str, ns: Sequence[int], repeats: int, max_batch: Optional[int]) -> dict:
    spec = SPECS[model]
    guidance = build_guidance(model, device, DTYPES[dtype])
    rows: List[dict] = []
    for n in ns:
        rows.append(bench_n(guidance, n, spec.image, repeats, max_batch))
        print(f"N={n}: step {1e3 * rows[-1]['step_s']:.1f} ms, overhead {rows[-1]['overhead']:.3f}", flush=True)
    return dict(
        benchmark="step",
        model=model,
        image=spec.image,
        device=device,
        dtype=dtype,
        max_batch=max_batch,
        repeats=repeats,
        machine=machine(),
        note="2D CSD-Edit step in latent space: the VAE runs once before and after the loop, not per step",
        rows=rows,
    )


def print_table(result: dict) -> None:
    print(f"CSD-Edit step, model={result['model']} {result['image']}px {result['device']} {result['dtype']}")
    print(f"{'N':>3} {'step ms':>9} {'UNet alone':>10} {'overhead':>8} | {'unet':>8} {'kernel':>8} {'vae':>6} "
          f"{'rest':>8} | {'aligned ms':>10} {'align cost':>10}")
    for r in result["rows"]:
        print(
            f"{r['n']:>3} {1e3 * r['step_s']:>9.1f} {1e3 * r['unet_alone_s']:>10.1f} {r['overhead']:>8.3f} | "
            f"{1e3 * r['split_unet_s']:>8.1f} {1e3 * r['split_kernel_s']:>8.2f} {1e3 * r['split_vae_s']:>6.1f} "
            f"{1e3 * r['split_rest_s']:>8.2f} | {1e3 * r['aligned_step_s']:>10.1f} {r['align_cost']:>10.3f}"
        )


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SPECS), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float16 on cuda, else float32")
    p.add_argument("--ns", type=int, nargs="+", default=list(NS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    dtype = a.dtype or ("float16" if torch.device(a.device).type == "cuda" else "float32")
    result = run(a.model, a.device, dtype, a.ns, a.repeats, a.max_batch)
    print_table(result)
    write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
