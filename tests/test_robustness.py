"""Nothing lost, nothing silently wrong (issue 15): outputs never destroy what the run did not write, previews
are checked like outputs, unusual pixel formats and EXIF orientation are read right, everything checkable is
refused before the model loads with one line naming the flag, and a killed run leaves inputs intact and outputs
absent or complete."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_PANO, FAST_VIDEO, synthetic_video
from csd2d._launch import INTERRUPTED
from csd2d.cli import main
from csd2d.io import (OUTPUT_MARKER, InputError, atomic_dir, clean_stale, load_image, load_video, preview_path,
                      save_video, split_alpha, to_8bit)

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = ["--model", "nobody/no-such-model", "--device", "cpu", "--no-progress"]  # refused only if reached


def _sha1s(root: Path) -> dict:
    """sha1 of every file under ``root`` (hidden ones included), keyed by relative path."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fast(fast: dict) -> list:
    return [x for k, v in fast.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _cli(model, *args) -> int:
    return main([*args, "--model", str(model), "--device", "cpu", "--no-progress"])


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    return err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def clip(tmp_path) -> Path:
    folder = tmp_path / "d"
    folder.mkdir()
    save_video(synthetic_video(4), folder / "clip.gif", fps=10.0)
    (folder / "notes.txt").write_text("keep me")
    return folder / "clip.gif"


# ------------------------------------------------------------------------------------- 1. folder outputs
def test_overwrite_never_targets_the_current_directory_or_an_input_folder(tmp_path, clip, monkeypatch, capsys):
    before = _sha1s(tmp_path)
    monkeypatch.chdir(clip.parent)
    cases = [
        (["video", "clip.gif", "--prompt", "x", "--output", ".", "--overwrite"], "current directory"),
        (["video", "clip.gif", "--prompt", "x", "--output", "..", "--overwrite-foreign-folder"], "current directory"),
        (["video", str(clip), "--prompt", "x", "--output", str(clip.parent), "--overwrite"], "contains"),
        (["video", str(clip), "--prompt", "x", "--output", str(clip), "--overwrite"], "expected a path different"),
        (["demo", "--output", ".", "--overwrite", "--device", "cpu", "--no-progress"], "current directory"),
    ]
    for argv, message in cases:
        rc = main(argv) if argv[0] == "demo" else main([*argv, *NO_MODEL])
        assert rc == 2, argv
        assert message in _err(capsys), argv
    assert _sha1s(tmp_path) == before


def test_overwrite_replaces_only_our_folders_unless_told(tmp_path, clip, tiny_model_dir, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    before = _sha1s(tmp_path)
    argv = ["video", str(clip), "--prompt", "make it red", "--output", str(foreign), *_fast(FAST_VIDEO)]
    assert _cli(tiny_model_dir, *argv, "--overwrite") == 2
    assert "--overwrite-foreign-folder" in _err(capsys) and _sha1s(tmp_path) == before
    # Our own output is marked with the files it holds; --overwrite replaces it, but not once a user added a file.
    ours = tmp_path / "edited"
    assert _cli(tiny_model_dir, *argv[:4], "--output", str(ours), *_fast(FAST_VIDEO)) == 0
    listed = json.loads((ours / OUTPUT_MARKER).read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in ours.iterdir() if p.name != OUTPUT_MARKER) and len(listed) == 4
    assert _cli(tiny_model_dir, *argv[:4], "--output", str(ours), "--overwrite", *_fast(FAST_VIDEO)) == 0
    (ours / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert _cli(tiny_model_dir, *argv[:4], "--output", str(ours), "--overwrite", *_fast(FAST_VIDEO)) == 2
    assert "my_notes.txt" in _err(capsys) and (ours / "my_notes.txt").exists()
    # The explicit flag replaces a foreign folder whole.
    assert _cli(tiny_model_dir, *argv, "--overwrite-foreign-folder") == 0
    assert sorted(p.name for p in foreign.iterdir()) == sorted([OUTPUT_MARKER, *listed])
    assert _sha1s(clip.parent) == {k[2:]: v for k, v in before.items() if k.startswith("d/")}


def test_folder_is_replaced_by_rename_and_a_failed_write_keeps_the_old_one(tmp_path):
    out = tmp_path / "out"
    save_video(synthetic_video(3), out, fps=10.0)
    old = _sha1s(out)
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "frame_00000.png").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert _sha1s(out) == old
    inode = out.stat().st_ino
    save_video(synthetic_video(5), out, fps=10.0)
    assert len(load_video(out)[0]) == 5 and out.stat().st_ino != inode  # a new folder, renamed in
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left beside it


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    save_video(synthetic_video(3), out, fps=10.0)
    old = _sha1s(out)
    replace = os.replace

    def failing_replace(src, dst):  # the new folder cannot be renamed in (e.g. a full or read-only disk)
        if Path(src).name.startswith(".csd2d-tmp.") and Path(dst) == out:
            raise OSError("no space left")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="no space left"):
        save_video(synthetic_video(5), out, fps=10.0)
    assert _sha1s(out) == old and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_temporaries_of_killed_runs_are_cleaned_and_a_swapped_out_output_restored(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "out"
    (tmp_path / f".csd2d-tmp.out.{dead}.abcdefgh").mkdir()
    (tmp_path / f".csd2d-tmp.out.png.{dead}.abcdefgh.png").write_bytes(b"half")
    (tmp_path / f".csd2d-tmp.out.{alive}.abcdefgh").mkdir()  # a run still going: left alone
    (tmp_path / f".csd2d-tmp.out.1.{dead}.abcdefgh").mkdir()  # another output's ("out.1"): left alone
    old = tmp_path / f".csd2d-old.out.{dead}.abcdefgh"
    os.replace(save_video(synthetic_video(2), tmp_path / "staged", fps=10.0), old)  # killed between the renames
    clean_stale(out)
    assert len(load_video(out)[0]) == 2  # the old output is back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".csd2d-tmp.out.{alive}.abcdefgh", "out",
                                                                f".csd2d-tmp.out.png.{dead}.abcdefgh.png",
                                                                f".csd2d-tmp.out.1.{dead}.abcdefgh"])
    clean_stale(tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".csd2d-tmp.out.{alive}.abcdefgh", "out",
                                                                f".csd2d-tmp.out.1.{dead}.abcdefgh"])


# ------------------------------------------------------------------------------------- 2. previews
def test_preview_name_and_checks(tmp_path, tiny_model_dir, capsys):
    assert preview_path(Path("a/out.v2.png")) == Path("a/out.v2.preview.png")
    assert preview_path(Path("frames")) == Path("frames.preview.png")
    src = tmp_path / "photo.preview.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8")).save(src)
    (tmp_path / "out.preview.png").write_bytes(b"someone else's")
    before = _sha1s(tmp_path)
    argv = ["panorama", str(src), "--prompt", "make it red", "--preview", *_fast(FAST_PANO)]
    assert _cli(tiny_model_dir, *argv, "--output", str(tmp_path / "photo.png"), "--overwrite") == 2
    assert "--preview: expected a path different from the input" in _err(capsys)
    (tmp_path / "out.v2.preview.png").write_bytes(b"old preview")
    assert _cli(tiny_model_dir, *argv, "--output", str(tmp_path / "out.v2.png")) == 2
    assert "--preview: 'out.v2.preview.png" in _err(capsys).replace(str(tmp_path) + "/", "")
    assert _sha1s(tmp_path) == {**before, "out.v2.preview.png": hashlib.sha1(b"old preview").hexdigest()}
    assert not (tmp_path / "photo.png").exists() and not (tmp_path / "out.v2.png").exists()
    assert _cli(tiny_model_dir, *argv, "--output", str(tmp_path / "out.v2.png"), "--overwrite") == 0
    assert Image.open(tmp_path / "out.v2.preview.png").size == (48, 80)
    assert (tmp_path / "out.preview.png").read_bytes() == b"someone else's"


# ------------------------------------------------------------------------------------- 4. bit depths
def test_16_bit_32_bit_and_float_images_are_read_by_their_range(editor):
    rng = np.random.default_rng(0)
    gray8 = (rng.random((40, 48)) * 255).astype(np.uint8)
    ref = Image.fromarray(gray8)
    wide = {
        "I;16": Image.fromarray(gray8.astype(np.uint16) * 257),
        "I": Image.fromarray(gray8.astype(np.int32) * 257),
        "F": Image.fromarray(gray8.astype(np.float32) / 255.0),
    }
    for mode, img in wide.items():
        assert img.mode == mode
        assert np.array_equal(np.asarray(to_8bit(img)), gray8), mode
        assert np.array_equal(np.asarray(split_alpha(img)[0]), np.asarray(ref.convert("RGB"))), mode
    out_ref = editor.edit_panorama(ref, "make it red", progress=False, **FAST_PANO)
    out16 = editor.edit_panorama(wide["I;16"], "make it red", progress=False, **FAST_PANO)
    assert out16.mode == "L" and np.array_equal(np.asarray(out16), np.asarray(out_ref))
    with pytest.raises(InputError, match="image: expected non-negative pixel values"):
        to_8bit(Image.fromarray(np.full((4, 4), -3.0, np.float32)))
    with pytest.raises(InputError, match="image: expected finite pixel values"):
        to_8bit(Image.fromarray(np.full((4, 4), np.nan, np.float32)))


def test_16_bit_png_through_the_cli(tmp_path, tiny_model_dir):
    gray8 = (np.random.default_rng(1).random((40, 48)) * 255).astype(np.uint8)
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "in16.png")
    Image.fromarray(gray8).save(tmp_path / "in8.png")
    for name in ("in16", "in8"):
        assert _cli(tiny_model_dir, "panorama", str(tmp_path / f"{name}.png"), "--prompt", "make it red",
                    "--output", str(tmp_path / f"{name}_out.png"), *_fast(FAST_PANO)) == 0
    a, b = Image.open(tmp_path / "in16_out.png"), Image.open(tmp_path / "in8_out.png")
    assert a.mode == b.mode == "L" and np.array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------- 5. EXIF
def test_exif_orientation_is_applied_and_exif_kept(tmp_path, tiny_model_dir):
    img = Image.fromarray((np.random.default_rng(2).random((40, 64, 3)) * 255).astype("uint8"))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "PhoneCo"
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    up = load_image(tmp_path / "phone.jpg")
    assert up.size == (40, 64)
    out = tmp_path / "out.jpg"
    assert _cli(tiny_model_dir, "panorama", str(tmp_path / "phone.jpg"), "--prompt", "make it red", "--output",
                str(out), *_fast(FAST_PANO)) == 0
    edited = Image.open(out)
    assert edited.size == (40, 64)
    assert edited.getexif().get(0x010F) == "PhoneCo" and edited.getexif().get(0x0112, 1) == 1


# ------------------------------------------------------------------------------------- 7. early checks
def test_output_problems_are_refused_before_the_model_loads(tmp_path, clip, capsys):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 40), (10, 20, 30, 128)).save(rgba)
    (tmp_path / "out.png").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    before = _sha1s(tmp_path)
    pano = ["panorama", str(rgba), "--prompt", "x", "--output"]
    video = ["video", str(clip), "--prompt", "x", "--output"]
    cases = [
        ([*pano, str(tmp_path / "o.jpg")], "--output: expected a format that stores a RGBA image"),
        ([*pano, str(tmp_path / "out.png"), "--overwrite"], "--output: expected a file path, got the existing folder"),
        ([*pano, str(tmp_path / "afile" / "o.png")], "is a file"),
        ([*video, str(tmp_path / "out.txt")], "--output: expected a folder (no suffix) or a video file"),
        ([*video, str(tmp_path / "afile"), "--overwrite"],
         "--output: expected a folder (a path without a suffix), got the existing file"),
        ([*video, str(tmp_path / "out.png"), "--overwrite"], "--output: expected a folder (no suffix) or a video file"),
    ]
    for argv, message in cases:
        assert main([*argv, *NO_MODEL]) == 2, argv
        assert message in _err(capsys), argv
    assert _sha1s(tmp_path) == before


def test_webm_output_is_written_and_read_back(tmp_path):
    frames = synthetic_video(6)
    back, fps = load_video(save_video(frames, tmp_path / "clip.webm", fps=12.0))
    assert len(back) == 6 and back[0].size == frames[0].size and fps == pytest.approx(12.0, rel=0.02)
    err = np.abs(np.asarray(back[3], float) - np.asarray(frames[3], float)).mean()
    assert err < 20  # lossy, but the same picture


# ------------------------------------------------------------------------------------- 10. messages
def test_one_line_messages_name_the_flag(tmp_path, clip, tiny_model_dir, capsys, monkeypatch):
    before = _sha1s(tmp_path)
    out = ["--output", str(tmp_path / "o")]
    assert main(["video", str(clip), "--prompt", "x", *out, "--steps", "0"]) == 2
    err = _err(capsys)
    assert "--steps: expected a positive integer, got 0" in err and "tyro" not in err
    assert main(["video", str(clip), "--prompt", "x", *out, "--model", str(tiny_model_dir), "--device", "mps"]) == 2
    assert "--device: expected an available device, got 'mps'" in _err(capsys)
    assert main(["video", str(clip), "--prompt", "x", *out, "--model", str(tmp_path), "--device", "cpu"]) == 2
    err = _err(capsys)
    assert "--model: expected" in err and "HF_HUB_OFFLINE" not in err  # a local folder: the cache is irrelevant
    assert os.environ.get("HF_HUB_OFFLINE") == "1"

    class FieldError(ValueError):  # the shape of csd2d.config.ConfigError: `.field` names the dataclass field
        field = "vae_tile"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    def bad_config(*a, **k):
        raise FieldError("vae_tile: expected at least 64, got 32")

    from csd2d import editor as editor_module

    monkeypatch.setattr(editor_module.CSDEditor, "from_pretrained", interrupted)
    assert main(["video", str(clip), "--prompt", "x", *out, "--device", "cpu"]) == 130
    assert capsys.readouterr().err.strip() == "csd2d: interrupted (outputs are written whole or not at all)"
    monkeypatch.setattr(editor_module.CSDEditor, "from_pretrained", bad_config)
    assert main(["video", str(clip), "--prompt", "x", *out, "--device", "cpu"]) == 2
    assert "error: --vae-tile: expected at least 64, got 32" in _err(capsys)
    assert _sha1s(tmp_path) == before


# ------------------------------------------------------------------------------------- 11. long prompts
def test_long_prompt_warns_once_with_the_dropped_token_count(guidance, recwarn):
    limit = guidance.tokenizer.model_max_length
    words = " ".join(["red"] * (limit + 5))
    n = len(guidance.tokenizer(words, verbose=False).input_ids)
    guidance.encode_prompt([words, "make it red"])
    guidance.encode_prompt(words)
    msgs = [str(w.message) for w in recwarn if "prompt: expected at most" in str(w.message)]
    assert len(msgs) == 1 and n > limit
    assert msgs[0].startswith(f"prompt: expected at most {limit} tokens, got {n}; the last {n - limit} are ignored ('")
    assert "red red" in msgs[0] and len(msgs[0]) < 200


# ------------------------------------------------------------------------------------- minor
def test_frame_folders_sort_naturally(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 11, 3):
        Image.new("L", (8, 8), i).save(folder / f"frame{i}.png")
    frames, _ = load_video(folder)
    assert [f.getpixel((0, 0)) for f in frames] == [1, 2, 3, 10, 11]


def test_video_keeps_alpha_and_grayscale_like_panorama(editor, tmp_path):
    frames = synthetic_video(5)
    alpha = Image.linear_gradient("L").resize(frames[0].size)
    rgba = [f.convert("RGBA") for f in frames]
    for f in rgba:
        f.putalpha(alpha)
    out = editor.edit_video(rgba, "make it red", progress=False, **FAST_VIDEO)
    assert all(o.mode == "RGBA" and np.array_equal(np.asarray(o.getchannel("A")), np.asarray(alpha)) for o in out)
    gray = editor.edit_video([f.convert("L") for f in frames], "make it red", progress=False, **FAST_VIDEO)
    assert all(o.mode == "L" for o in gray)
    pano = editor.edit_panorama(frames[0].convert("L"), "make it red", progress=False, **FAST_PANO)
    assert pano.mode == "L"
    # A folder of RGBA frames comes back with its alpha.
    save_video(rgba, tmp_path / "in", fps=10.0)
    loaded, _ = load_video(tmp_path / "in")
    assert loaded[0].mode == "RGBA"


@pytest.mark.parametrize("command", ["video", "panorama", "demo"])
def test_cli_switches_ctrl_c_to_unwinding_once_the_model_has_loaded(command, tmp_path, clip, monkeypatch):
    """csd2d.cli.run calls interrupts_raise() after loading and before anything is written."""
    from csd2d import _launch
    from csd2d.editor import CSDEditor

    seen = []

    def record(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGINT))
        raise KeyboardInterrupt  # stop there; main answers 130

    monkeypatch.setattr(CSDEditor, "edit_video", record)
    monkeypatch.setattr(CSDEditor, "edit_panorama", record)
    monkeypatch.setattr("csd2d.demo.run_demo", record)
    argv = {"video": ["video", str(clip), "--prompt", "x", "--output", str(tmp_path / "o.gif")],
            "panorama": ["panorama", str(tmp_path / "p.png"), "--prompt", "x", "--output", str(tmp_path / "o.png")],
            "demo": ["demo", "--output", str(tmp_path / "demo")]}[command]
    Image.new("RGB", (96, 64)).save(tmp_path / "p.png")
    previous = signal.signal(signal.SIGINT, _launch._exit_now)  # as the console entry point installs it
    try:
        assert main([*argv, "--model", "embedded", "--device", "cpu", "--no-progress"]) == 130
        assert seen == [signal.default_int_handler]
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------------- fault injection
INTERRUPTED_MAIN = r"""
import os, signal, sys, time, types
import csd2d._launch as launch

def main():
    if sys.argv[1] == "editing":
        launch.interrupts_raise()  # what csd2d.cli.run calls once the model has loaded
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        print("raised")
        if sys.argv[1] == "editing":
            return 130
    print("went on")  # a library that swallowed the interrupt in the middle of an import
    return 0

sys.modules["csd2d.cli"] = types.SimpleNamespace(main=main)
launch.entrypoint()
"""


@pytest.mark.parametrize("phase", ["loading", "editing"])
def test_ctrl_c_ends_at_once_while_loading_and_unwinds_while_editing(phase):
    """Before the model has loaded Ctrl-C exits at once (nothing to clean up, and a library caught mid-import may
    swallow a KeyboardInterrupt); after csd2d.cli.run's interrupts_raise() it raises, so writers clean up."""
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_MAIN, phase], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 130, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.split() == ([] if phase == "loading" else ["raised"]), proc.stdout
    assert proc.stderr.strip().splitlines()[-1:] == ([INTERRUPTED] if phase == "loading" else []), proc.stderr


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_input_intact_and_output_absent_or_complete(tmp_path):
    src = tmp_path / "in"
    save_video(synthetic_video(8, size=(64, 64)), src, fps=10.0)
    inputs = _sha1s(src)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "csd2d", "video", str(src), "--prompt", "make it red", "--output", str(out),
           "--model", "embedded", "--device", "cpu", "--steps", "2", "--batch", "4", "--no-progress", "--overwrite"]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def complete(folder: Path) -> bool:
        names = json.loads((folder / OUTPUT_MARKER).read_text())["files"]
        return len(names) == 8 and all(Image.open(folder / n).size == (64, 64) for n in names)

    start = time.time()
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    full = time.time() - start
    assert first.returncode == 0, first.stderr[-2000:]
    assert "it/s]" not in first.stderr, "--no-progress leaves no progress bar, the libraries' included"
    assert complete(out)
    rng = random.Random(0)
    for i in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.1) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _sha1s(src) == inputs, i
        assert not out.exists() or complete(out), i
    # Ctrl-C while torch is still importing (1 s in; the launcher itself imports in about 0.1 s), then mid-run.
    # Both end in one line and 130 (or 0 if the run had finished), never Python's own traceback and -SIGINT.
    for delay in (1.0, 0.8 * full):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 130), (delay, proc.returncode, err[-2000:])
        if proc.returncode == 130:
            assert err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in err, err[-2000:]
        assert _sha1s(src) == inputs and (not out.exists() or complete(out))
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    assert complete(out) and _sha1s(src) == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # stale temporaries cleaned
