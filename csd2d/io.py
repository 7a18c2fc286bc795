"""Reading and writing images, frame folders, mp4 and gif; atomic outputs and input checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "InputError",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "load_image",
    "save_image",
    "load_video",
    "save_video",
    "atomic_dir",
    "check_output",
    "check_same_size",
    "refuse_existing",
    "split_alpha",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
DEFAULT_FPS = 10.0


class InputError(ValueError):
    """Bad user input. The message names the argument, what was expected and what was received."""


def _require_file(path: Path, arg: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{arg}: expected an existing file, got {str(path)!r} (not found)")
    return path


def load_image(path: Path, arg: str = "input") -> Image.Image:
    """Open an image file fully into memory. Any mode is accepted (see :func:`split_alpha`)."""
    path = _require_file(path, arg)
    if path.is_dir():
        raise InputError(f"{arg}: expected an image file, got the directory {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except Exception as err:  # PIL raises several types for undecodable data
        raise InputError(f"{arg}: expected an image file ({', '.join(IMAGE_SUFFIXES)}), could not read "
                         f"{str(path)!r}: {err}") from err


def split_alpha(image: Image.Image) -> Tuple[Image.Image, Optional[Image.Image]]:
    """Return ``(rgb, alpha)``: grayscale/palette images become RGB; an alpha channel is kept aside."""
    alpha = None
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        alpha = image.getchannel("A")
    return image.convert("RGB"), alpha


def _atomic_target(path: Path) -> Path:
    """A temporary sibling of ``path`` with the same suffix (so writers pick the same format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` whole, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_image(image: Image.Image, path: Path) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _frame_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_video(path: Path, arg: str = "input") -> Tuple[List[Image.Image], float]:
    """Read a folder of frames, an mp4 (or other ffmpeg container) or a gif. Returns ``(frames, fps)``.

    Frame folders are read in file-name order and get 10 fps. All frames must have one size.
    """
    import imageio.v3 as iio

    path = _require_file(path, arg)
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise InputError(f"{arg}: expected a folder with image frames ({', '.join(IMAGE_SUFFIXES)}), "
                             f"got an empty folder {str(path)!r}")
        frames = [split_alpha(load_image(f, arg))[0] for f in files]
        fps = DEFAULT_FPS
    else:
        suffix = path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise InputError(f"{arg}: expected a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames, "
                             f"got {str(path)!r}")
        try:
            if suffix == ".gif":
                with Image.open(path) as gif:
                    durations, frames = [], []
                    for i in range(getattr(gif, "n_frames", 1)):
                        gif.seek(i)
                        frames.append(gif.convert("RGB"))
                        durations.append(gif.info.get("duration", 100) or 100)
                fps = 1000.0 / float(np.mean(durations))
            else:
                arr = iio.imread(path, plugin="pyav")
                fps = float(iio.immeta(path, plugin="pyav").get("fps") or DEFAULT_FPS)
                frames = [Image.fromarray(a).convert("RGB") for a in arr]
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{arg}: expected a readable video, could not decode {str(path)!r}: {err}") from err
    if not frames:
        raise InputError(f"{arg}: expected at least one frame, got none in {str(path)!r}")
    check_same_size(frames, arg)
    return frames, fps


def check_same_size(frames: Sequence[Image.Image], arg: str = "frames") -> Tuple[int, int]:
    """Return the frames' common ``(width, height)``; refuse frames of different sizes, naming the first one."""
    first = frames[0].size
    for i, frame in enumerate(frames):
        if frame.size != first:
            raise InputError(f"{arg}: expected all frames of one size, frame 0 is {first[0]}x{first[1]} but "
                             f"frame {i} is {frame.size[0]}x{frame.size[1]}")
    return first


def save_video(frames: Sequence[Image.Image], path: Path, fps: float) -> Path:
    """Write frames to a folder (no suffix), an mp4/other container, or a gif, atomically, at ``fps``."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == "":
        with atomic_dir(path) as tmp_dir:
            digits = max(5, len(str(len(frames))))
            for i, frame in enumerate(frames):
                frame.save(tmp_dir / f"frame_{i:0{digits}d}.png")
        return path
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"output: expected a folder, {', '.join(VIDEO_SUFFIXES)}, got {str(path)!r}")
    tmp = _atomic_target(path)
    try:
        if suffix == ".gif":
            frames[0].save(tmp, save_all=True, append_images=list(frames[1:]), loop=0,
                           duration=int(round(1000.0 / fps)))
        else:
            arr = np.stack([_even(np.asarray(f.convert("RGB"))) for f in frames])
            iio.imwrite(tmp, arr, plugin="pyav", codec="libx264", fps=fps,
                        out_pixel_format="yuv420p")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _even(a: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row/column when a side is odd."""
    h, w = a.shape[:2]
    return np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def refuse_existing(output: Path, overwrite: bool) -> None:
    """Refuse an output that exists unless ``overwrite``."""
    if Path(output).exists() and not overwrite:
        raise InputError(f"output: {str(output)!r} already exists; pass --overwrite to replace it")


def check_output(input_path: Path, output: Path, overwrite: bool) -> None:
    """Refuse an output that is the input, or that exists without ``overwrite``."""
    if Path(output).resolve() == Path(input_path).resolve():
        raise InputError(f"output: expected a path different from the input, got {str(output)!r} (the input)")
    refuse_existing(output, overwrite)
