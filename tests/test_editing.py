"""csd2d end to end: the Python API and the CLI on real photos and synthetic videos, and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_PANO, FAST_VIDEO, shared_data, synthetic_video
from csd2d import PanoramaConfig, VideoConfig, load_preset
from csd2d.cli import main, parse
from csd2d.io import InputError, load_video, save_video

REPO = Path(__file__).resolve().parents[1]


def _photo(name: str, width: int = 150) -> Image.Image:
    img = Image.open(shared_data("images", name))
    return img.resize((width, round(width * img.height / img.width)), Image.LANCZOS)


@pytest.mark.parametrize("name", ["river.jpg", "sheeps.jpg", "vienna.jpg"])
def test_api_panorama_on_shared_photos_keeps_size(editor, name):
    img = _photo(name)
    out = editor.edit_panorama(img, "make it look like a painting", progress=False, **FAST_PANO)
    assert out.size == img.size and out.mode == "RGB"
    # Every column moved away from the zero edit (the VAE round trip): the windows cover the whole width,
    # edges included, and every window's update was written back.
    zero = editor.reconstruct([img], PanoramaConfig(**FAST_PANO))[0]
    change = np.abs(np.asarray(out, dtype=float) - np.asarray(zero, dtype=float)).mean(axis=(0, 2))
    assert change.shape == (img.width,) and change.min() > 0.1, change.min()


def test_panorama_is_deterministic_and_baseline_differs(editor):
    img = _photo("river.jpg", 120)
    a = editor.edit_panorama(img, "make it red", progress=False, **FAST_PANO)
    b = editor.edit_panorama(img, "make it red", progress=False, **FAST_PANO)
    c = editor.edit_panorama(img, "make it red", progress=False, **dict(FAST_PANO, seed=1))
    base = editor.edit_panorama(img, "make it red", progress=False, coupling=False, **FAST_PANO)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(base))


def test_region_prompts_and_callback(editor):
    img = _photo("vienna.jpg", 160)
    seen = []
    out = editor.edit_panorama(
        img, prompts=["make it red", "make it blue", "make it green"], progress=False,
        callback=lambda step, total, latents: seen.append((step, total, tuple(latents.shape))), **FAST_PANO,
    )
    assert out.size == img.size
    assert [s for s, _, _ in seen] == list(range(FAST_PANO["steps"])) and seen[0][1] == FAST_PANO["steps"]


def test_odd_sizes_rgba_and_grayscale_keep_size_and_mode(editor):
    rgba = _photo("sheeps.jpg", 101).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    out = editor.edit_panorama(rgba, "make it red", progress=False, **FAST_PANO)
    assert out.size == rgba.size and out.mode == "RGBA"
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    gray = _photo("sheeps.jpg", 111).convert("L")
    out = editor.edit_panorama(gray, "make it red", progress=False, **FAST_PANO)
    assert out.size == gray.size


def test_image_smaller_than_a_window_is_refused(editor):
    with pytest.raises(InputError, match=r"image: expected at least 32x32 px .* got 40x20"):
        editor.edit_panorama(Image.new("RGB", (40, 20)), "make it red", progress=False, **FAST_PANO)


def test_empty_prompt_and_unknown_override(editor):
    img = _photo("river.jpg", 100)
    with pytest.raises(InputError, match="prompt: expected a non-empty instruction"):
        editor.edit_panorama(img, "  ", progress=False, **FAST_PANO)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['stepz'\]"):
        editor.edit_panorama(img, "make it red", stepz=3)
    with pytest.raises(ValueError, match="stride: expected"):
        editor.edit_panorama(img, "make it red", window=8, stride=9)


def test_video_chunks_edit_every_frame(editor):
    """30 frames in chunks of 6 (overlap 2): every frame comes back edited, i.e. different from the zero edit
    (the input's VAE round trip), so no chunk is skipped or left unwritten."""
    frames = synthetic_video(30)
    out = editor.edit_video(frames, "make it red", progress=False, **FAST_VIDEO)
    assert len(out) == 30 and all(f.size == frames[0].size for f in out)
    zero = editor.reconstruct(frames, VideoConfig(**FAST_VIDEO))
    change = [np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(out, zero)]
    assert min(change) > 0.5, change


def test_video_single_frame_is_plain_sds(editor):
    """N = 1: the kernel adds nothing, CSD equals independent delta score distillation."""
    frame = synthetic_video(1)
    csd = editor.edit_video(frame, "make it red", progress=False, **FAST_VIDEO)
    sds = editor.edit_video(frame, "make it red", progress=False, **{**FAST_VIDEO, "coupling": False})
    assert len(csd) == 1 and np.array_equal(np.asarray(csd[0]), np.asarray(sds[0]))
    zero = editor.reconstruct(frame, VideoConfig(**FAST_VIDEO))[0]
    assert not np.array_equal(np.asarray(csd[0]), np.asarray(zero))


def test_video_frames_of_different_sizes_are_refused(editor):
    frames = synthetic_video(3)
    frames[2] = frames[2].resize((30, 30))
    with pytest.raises(InputError, match="frames: expected all frames of one size.*frame 2 is 30x30"):
        editor.edit_video(frames, "make it red", progress=False, **FAST_VIDEO)


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ""])
def test_video_io_roundtrip(tmp_path, suffix):
    frames = synthetic_video(12)
    # 12.5 fps = 80 ms per frame, exact in GIF's 10 ms units. Frame folders carry no rate: 10 fps.
    path = save_video(frames, tmp_path / f"clip{suffix}", fps=12.5)
    back, fps = load_video(path)
    assert len(back) == 12 and back[0].size == frames[0].size
    assert fps == pytest.approx(12.5 if suffix else 10.0, rel=0.01)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


# ------------------------------------------------------------------------------------------------ CLI
def _cli(model, *args):
    return main([*args, "--model", str(model), "--device", "cpu", "--no-progress"])


def _fast_flags(fast):
    out = []
    for k, v in fast.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def test_cli_panorama_end_to_end_with_preview(tmp_path, tiny_model_dir):
    src = tmp_path / "river.png"
    _photo("river.jpg", 140).save(src)
    out = tmp_path / "out" / "edited.png"
    rc = _cli(tiny_model_dir, "panorama", str(src), "--prompt", "make it red", "--output", str(out),
              "--preview", *_fast_flags(FAST_PANO))
    assert rc == 0
    assert Image.open(out).size == Image.open(src).size
    assert (out.parent / "edited.preview.png").exists()
    # Existing output: refused without --overwrite, replaced with it.
    assert _cli(tiny_model_dir, "panorama", str(src), "--prompt", "x", "--output", str(out), *_fast_flags(FAST_PANO)) == 2
    assert _cli(tiny_model_dir, "panorama", str(src), "--prompts", "a", "b", "--output", str(out), "--overwrite",
                *_fast_flags(FAST_PANO)) == 0


@pytest.mark.parametrize("fmt", ["mp4", "folder"])
def test_cli_video_end_to_end(tmp_path, tiny_model_dir, fmt):
    frames = synthetic_video(30)
    src = save_video(frames, tmp_path / ("in.mp4" if fmt == "mp4" else "in_frames"), fps=15.0)
    out = tmp_path / ("out.mp4" if fmt == "mp4" else "out_frames")
    rc = _cli(tiny_model_dir, "video", str(src), "--prompt", "make it red", "--output", str(out),
              *_fast_flags(FAST_VIDEO))
    assert rc == 0
    back, fps = load_video(out)
    assert len(back) == 30 and back[0].size == frames[0].size
    assert fps == pytest.approx(15.0 if fmt == "mp4" else 10.0, rel=0.02)


def test_cli_bad_inputs_exit_nonzero_with_one_message(tmp_path, tiny_model_dir, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    img = tmp_path / "img.png"
    _photo("river.jpg", 100).save(img)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["panorama", str(tmp_path / "missing.png"), "--prompt", "x", "--output", str(tmp_path / "o.png")],
         "input: expected an existing file"),
        (["panorama", str(text), "--prompt", "x", "--output", str(tmp_path / "o.png")], "input: expected an image file"),
        (["panorama", str(img), "--prompt", "x", "--output", str(img)], "output: expected a path different"),
        (["panorama", str(img), "--prompt", "", "--output", str(tmp_path / "o.png")], "prompt: expected a non-empty"),
        (["video", str(empty), "--prompt", "x", "--output", str(tmp_path / "o.mp4")], "input: expected a folder with image frames"),
        (["panorama", str(img), "--prompt", "x", "--output", str(tmp_path / "o.png"), "--preset", "nope"], "preset: expected"),
    ]
    for argv, message in cases:
        assert _cli(tiny_model_dir, *argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, (argv, err)
    rc = main(["panorama", str(img), "--prompt", "x", "--output", str(tmp_path / "o.png"),
               "--model", "nobody/no-such-model", "--device", "cpu"])
    assert rc == 2 and "--model: expected" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists() and not list(tmp_path.glob(".o.*"))


def test_presets_load_and_flags_override():
    """Presets list only what differs from the defaults (tests/test_config.py); flags override a preset."""
    assert load_preset("image", PanoramaConfig) == PanoramaConfig()
    assert load_preset("video", VideoConfig) == VideoConfig()
    assert load_preset("region", PanoramaConfig).blend != PanoramaConfig().blend
    args = parse(["panorama", "in.png", "--output", "o.png", "--prompt", "x", "--preset", "region", "--steps", "7"])
    assert args.config.steps == 7 and args.config.blend == load_preset("region", PanoramaConfig).blend
    args = parse(["video", "in.mp4", "--output", "o.mp4", "--prompt", "x", "--preset", "video", "--lr", "0.1"])
    assert args.config.lr == 0.1 and args.config.image_guidance_scale == 1.5


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_cli_help_documents_every_option(capsys):
    """tyro's help, in process (a subprocess would add nothing): every flag is listed with its docstring."""
    out = _help(capsys, ["panorama", "--help"])
    for flag in ["--prompt", "--prompts", "--output", "--model", "--steps", "--seed", "--device", "--preset",
                 "--overwrite", "--preview", "--window", "--stride", "--coupling", "--max-batch"]:
        assert flag in out, flag
    assert "official code" in out  # field docstrings (with their sources) reach the help text
    top = _help(capsys, ["--help"])
    assert "panorama" in top and "video" in top
