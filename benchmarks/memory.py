"""Peak memory of a CSD-Edit step against N and ``max_batch``, and the memory controls.

GPU: ``torch.cuda.max_memory_allocated`` during the step, above what was allocated before it (models and
inputs), plus the resident model memory. CPU: the process RSS sampled every millisecond during the step,
above the RSS before it (noisy: the allocator keeps freed blocks).

1. ``sweep``: peak vs N for ``max_batch`` in {None, 6, 2}; the gradient with each ``max_batch`` is compared with
   the unchunked one (max |Δ|, expected 0 up to batch-size-dependent kernel selection).
2. ``controls``: each memory control applied to a copy of the same model — dtype (float16 on CUDA, bfloat16),
   ``attention="sliced"``, VAE tiling (decode), ``offload`` (text encoder + VAE on the CPU), ``compile_unet`` —
   with its step time, memory and the change of the result against the float32 SDPA baseline.

    python -m benchmarks.memory --model full --device cuda --json OUT/memory.json
"""

from __future__ import annotations

import argparse
import copy
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from csd2d.csd import StepConfig, csd_edit_step
from csd2d.guidance import IP2PGuidance

from .models import SPECS, build_guidance, machine, median_time, rss_mb, sync, write_json
from .step import DTYPES, make_inputs


def measure_peak(fn: Callable[[], object], device) -> Tuple[object, float, float]:
    """Run ``fn`` once; return (its output, peak extra memory in MiB during it, resident MiB before it)."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        sync(device)
        return out, (torch.cuda.max_memory_allocated(device) - before) / 2**20, before / 2**20
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], rss_mb())
    return out, peak[0] - before, before


def _step(guidance: IP2PGuidance, inputs, max_batch: Optional[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return csd_edit_step(guidance, *inputs, StepConfig(max_batch=max_batch), generator=gen).grad.float().cpu()


def sweep(guidance: IP2PGuidance, image: int, ns: Sequence[int], max_batches: Sequence[Optional[int]]) -> List[dict]:
    rows = []
    for n in ns:
        inputs = make_inputs(guidance, n, image)
        ref = None
        for mb in max_batches:
            _step(guidance, inputs, mb)  # warm-up (kernel selection, allocator)
            grad, peak, resident = measure_peak(lambda: _step(guidance, inputs, mb), guidance.device)
            ref = grad if ref is None else ref
            rows.append(dict(n=n, max_batch=mb, peak_step_mb=peak, resident_mb=resident,
                             per_particle_mb=peak / n, max_abs_grad_diff_vs_unchunked=(grad - ref).abs().max().item()))
            print(f"sweep N={n} max_batch={mb}: peak {peak:.1f} MiB", flush=True)
    return rows


def _copy(g: IP2PGuidance, dtype: Optional[torch.dtype] = None) -> IP2PGuidance:
    parts = [copy.deepcopy(m) for m in (g.unet, g.vae, g.text_encoder)]
    if dtype is not None:
        parts = [m.to(dtype) for m in parts]
    return IP2PGuidance(*parts, g.tokenizer, g.scheduler)


def controls(base: IP2PGuidance, image: int, n: int, repeats: int, compile_unet: bool) -> List[dict]:
    """Each control on a copy of ``base`` (float32): step time, peak memory, change of gradient and decode."""
    cuda = base.device.type == "cuda"
    tile = image // 2
    cases = [("float32 sdpa (baseline)", {}, None, None)]
    if cuda:
        cases.append(("float16", {}, torch.float16, None))
    cases += [
        ("bfloat16", {}, torch.bfloat16, None),
        ("attention sliced", dict(attention="sliced"), None, None),
        (f"VAE tiling {tile}px/overlap {tile // 4}", {}, None, tile),
        ("offload text encoder + VAE", dict(offload=True), None, None),
    ]
    if compile_unet:
        cases.append(("torch.compile UNet", dict(compile_unet=True), None, None))
    rows, ref = [], None
    for name, kwargs, dtype, vae_tile in cases:
        g = _copy(base, dtype).configure_memory(**kwargs)
        g._text_cache.clear()
        inputs = make_inputs(g, n, image)
        t0 = time.perf_counter()
        _step(g, inputs, None)  # warm-up; includes compilation
        first = time.perf_counter() - t0
        grad, peak, resident = measure_peak(lambda: _step(g, inputs, None), g.device)
        step_s = median_time(lambda: _step(g, inputs, None), g.device, repeats, warmup=0)
        decode = lambda: g.decode_latents(inputs[1], tile=vae_tile, overlap=(vae_tile or 0) // 4)  # noqa: E731
        images, decode_peak, _ = measure_peak(decode, g.device)
        result = (grad, images.float().cpu())
        ref = result if ref is None else ref
        scale = ref[0].abs().max().item()
        rows.append(dict(control=name, first_step_s=first, step_s=step_s, peak_step_mb=peak,
                         resident_mb=resident, decode_peak_mb=decode_peak,
                         max_rel_grad_diff=(result[0] - ref[0]).abs().max().item() / max(scale, 1e-12),
                         max_abs_image_diff=(result[1] - ref[1]).abs().max().item()))
        print(f"control {name}: first step {first:.2f} s, step {step_s:.3f} s, peak {peak:.1f} MiB", flush=True)
        del g
        if cuda:
            torch.cuda.empty_cache()
    return rows


def run(model: str, device: str, ns: Sequence[int], max_batches: Sequence[Optional[int]], control_n: int,
        repeats: int, compile_unet: bool, sweep_dtype: str, json_path: Optional[str] = None) -> dict:
    """The sweep, then the controls; with ``json_path`` the JSON is written after each (the controls, with
    torch.compile, are the long part: a run stopped by its time limit keeps the sweep)."""
    spec = SPECS[model]
    base = build_guidance(model, device, torch.float32)
    g = base if sweep_dtype == "float32" else _copy(base, DTYPES[sweep_dtype])
    rows = sweep(g, spec.image, ns, max_batches)
    del g
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    result = dict(benchmark="memory", model=model, image=spec.image, device=device, sweep_dtype=sweep_dtype,
                  control_n=control_n, machine=machine(),
                  measure="cuda max_memory_allocated" if device.startswith("cuda") else "RSS sampled every 1 ms",
                  sweep=rows, controls=[])
    write_json(json_path, result)
    if control_n > 0:
        result["controls"] = controls(base, spec.image, control_n, repeats, compile_unet)
    return result


def print_tables(r: dict) -> None:
    print(f"Peak memory of one step, model={r['model']} {r['image']}px {r['device']} {r['sweep_dtype']} ({r['measure']})")
    print(f"{'N':>3} {'max_batch':>9} {'peak MiB':>9} {'MiB/particle':>12} {'resident':>9} {'max|Δgrad|':>11}")
    for x in r["sweep"]:
        print(f"{x['n']:>3} {str(x['max_batch']):>9} {x['peak_step_mb']:>9.1f} {x['per_particle_mb']:>12.1f} "
              f"{x['resident_mb']:>9.0f} {x['max_abs_grad_diff_vs_unchunked']:>11.2e}")
    print(f"Memory controls at N={r['control_n']}")
    print(f"{'control':<32} {'1st s':>7} {'step s':>7} {'peak MiB':>9} {'resident':>9} {'decode MiB':>10} "
          f"{'rel Δgrad':>9} {'Δimage':>8}")
    for x in r["controls"]:
        print(f"{x['control']:<32} {x['first_step_s']:>7.2f} {x['step_s']:>7.3f} {x['peak_step_mb']:>9.1f} "
              f"{x['resident_mb']:>9.0f} {x['decode_peak_mb']:>10.1f} {x['max_rel_grad_diff']:>9.1e} "
              f"{x['max_abs_image_diff']:>8.1e}")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SPECS), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-batches", type=int, nargs="+", default=[0, 6, 2], help="0 = unchunked")
    p.add_argument("--control-n", type=int, default=4, help="N for the controls; 0 skips them")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile of the UNet")
    p.add_argument("--sweep-dtype", choices=sorted(DTYPES), default=None, help="default: float16 on cuda")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dtype = a.sweep_dtype or ("float16" if torch.device(a.device).type == "cuda" else "float32")
    result = run(a.model, a.device, a.ns, [m or None for m in a.max_batches], a.control_n, a.repeats, a.compile, dtype,
                 a.json)
    print_tables(result)
    write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
