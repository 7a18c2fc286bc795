"""Checks of an ``ns-train csd-edit`` run before anything heavy loads: the scene, the output folder, the checkpoint.

Each failure is one :class:`SceneError` whose message names the file or flag, what was expected and what was
found. :class:`csd_nerfstudio.trainer.CSDTrainerConfig` runs :func:`check_run` before nerfstudio writes
``config.yml``, and ns-train prints the message as one line (exit 2) instead of a traceback that appears after
minutes of pretraining, or never (a 16-bit grayscale PNG is read as noise by nerfstudio's loader).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["SceneError", "check_run", "check_scene", "check_output_dir", "check_checkpoint", "latest_checkpoint",
           "IMAGE_MODES"]

IMAGE_MODES = ("L", "RGB", "RGBA")
"""PIL modes nerfstudio 1.1.5's ``InputDataset.get_numpy_image`` reads correctly (it casts to uint8 and repeats a
single channel). 16-bit grayscale (``I;16``) keeps only its low byte, a palette (``P``) image its indices."""

CHECKPOINT = re.compile(r"step-(\d+)\.ckpt")
"""nerfstudio's checkpoint names; its loader parses every entry of --load-dir this way."""


class SceneError(ValueError):
    """A run's input or output cannot be used: one line naming the file or flag, expected and found."""


def _read_transforms(path: Path) -> Dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise SceneError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise SceneError(f"{path}: expected JSON, got invalid JSON at line {err.lineno}, column {err.colno} "
                         f"({err.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise SceneError(f"{path}: expected an object with a 'frames' list (nerfstudio format), "
                         f"got {type(meta).__name__}{' without frames' if isinstance(meta, dict) else ''}")
    return meta


def _image_size(path: Path, where: str) -> Tuple[int, int]:
    """``(width, height)`` of a readable image in a mode nerfstudio reads correctly; decodes the whole image so
    that a truncated file is found now."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
    except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise SceneError(f"{path}: expected a readable image ({where}), got {type(err).__name__}: {err}") from None
    if mode not in IMAGE_MODES:
        what = {"I;16": "16-bit grayscale", "I;16B": "16-bit grayscale", "I;16L": "16-bit grayscale",
                "I": "32-bit grayscale", "F": "float grayscale", "P": "a palette image", "LA": "grayscale + alpha",
                "CMYK": "CMYK", "1": "1-bit"}.get(mode, f"mode {mode}")
        raise SceneError(f"{path}: expected an 8-bit grayscale, RGB or RGBA image ({where}), got {what} "
                         f"(PIL mode {mode}), which nerfstudio's loader misreads; convert it to 8-bit RGB")
    return size


def check_scene(data: Path, same_size: bool = True) -> int:
    """Check a nerfstudio-format scene (``data`` is its folder or its ``transforms.json``): readable JSON with at
    least two frames, every image present, readable and of a mode nerfstudio reads, and of one size when
    ``same_size`` (csd-edit's datamanager caches all training views in one tensor). Returns the frame count."""
    data = Path(data)
    if not data.exists():
        raise SceneError(f"--data: expected a scene folder (nerfstudio format: transforms.json and images), "
                         f"got {str(data)!r}, which does not exist")
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    if not transforms.is_file():
        raise SceneError(f"--data: expected {str(transforms)!r} (a nerfstudio scene; ns-process-data makes one "
                         f"from photos or a video), not found")
    meta = _read_transforms(transforms)
    frames = meta["frames"]
    if len(frames) < 2:
        raise SceneError(f"{transforms}: expected at least 2 frames (nerfstudio splits them into training and "
                         f"evaluation views), got {len(frames)}")
    root = transforms.parent
    sizes: Dict[Tuple[int, int], Path] = {}
    for k, frame in enumerate(frames):
        name = frame.get("file_path") if isinstance(frame, dict) else None
        if not isinstance(name, str) or not name:
            raise SceneError(f"{transforms}: frame {k}: expected a 'file_path', got {name!r}")
        image = root / name
        if not image.is_file():
            raise SceneError(f"{transforms}: frame {k}: expected the image {name!r}, not found ({image})")
        size = _image_size(image, f"frame {k} of {transforms.name}")
        if same_size and sizes and size not in sizes:
            (other_size, other), = list(sizes.items())[:1]
            raise SceneError(
                f"{image}: expected every image of the scene at one size (csd-edit caches the training views in "
                f"one tensor), got {size[0]}×{size[1]} here and {other_size[0]}×{other_size[1]} in {other}")
        sizes.setdefault(size, image)
    return len(frames)


def check_output_dir(path: Path, flag: str = "--output-dir") -> None:
    """The run folder ``path`` can be made and written: no existing part of it is a file, and its nearest
    existing folder accepts a new file (checked by writing one, so permissions, read-only mounts and quotas all
    count)."""
    path = Path(path).absolute()
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise SceneError(f"{flag}: expected a folder, but {str(part)!r} is a file (run folder {path})")
            try:
                fd, probe = tempfile.mkstemp(prefix=".csd-write-probe.", dir=part)
            except OSError as err:
                raise SceneError(f"{flag}: expected a folder we can write, but {str(part)!r} refuses a new file "
                                 f"({err.strerror or err}; run folder {path})") from None
            os.close(fd)
            os.unlink(probe)
            return


def latest_checkpoint(load_dir: Path, step: Optional[int] = None, flag: str = "--load-dir") -> Path:
    """The checkpoint nerfstudio's loader picks from ``load_dir`` (the latest, or ``step``), after checking the
    folder the way that loader needs it: it parses every entry's name as ``step-N.ckpt``."""
    load_dir = Path(load_dir)
    if not load_dir.exists():
        raise SceneError(f"{flag}: expected a run's nerfstudio_models folder, got {str(load_dir)!r}, which does "
                         f"not exist")
    if not load_dir.is_dir():
        raise SceneError(f"{flag}: expected a run's nerfstudio_models folder, got the file {str(load_dir)!r} "
                         f"(pass a single checkpoint with --load-checkpoint)")
    entries = sorted(p.name for p in load_dir.iterdir())
    steps = {int(m.group(1)): load_dir / n for n in entries if (m := CHECKPOINT.fullmatch(n))}
    if not steps:
        if (load_dir / "nerfstudio_models").is_dir():
            raise SceneError(f"{flag}: expected a run's nerfstudio_models folder, got the run folder "
                             f"{str(load_dir)!r}; pass {str(load_dir / 'nerfstudio_models')!r}")
        raise SceneError(f"{flag}: expected checkpoints (step-N.ckpt) in {str(load_dir)!r}, got "
                         f"{'an empty folder' if not entries else 'none (' + ', '.join(entries[:3]) + ')'}")
    stray = [n for n in entries if not CHECKPOINT.fullmatch(n)]
    if stray and step is None:
        raise SceneError(f"{flag}: expected only checkpoints (step-N.ckpt) in {str(load_dir)!r}, got also "
                         f"{stray[0]!r} (nerfstudio's loader reads every name there as a step)")
    if step is not None:
        if step not in steps:
            raise SceneError(f"--load-step: expected one of the steps in {str(load_dir)!r} "
                             f"({', '.join(map(str, sorted(steps)))}), got {step}")
        return steps[step]
    return steps[max(steps)]


def check_checkpoint(path: Path, flag: str = "--load-checkpoint") -> None:
    """``path`` is a nerfstudio checkpoint: a torch file that loads without code (``weights_only``, memory-mapped
    so that nothing is read twice) into a dict with ``step`` and ``pipeline``."""
    import torch

    import csd_nerfstudio  # noqa: F401  (allows numpy scalars in checkpoints, as nerfstudio's own load needs)

    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{flag}: expected a checkpoint file (step-N.ckpt), got {str(path)!r}, which "
                         f"{'is a folder' if path.is_dir() else 'does not exist'}")
    if not zipfile.is_zipfile(path):
        raise SceneError(f"{flag}: expected a nerfstudio checkpoint (a torch zip archive), got {str(path)!r}, "
                         f"which is not one (truncated, or another kind of file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        text = str(err)
        unpickler = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        reason = unpickler.group(1) if unpickler else (text.strip().splitlines() or [type(err).__name__])[0]
        raise SceneError(f"{flag}: expected a nerfstudio checkpoint, got {str(path)!r}, which holds more than "
                         f"tensors and numbers or is damaged ({reason[:200]})") from None
    if not isinstance(state, dict) or not {"step", "pipeline"} <= set(state):
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise SceneError(f"{flag}: expected a nerfstudio checkpoint (keys 'step' and 'pipeline'), got "
                         f"{str(path)!r} with {keys}")


def check_run(config) -> None:
    """Check an ns-train run (a TrainerConfig whose timestamp is set) before it writes or loads anything;
    raises :class:`SceneError`."""
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    dm = config.pipeline.datamanager
    data = getattr(dm, "data", None) or getattr(dm.dataparser, "data", None)
    if isinstance(dm.dataparser, NerfstudioDataParserConfig):
        check_scene(Path(data), same_size=isinstance(dm, VanillaDataManagerConfig))
    elif data is not None and not Path(data).exists():
        raise SceneError(f"--data: expected a scene, got {str(data)!r}, which does not exist")
    check_output_dir(config.get_base_dir())
    if config.load_dir is not None:
        check_checkpoint(latest_checkpoint(config.load_dir, config.load_step), "--load-dir")
    elif config.load_checkpoint is not None:
        check_checkpoint(config.load_checkpoint)
