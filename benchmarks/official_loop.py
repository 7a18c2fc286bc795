"""Our batched CSD-Edit step against a per-window loop structured like the official ``csdedit.py``.

The official code (github.com/subin-kim-cv/CSD, ``CSDEdit.edit_image``) visits the windows one by one every
step: per window it draws noise, noises the source and target window with it, and runs **two UNet calls of
batch 3** (source prompt, then instruction; each batch is the text / image / unconditional branch), applies
the three-way guidance and keeps ``ε̂_tgt − ε̂_src``; the kernel then mixes the stacked window scores.
:func:`official_structure_step` reproduces that structure (our own code, same formulas as csd2d: one guidance
formula, one kernel) so that the only difference from :func:`csd2d.csd.csd_edit_step` is batching.
With equal noise and timestep both give the same gradient (checked by tests/test_benchmarks.py).

    python -m benchmarks.official_loop --model full --device cuda --dtype float16 --ns 8 --json OUT/official.json
"""

from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from csd2d.csd import StepConfig, csd_edit_step
from csd2d.guidance import IP2PGuidance, ip2p_guidance, sds_weight
from csd2d.kernel import csd_gradient

from .models import SPECS, build_guidance, machine, median_time, write_json
from .step import DTYPES, make_inputs


@torch.no_grad()
def official_structure_step(
    guidance: IP2PGuidance,
    target: Tensor,
    source: Tensor,
    target_emb: Tensor,
    source_emb: Tensor,
    config: StepConfig,
    noise: Tensor,
    t: Tensor,
) -> Tensor:
    """One step the official way: a Python loop over particles, two batch-3 UNet calls per particle."""
    uncond = guidance.encode_prompt("")[0]
    dt = guidance.dtype
    timestep = t.reshape(-1)[:1].to(guidance.device)
    noisy_views: List[Tensor] = []
    scores: List[Tensor] = []
    w = sds_weight(guidance.alphas_cumprod, t)
    for i in range(target.shape[0]):
        cond = guidance.condition_latents(source[i : i + 1])
        image = torch.cat([cond, cond, torch.zeros_like(cond)]).to(dt)
        noisy_src = guidance.add_noise(source[i : i + 1], noise[i : i + 1], t)
        noisy_tgt = guidance.add_noise(target[i : i + 1], noise[i : i + 1], t)
        eps = []
        for noisy, emb in ((noisy_src, source_emb[i]), (noisy_tgt, target_emb[i])):
            text = torch.stack([emb, uncond, uncond]).to(dt)
            x = torch.cat([torch.cat([noisy] * 3).to(dt), image], dim=1)
            out = guidance.unet(x, timestep, encoder_hidden_states=text).sample.float()
            eps.append(ip2p_guidance(*out.chunk(3), config.guidance_scale, config.image_guidance_scale))
        scores.append(eps[1] - eps[0])
        noisy_views.append(noisy_tgt)
    scores_t = torch.cat(scores)
    if not config.coupling:
        return w * scores_t
    # The official code's ``w_t * (K·s + dK) / N``: w(t) weights the whole update, repulsion included.
    return w * csd_gradient(scores_t, torch.cat(noisy_views), bandwidth=config.bandwidth, repulsion=config.repulsion,
                            normalization=config.normalization)


def bench_n(guidance: IP2PGuidance, n: int, image: int, repeats: int) -> dict:
    inputs = make_inputs(guidance, n, image)
    config = StepConfig()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(inputs[0].shape, generator=g).to(guidance.device)
    t = torch.tensor([250], device=guidance.device)
    ours = lambda: csd_edit_step(guidance, *inputs, config, noise=noise, t=t)  # noqa: E731
    loop = lambda: official_structure_step(guidance, *inputs, config, noise, t)  # noqa: E731
    t_ours = median_time(ours, guidance.device, repeats)
    t_loop = median_time(loop, guidance.device, repeats)
    diff = (ours().grad.float() - loop().float()).abs().max().item()
    return dict(n=n, batched_s=t_ours, official_loop_s=t_loop, speedup=t_loop / t_ours, max_abs_grad_diff=diff,
                unet_calls_batched=1, unet_calls_loop=2 * n)


def run(model: str, device: str, dtype: str, ns: Sequence[int], repeats: int) -> dict:
    spec = SPECS[model]
    guidance = build_guidance(model, device, DTYPES[dtype])
    rows = [bench_n(guidance, n, spec.image, repeats) for n in ns]
    return dict(benchmark="official_loop", model=model, image=spec.image, device=device, dtype=dtype,
                repeats=repeats, machine=machine(), rows=rows)


def print_table(result: dict) -> None:
    print(f"Batched step vs official per-window loop, model={result['model']} {result['image']}px "
          f"{result['device']} {result['dtype']}")
    print(f"{'N':>3} {'batched ms':>11} {'loop ms':>10} {'speed-up':>9} {'max|Δgrad|':>11}")
    for r in result["rows"]:
        print(f"{r['n']:>3} {1e3 * r['batched_s']:>11.1f} {1e3 * r['official_loop_s']:>10.1f} "
              f"{r['speedup']:>9.2f} {r['max_abs_grad_diff']:>11.2e}")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SPECS), default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float16 on cuda, else float32")
    p.add_argument("--ns", type=int, nargs="+", default=[8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dtype = a.dtype or ("float16" if torch.device(a.device).type == "cuda" else "float32")
    result = run(a.model, a.device, dtype, a.ns, a.repeats)
    print_table(result)
    write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
