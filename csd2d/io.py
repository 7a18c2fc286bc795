"""Reading and writing images, frame folders and videos; atomic outputs and input/output checks.

Outputs never destroy what the run did not write: files are written beside the target and renamed over it;
folders are written beside the target, marked as ours (:data:`OUTPUT_MARKER`, listing the files we wrote) and
swapped in with renames, the old folder removed last. A folder that holds anything we did not write is
replaced only when the caller says so (``allow_foreign``). Temporaries are named ``.csd2d-tmp.*`` and
leftovers of killed runs are cleaned (or, for a swapped-out old output, restored) by the next run.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "InputError",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "OUTPUT_MARKER",
    "add_to_manifest",
    "write_text_atomic",
    "load_image",
    "save_image",
    "load_video",
    "save_video",
    "atomic_dir",
    "check_output",
    "check_file_output",
    "check_folder_output",
    "check_image_output",
    "check_video_output",
    "check_same_size",
    "edit_mode",
    "match_mode",
    "preview_path",
    "refuse_existing",
    "split_alpha",
    "to_8bit",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
VIDEO_CODECS = {".webm": "libvpx-vp9"}
"""Encoder per container; every other container gets libx264 (WebM allows only VP8/VP9/AV1)."""
DEFAULT_FPS = 10.0
OUTPUT_MARKER = ".csd2d-output"
"""File inside every folder csd2d writes: JSON listing the entries it wrote (what ``--overwrite`` may replace)."""
TMP_PREFIX = ".csd2d-tmp."
OLD_PREFIX = ".csd2d-old."
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class InputError(ValueError):
    """Bad user input. The message names the argument, what was expected and what was received."""


def _require_file(path: Path, arg: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{arg}: expected an existing file, got {str(path)!r} (not found)")
    return path


# ------------------------------------------------------------------------------------------ pixel modes
def to_8bit(image: Image.Image, arg: str = "image") -> Image.Image:
    """16-bit, 32-bit integer and float images → 8-bit ``L`` by their real range; other modes unchanged.

    16-bit modes (``I;16*``) scale 0..65535 to 0..255. ``I`` (32-bit integer, as TIFF/PNG decoders give) and
    ``F`` (float) take the smallest range that holds the data: 0..1 (float only), 0..255, 0..65535
    (and 0..2³²-1 for integers). Negative or non-finite values are refused: their meaning is unknown.
    """
    if image.mode not in WIDE_MODES:
        return image
    a = np.asarray(image, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{arg}: expected finite pixel values, got NaN or inf in a {image.mode} image")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0:
        raise InputError(f"{arg}: expected non-negative pixel values in a {image.mode} image, got a minimum of {lo:g}; "
                         "rescale it to 0..1 (float) or 0..65535 (16 bit) first")
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and hi <= 1.0:
        top = 1.0
    elif hi <= 255.0:
        top = 255.0
    elif hi <= 65535.0:
        top = 65535.0
    elif image.mode == "I":
        top = 2.0**32 - 1
    else:
        raise InputError(f"{arg}: expected float pixel values in 0..1, 0..255 or 0..65535, got a maximum of {hi:g}")
    out = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info)


def split_alpha(image: Image.Image) -> Tuple[Image.Image, Optional[Image.Image]]:
    """Return ``(rgb, alpha)``: grayscale/palette/16-bit images become RGB (:func:`to_8bit`); an alpha channel
    is kept aside."""
    image = to_8bit(image)
    alpha = None
    if _has_alpha(image):
        image = image.convert("RGBA")
        alpha = image.getchannel("A")
    return image.convert("RGB"), alpha


def edit_mode(image: Image.Image) -> str:
    """The mode an edit of ``image`` is returned in: ``L``/``LA`` for grayscale (any bit depth), else
    ``RGB``/``RGBA``."""
    gray = image.mode in GRAY_MODES
    if _has_alpha(image):
        return "LA" if gray else "RGBA"
    return "L" if gray else "RGB"


def match_mode(out: Image.Image, like: Image.Image) -> Image.Image:
    """``out`` (RGB or RGBA from the decoder) in :func:`edit_mode` of the input ``like``."""
    mode = edit_mode(like)
    return out if out.mode == mode else out.convert(mode)


# ------------------------------------------------------------------------------------------ images
def load_image(path: Path, arg: str = "input") -> Image.Image:
    """Open an image file fully into memory, upright (EXIF orientation applied, the tag reset in
    ``info["exif"]``). Any mode is accepted (see :func:`split_alpha`)."""
    path = _require_file(path, arg)
    if path.is_dir():
        raise InputError(f"{arg}: expected an image file, got the directory {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return upright if upright is not img else img.copy()
    except Exception as err:  # PIL raises several types for undecodable data
        raise InputError(f"{arg}: expected an image file ({', '.join(IMAGE_SUFFIXES)}), could not read "
                         f"{str(path)!r}: {err}") from err


_EXIF_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")


def save_image(image: Image.Image, path: Path, exif: Optional[bytes] = None) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename).
    ``exif`` (bytes, e.g. the input's ``info["exif"]``) is kept in formats that store it."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        if exif and path.suffix.lower() in _EXIF_SUFFIXES:
            image.save(tmp, exif=exif)
        else:
            image.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------ videos
def _natural_key(path: Path):
    """``frame2`` before ``frame10``: digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name.lower()) if t]


def _frame_files(folder: Path) -> List[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=_natural_key)


def load_video(path: Path, arg: str = "input") -> Tuple[List[Image.Image], float]:
    """Read a folder of frames, an mp4 (or other ffmpeg container) or a gif. Returns ``(frames, fps)``.

    Frame folders are read in natural file-name order (2 before 10), keep their mode (alpha, grayscale)
    and get 10 fps. All frames must have one size.
    """
    import imageio.v3 as iio

    path = _require_file(path, arg)
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise InputError(f"{arg}: expected a folder with image frames ({', '.join(IMAGE_SUFFIXES)}), "
                             f"got an empty folder {str(path)!r}")
        frames = [load_image(f, arg) for f in files]
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


def _video_codec(suffix: str, arg: str = "output") -> str:
    """The encoder for a container suffix, refused early when this PyAV build lacks it."""
    codec = VIDEO_CODECS.get(suffix, "libx264")
    import av

    if codec not in av.codecs_available:
        raise InputError(f"{arg}: a {suffix} video needs the {codec} encoder, which this PyAV/ffmpeg build lacks; "
                         "use .mp4, .gif or a folder")
    return codec


def save_video(frames: Sequence[Image.Image], path: Path, fps: float, allow_foreign: bool = False) -> Path:
    """Write frames to a folder (no suffix) of PNGs, a video file or a gif, atomically, at ``fps``.

    Folders go through :func:`atomic_dir` (``allow_foreign``: replace a folder csd2d did not write);
    frames keep their mode in folders and are flattened to RGB in video files and gifs.
    """
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == "":
        with atomic_dir(path, allow_foreign=allow_foreign) as tmp_dir:
            digits = max(5, len(str(len(frames))))
            for i, frame in enumerate(frames):
                frame.save(tmp_dir / f"frame_{i:0{digits}d}.png")
        return path
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"output: expected a folder, {', '.join(VIDEO_SUFFIXES)}, got {str(path)!r}")
    codec = _video_codec(suffix)
    tmp = _atomic_target(path)
    try:
        if suffix == ".gif":
            rgb = [f if f.mode in ("RGB", "L", "P") else f.convert("RGB") for f in frames]
            rgb[0].save(tmp, save_all=True, append_images=list(rgb[1:]), loop=0, duration=int(round(1000.0 / fps)))
        else:
            arr = np.stack([_even(np.asarray(f.convert("RGB"))) for f in frames])
            iio.imwrite(tmp, arr, plugin="pyav", codec=codec, fps=fps, out_pixel_format="yuv420p")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _even(a: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row/column when a side is odd."""
    h, w = a.shape[:2]
    return np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


# ------------------------------------------------------------------------------------------ atomic writes
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(path: Path) -> None:
    """Remove temporaries of ``path`` left by killed csd2d runs (their process is gone); a swapped-out old
    output whose replacement never arrived is put back."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            head = f"{prefix}{path.name}."
            if not entry.name.startswith(head):
                continue
            match = re.fullmatch(r"(\d+)\.[a-z0-9_]{8}(\..*)?", entry.name[len(head):])  # PID.RANDOM[.SUFFIX]
            if match is None or _pid_alive(int(match.group(1))):
                continue
            if prefix == OLD_PREFIX and not path.exists() and not path.is_symlink():
                os.replace(entry, path)
            else:
                _remove(entry)


def _atomic_target(path: Path) -> Path:
    """A temporary sibling of ``path`` (``.csd2d-tmp.NAME.PID.*SUFFIX``, same suffix so writers pick the format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.{os.getpid()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _manifest(folder: Path) -> Optional[List[str]]:
    """The entries csd2d wrote into ``folder`` (from its marker), or None when it has no valid marker."""
    try:
        data = json.loads((folder / OUTPUT_MARKER).read_text())
        return [str(n) for n in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path`` (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def add_to_manifest(folder: Path, name: str) -> None:
    """Record entry ``name`` of ``folder`` as written by us, when ``folder`` is an output csd2d wrote (it has a
    marker); other folders are left alone."""
    folder = Path(folder)
    names = _manifest(folder)
    if names is None or name in names:
        return
    tmp = folder / f"{TMP_PREFIX}{OUTPUT_MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps({"written_by": "csd2d", "files": sorted(names + [name])}, indent=1) + "\n")
    os.replace(tmp, folder / OUTPUT_MARKER)


def _swap_in(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path`` by renames; an existing ``path`` is moved aside first, removed last."""
    if not path.exists() and not path.is_symlink():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{path.name}.{os.getpid()}.", dir=path.parent))
    old.rmdir()
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_dir(path: Path, allow_foreign: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is marked as ours and swapped in for ``path``
    (:func:`check_folder_output` first refuses unsafe targets); on error it is removed."""
    path = Path(path)
    check_folder_output(path, overwrite=True, allow_foreign=allow_foreign)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.{os.getpid()}.", dir=path.parent))
    try:
        yield tmp
        names = sorted(p.name for p in tmp.iterdir() if p.name != OUTPUT_MARKER)
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": "csd2d", "files": names}, indent=1) + "\n")
        _swap_in(tmp, path)
    finally:
        _remove(tmp)


# ------------------------------------------------------------------------------------------ output checks
def refuse_existing(output: Path, overwrite: bool, arg: str = "output") -> None:
    """Refuse an output that exists unless ``overwrite``."""
    if (Path(output).exists() or Path(output).is_symlink()) and not overwrite:
        raise InputError(f"{arg}: {str(output)!r} already exists; pass --overwrite to replace it")


def _is_within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or inside it (both resolved)."""
    return path == folder or folder in path.parents


def _check_parent(path: Path, arg: str) -> None:
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{arg}: expected a path inside a folder, got {str(path)!r} whose parent "
                                 f"{str(parent)!r} is a file")
            return


def check_file_output(output: Path, arg: str = "--output", inputs: Sequence[Path] = (),
                      overwrite: bool = False) -> None:
    """Refuse a file output that is an input, an existing folder, under a file, or exists without ``overwrite``."""
    output = Path(output)
    res = output.resolve()
    for inp in inputs:
        if res == Path(inp).resolve():
            raise InputError(f"{arg}: expected a path different from the input, got {str(output)!r} (the input)")
    if output.is_dir():
        raise InputError(f"{arg}: expected a file path, got the existing folder {str(output)!r}")
    _check_parent(output, arg)
    refuse_existing(output, overwrite, arg)


def check_folder_output(output: Path, arg: str = "--output", inputs: Sequence[Path] = (), overwrite: bool = False,
                        allow_foreign: bool = False) -> None:
    """Refuse a folder output whose replacement could delete what csd2d did not write.

    Refused: the current directory or a folder containing it, a folder containing (or being) an input, an
    existing file, an existing folder without ``overwrite``, and a non-empty folder holding entries that its
    :data:`OUTPUT_MARKER` does not list (a folder csd2d did not write) unless ``allow_foreign``.
    """
    output = Path(output)
    res = output.resolve()
    if _is_within(Path.cwd().resolve(), res):
        raise InputError(f"{arg}: expected a new folder or one csd2d wrote, got {str(output)!r}, which is or contains "
                         "the current directory; choose a new folder name")
    for inp in inputs:
        if _is_within(Path(inp).resolve(), res):
            raise InputError(f"{arg}: expected a folder that does not contain the input, got {str(output)!r}, "
                             f"which contains {str(inp)!r}")
    _check_parent(output, arg)
    if not output.exists() and not output.is_symlink():
        return
    refuse_existing(output, overwrite, arg)
    if not output.is_dir():
        raise InputError(f"{arg}: expected a folder (a path without a suffix), got the existing file "
                         f"{str(output)!r}; remove it or choose another name")
    entries = sorted(p.name for p in output.iterdir())
    ours = _manifest(output)
    foreign = [n for n in entries if n != OUTPUT_MARKER and (ours is None or n not in ours)]
    if foreign and not allow_foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{arg}: expected a new folder or one csd2d wrote, got {str(output)!r}, which holds "
                         f"{len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} csd2d did not write ({shown}); "
                         "choose another folder, or pass --overwrite-foreign-folder to delete them with the folder")


def check_image_output(output: Path, mode: str, arg: str = "--output") -> None:
    """Refuse an image path whose suffix is unknown or whose format cannot store ``mode`` (RGBA as JPEG)."""
    suffix = Path(output).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{arg}: expected an image path ({', '.join(IMAGE_SUFFIXES)}), got {str(output)!r}")
    fmt = Image.registered_extensions()[suffix]
    try:
        Image.new(mode, (2, 2)).save(_io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError) as err:
        hint = " (the input has an alpha channel)" if "A" in mode else ""
        raise InputError(f"{arg}: expected a format that stores a {mode} image{hint}, got {str(output)!r} "
                         f"({fmt} cannot: {err}); use .png, .webp or .tif") from err


def check_video_output(output: Path, inputs: Sequence[Path] = (), overwrite: bool = False,
                       allow_foreign: bool = False, arg: str = "--output") -> None:
    """All checks of a video output (folder or file) that can run before any work."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix == "":
        check_folder_output(output, arg, inputs, overwrite, allow_foreign)
        return
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"{arg}: expected a folder (no suffix) or a video file ({', '.join(VIDEO_SUFFIXES)}), "
                         f"got {str(output)!r}")
    _video_codec(suffix, arg)
    check_file_output(output, arg, inputs, overwrite)


def preview_path(output: Path) -> Path:
    """The before/after preview beside ``output``: ``out.v2.png`` → ``out.v2.preview.png``, ``frames`` →
    ``frames.preview.png``."""
    output = Path(output)
    return output.with_name(output.stem + ".preview.png")


def check_output(input_path: Path, output: Path, overwrite: bool) -> None:
    """Refuse an output that is the input, or that exists without ``overwrite``."""
    if Path(output).resolve() == Path(input_path).resolve():
        raise InputError(f"output: expected a path different from the input, got {str(output)!r} (the input)")
    refuse_existing(output, overwrite)
