"""The paper's metrics with a tiny random CLIP (save_pretrained → from_pretrained) and random LPIPS weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from csd2d.paper_metrics import (LPIPS, ClipScorer, clip_direction_consistency_appendix,
                                 clip_direction_consistency_issue28, clip_directional_similarity,
                                 clip_image_consistency, cosine_or_zero, evaluate_frames, lpips_consecutive)

REPO = Path(__file__).resolve().parents[1]
SRC, TGT = "a photo of a river", "a painting of a river at night"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from csd2d.tiny.components import write_char_tokenizer

    root = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = CLIPTokenizer.from_pretrained(str(write_char_tokenizer(root / "tok", 32)))
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(root / "clip", safe_serialization=True)
    tokenizer.save_pretrained(root / "clip")
    return root / "clip"


@pytest.fixture(scope="module")
def clip(clip_dir) -> ClipScorer:
    return ClipScorer.from_pretrained(str(clip_dir))


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = LPIPS()
    for lin in net.lin:  # LPIPS's linear weights are non-negative
        lin.weight.data = lin.weight.data.abs()
    path = tmp_path_factory.mktemp("lpips") / "lpips_random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _frames(n=4, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size, size, generator=g)
    return (base + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_tiny_clip_loads_from_safetensors(clip_dir, clip):
    assert (clip_dir / "model.safetensors").exists() and not list(clip_dir.glob("*.bin"))
    assert clip.name == f"transformers:{clip_dir}" and clip.image_size == 32
    emb = clip.embed_images(_frames())
    assert emb.shape == (4, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_swapping_captions_flips_the_directional_similarity(clip):
    src, edt = _frames(seed=0), _frames(seed=1)
    fwd = evaluate_frames(src, edt, clip=clip, source_caption=SRC, target_caption=TGT)
    back = evaluate_frames(src, edt, clip=clip, source_caption=TGT, target_caption=SRC)
    a = torch.tensor(fwd["per_frame"]["clip_directional_similarity"])
    b = torch.tensor(back["per_frame"]["clip_directional_similarity"])
    assert a.abs().min() > 1e-3
    assert torch.allclose(a, -b, atol=1e-5)


def test_identical_source_and_edit_give_exactly_zero(clip):
    src = _frames()
    res = evaluate_frames(src, src.clone(), clip=clip, source_caption=SRC, target_caption=TGT)
    assert res["per_frame"]["clip_directional_similarity"] == [0.0] * 4
    assert res["per_frame"]["clip_direction_consistency_appendix"] == [0.0] * 3  # e_i − o_i = 0
    same_caption = evaluate_frames(src, _frames(seed=1), clip=clip, source_caption=SRC, target_caption=SRC)
    assert same_caption["metrics"]["clip_directional_similarity"] == 0.0
    assert cosine_or_zero(torch.zeros(2, 3), torch.ones(2, 3)).tolist() == [0.0, 0.0]


def test_batch_invariance(clip):
    src, edt = _frames(n=5, seed=2), _frames(n=5, seed=3)
    assert torch.allclose(clip.embed_images(edt, chunk=1), clip.embed_images(edt, chunk=16), atol=1e-5)
    full = evaluate_frames(src, edt, clip=clip, source_caption=SRC, target_caption=TGT)
    head = evaluate_frames(src[:3], edt[:3], clip=clip, source_caption=SRC, target_caption=TGT)
    for name, values in head["per_frame"].items():
        n = len(values)
        assert torch.allclose(torch.tensor(values), torch.tensor(full["per_frame"][name][:n]), atol=1e-5), name


def test_formulas_on_embeddings():
    g = torch.Generator().manual_seed(0)
    o, e = F.normalize(torch.randn(4, 8, generator=g), dim=-1), F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    t_s, t_t = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))
    for i in range(3):
        assert clip_direction_consistency_appendix(o, e)[i] == pytest.approx(cos(e[i] - o[i], e[i + 1] - e[i]), abs=1e-6)
        assert clip_direction_consistency_issue28(o, e)[i] == pytest.approx(cos(o[i + 1] - o[i], e[i + 1] - e[i]), abs=1e-6)
        assert clip_image_consistency(e)[i] == pytest.approx(cos(e[i], e[i + 1]), abs=1e-6)
    for i in range(4):
        assert clip_directional_similarity(o, e, t_s, t_t)[i] == pytest.approx(cos(e[i] - o[i], t_t - t_s), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        clip_image_consistency(e[:1])


def test_lpips_from_file_random_weights(lpips_file):
    net = LPIPS.from_file(lpips_file)
    assert net.name == "lpips-alex:lpips_random.safetensors"
    x = _frames(n=4, size=64, seed=4)
    y = _frames(n=4, size=64, seed=5)
    d = net(x, y)
    assert d.shape == (4,) and (d > 0).all()
    assert torch.allclose(d, net(y, x), atol=1e-6)
    assert net(x, x).abs().max() < 1e-7
    assert torch.allclose(torch.cat([net(x[i : i + 1], y[i : i + 1]) for i in range(4)]), d, atol=1e-6)
    # closer frames are closer under any non-negative weights
    assert (net(x, (x + 0.02 * (y - x))) < d).all()
    seq = lpips_consecutive(net, x, chunk=2)
    assert torch.allclose(seq, net(x[:-1], x[1:]), atol=1e-6)


def test_lpips_bad_file_names_the_flag(tmp_path, lpips_file):
    from safetensors.torch import load_file, save_file

    with pytest.raises(ValueError, match="--lpips: expected an existing .safetensors"):
        LPIPS.from_file(tmp_path / "missing.safetensors", arg_name="--lpips")
    state = load_file(str(lpips_file))
    state.pop("lin.4.weight")
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="--lpips: expected AlexNet"):
        LPIPS.from_file(tmp_path / "partial.safetensors", arg_name="--lpips")


def test_bad_clip_names_the_flag(tmp_path):
    from csd2d import ModelLoadError

    with pytest.raises(ModelLoadError, match="--clip: expected a CLIP model"):
        ClipScorer.from_pretrained(str(tmp_path), arg_name="--clip")


def _save_frames(folder: Path, frames: torch.Tensor) -> Path:
    from csd2d.imaging import tensor_to_pil

    folder.mkdir()
    for i, f in enumerate(frames):
        tensor_to_pil(f).save(folder / f"{i:03d}.png")
    return folder


def test_eval_subcommand_folders_and_image_pair(tmp_path, clip_dir, lpips_file):
    from csd2d.cli import main

    src = _save_frames(tmp_path / "src", _frames(n=3, size=48, seed=6))
    edt = _save_frames(tmp_path / "edt", _frames(n=3, size=48, seed=7))
    out = tmp_path / "metrics.json"
    argv = ["eval", "--source", str(src), "--edited", str(edt), "--source-caption", SRC, "--target-caption", TGT,
            "--clip", str(clip_dir), "--lpips", str(lpips_file), "--output", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["frames"] == 3 and res["backbones"]["lpips"] == "lpips-alex:lpips_random.safetensors"
    expected = {"clip_directional_similarity", "clip_image_similarity_to_source", "clip_image_consistency",
                "clip_direction_consistency_appendix", "clip_direction_consistency_issue28", "lpips_consecutive"}
    assert set(res["metrics"]) == expected
    assert main(argv) == 2  # the JSON exists: refused without --overwrite
    pair = ["eval", "--source", str(src / "000.png"), "--edited", str(edt / "000.png"), "--source-caption", SRC,
            "--target-caption", TGT, "--clip", str(clip_dir), "--output", str(tmp_path / "pair.json")]
    assert main(pair) == 0
    assert json.loads((tmp_path / "pair.json").read_text())["frames"] == 1
    (edt / "002.png").unlink()
    assert main(argv[:-2] + ["--output", str(tmp_path / "m2.json")]) == 2
    assert not (tmp_path / "m2.json").exists()


def test_metrics_import_stays_light():
    code = ("import sys, csd2d.metrics, csd2d.paper_metrics; "
            "print(sorted(m for m in ('transformers', 'torchvision', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
