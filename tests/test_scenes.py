"""The textured demo scene: nerfstudio can read it, its pictures are colourful and textured, and it is seeded."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import unavailable
from csd_nerfstudio.scenes import write_textured_scene

VIEWS, SIZE = 12, 32


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_textured_scene(tmp_path_factory.mktemp("textured"), views=VIEWS, size=SIZE, seed=0)


def frames(root):
    return [Image.open(root / f"images/frame_{v:03d}.png") for v in range(VIEWS)]


def test_nerfstudio_reads_the_scene_and_cameras_form_a_turntable(scene):
    try:
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    except ImportError:
        unavailable("nerfstudio is not installed (pip install 'csd-edit[nerfstudio]')")
    outputs = NerfstudioDataParserConfig(data=scene, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == VIEWS
    assert all(path.exists() for path in outputs.image_filenames)
    cameras = outputs.cameras
    assert cameras.width.flatten().tolist() == [SIZE] * VIEWS and cameras.height.flatten().tolist() == [SIZE] * VIEWS
    assert cameras.fx.flatten().tolist() == pytest.approx([SIZE * 1.2] * VIEWS)

    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["camera_model"] == "PINHOLE"
    c2w = np.array([frame["transform_matrix"] for frame in meta["frames"]])
    eyes = c2w[:, :3, 3]
    assert np.linalg.norm(eyes, axis=-1) == pytest.approx([3.0] * VIEWS)
    steps = np.diff(np.unwrap(np.arctan2(eyes[:, 1], eyes[:, 0])))
    assert steps == pytest.approx([2 * math.pi / VIEWS] * (VIEWS - 1))  # even azimuth steps, one way round
    assert np.all(eyes[:, 2] > 0.5) and np.ptp(eyes[:, 2]) < 1.0  # above the floor, gentle elevation changes
    looking = -c2w[:, :3, 2]  # OpenGL: the camera looks down its −z
    assert np.einsum("ij,ij->i", looking, -eyes / 3.0) == pytest.approx([1.0] * VIEWS)  # at the origin


def test_pictures_are_varied_colourful_and_textured(scene):
    detail = []
    for img in frames(scene):
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
        rgb = np.asarray(img, dtype=np.float64)
        assert rgb.std() > 25, "picture is nearly flat"
        hsv = np.asarray(img.convert("HSV"))
        saturated = (hsv[..., 1] > 80) & (hsv[..., 2] > 60)
        hist = np.bincount(hsv[..., 0][saturated].astype(int) * 12 // 256, minlength=12) / saturated.size
        assert (hist > 0.02).sum() >= 5, f"too few hues: {np.round(hist, 2)}"
        centre = np.asarray(img.convert("L"), dtype=np.float64)[10:24, 8:24]  # mostly the objects
        detail.append(np.abs(np.diff(centre, axis=1)).mean())
    assert np.median(detail) > 14, f"the objects look untextured: {np.round(detail, 1)}"


def test_same_seed_same_bytes_other_seed_other_pictures(scene, tmp_path):
    again = write_textured_scene(tmp_path / "again", views=VIEWS, size=SIZE, seed=0)
    other = write_textured_scene(tmp_path / "other", views=VIEWS, size=SIZE, seed=1)
    assert (again / "transforms.json").read_bytes() == (scene / "transforms.json").read_bytes()
    for v in range(VIEWS):
        name = f"images/frame_{v:03d}.png"
        assert (again / name).read_bytes() == (scene / name).read_bytes()
        assert not np.array_equal(np.asarray(Image.open(other / name)), np.asarray(Image.open(scene / name)))
