"""The edited scene as a product: ``OUTPUT/edited/``, a nerfstudio dataset that any method re-fits.

``transforms.json`` keeps the input's cameras (its intrinsics, distortion and ``transform_matrix`` of each
frame, unchanged) for the training views, and ``images/`` holds their edited images at the photos' own size
(PNG; RGBA scenes keep each photo's alpha). Paths the input's frames name beside their image (masks, depth, the
sparse point cloud) point back at the input, absolute. The evaluation views, which no edit touches, are left
out. The folder is written whole or not at all (:func:`csd2d.io.atomic_dir`), and nothing of the input scene is
ever written.

``ns-train splatfacto --data OUTPUT/edited`` (or nerfacto, or csd-edit again) fits the edited scene.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from csd2d.io import atomic_dir

__all__ = ["write_edited", "scene_transforms", "LINKED_KEYS"]

LINKED_KEYS = ("mask_path", "depth_file_path", "ply_file_path")
"""Frame and scene keys of nerfstudio's format that name a file beside the images; made absolute."""


def scene_transforms(datamanager) -> Path:
    """The ``transforms.json`` the datamanager's nerfstudio dataparser read."""
    data = Path(getattr(datamanager.config, "data", None) or datamanager.config.dataparser.data)
    return data if data.suffix == ".json" else data / "transforms.json"


def _frame_lookup(meta: Dict, root: Path):
    by_path = {(root / f["file_path"]).resolve(): f for f in meta["frames"]}
    by_name: Dict[str, List[Dict]] = {}
    for f in meta["frames"]:
        by_name.setdefault(Path(f["file_path"]).name, []).append(f)

    def lookup(filename: Path) -> Dict:
        frame = by_path.get(Path(filename).resolve())
        if frame is None:  # a downscaled copy (images_2/NAME): the frame of the same file name
            same = by_name.get(Path(filename).name, [])
            if len(same) != 1:
                raise ValueError(f"edited: cannot tell which frame of the scene {filename} is")
            frame = same[0]
        return frame

    return lookup


def _absolute(entry: Dict, root: Path) -> Dict:
    out = dict(entry)
    for key in LINKED_KEYS:
        if isinstance(out.get(key), str):
            out[key] = str((root / out[key]).resolve())
    return out


def write_edited(pipeline, out: Path) -> Path:
    """Write ``out`` (``OUTPUT/edited``) from ``pipeline`` (a :class:`CSDPipeline` set up for training); returns
    ``out``."""
    transforms = scene_transforms(pipeline.datamanager)
    meta = json.loads(transforms.read_text())
    root = transforms.parent
    lookup = _frame_lookup(meta, root)
    filenames = pipeline.datamanager.train_dataparser_outputs.image_filenames
    images = pipeline.edited_images()
    frames = []
    with atomic_dir(Path(out)) as tmp:
        (tmp / "images").mkdir()
        for i, (filename, image) in enumerate(zip(filenames, images)):
            frame = lookup(filename)
            with Image.open(root / frame["file_path"]) as photo:
                size = photo.size
            array = image.numpy()
            pil = Image.fromarray(array if array.shape[-1] == 4 else np.ascontiguousarray(array[..., :3]))
            if pil.size != size:
                pil = pil.resize(size, Image.BICUBIC)
            name = f"images/{i:05d}_{Path(frame['file_path']).stem}.png"
            pil.save(tmp / name)
            frames.append({**_absolute(frame, root), "file_path": name})
        scene = _absolute({k: v for k, v in meta.items() if k != "frames"}, root)
        (tmp / "transforms.json").write_text(json.dumps({**scene, "frames": frames}, indent=1) + "\n")
    return Path(out)
