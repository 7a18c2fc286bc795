"""csd2d without nerfstudio: ``pip install csd-edit`` gives csd2d, ``pip install "csd-edit[nerfstudio]"`` the plugin.

``make test`` builds ``.venv-core``: its own venv (no system site packages) with the project installed as a wheel
without the nerfstudio extra, the way a user who edits panoramas and videos installs it. These tests run csd2d
there, in subprocesses started outside the repository, so that only the installed package is importable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import unavailable

REPO = Path(__file__).resolve().parents[1]
EXTRA = 'pip install "csd-edit[nerfstudio]"'


@pytest.fixture(scope="module")
def core_python() -> Path:
    """The interpreter of the venv without nerfstudio (``make core``; ``CSD_CORE_PYTHON`` overrides the path)."""
    path = Path(os.environ.get("CSD_CORE_PYTHON") or REPO / ".venv-core" / "bin" / "python")
    if not path.exists():
        unavailable(f"no venv without nerfstudio at {path} (`make core` builds it; `make test` does too)")
    return path


def run_core(core_python: Path, args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


PROBE = r"""
import importlib.metadata as md, importlib.util, json, sys
import csd2d
try:
    import csd_nerfstudio
    error = None
except ImportError as err:
    error = str(err)
print(json.dumps({
    "prefix": sys.prefix,
    "csd2d": csd2d.__file__,
    "nerfstudio_found": importlib.util.find_spec("nerfstudio") is not None,
    "requires": md.requires("csd-edit"),
    "plugin_error": error,
}))
"""


def test_core_install_has_csd2d_and_no_nerfstudio(core_python, tmp_path):
    probe = json.loads(run_core(core_python, [str(core_python), "-c", PROBE], tmp_path).stdout)
    assert not probe["nerfstudio_found"]
    # The installed csd2d is the venv's own copy (a wheel), and it is the current code.
    installed = Path(probe["csd2d"]).parent
    assert installed.is_relative_to(probe["prefix"]), installed
    sources = sorted(p.relative_to(REPO / "csd2d") for p in (REPO / "csd2d").rglob("*.py"))
    stale = [str(p) for p in sources
             if not (installed / p).exists() or digest(installed / p) != digest(REPO / "csd2d" / p)]
    assert not stale, f"{core_python} holds an old csd2d ({stale}); run `make core`"
    # nerfstudio is declared only under the extra, and importing the plugin names that extra.
    nerfstudio = [r for r in probe["requires"] if r.startswith("nerfstudio")]
    assert nerfstudio and all('extra == "nerfstudio"' in r for r in nerfstudio), probe["requires"]
    assert probe["plugin_error"] is not None and EXTRA in probe["plugin_error"], probe["plugin_error"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_csd2d_cli_edits_a_panorama_without_nerfstudio(core_python, tmp_path):
    rng = np.random.default_rng(0)
    image = (np.kron(rng.random((16, 32, 3)), np.ones((4, 4, 1))) * 255).astype(np.uint8)  # 128 x 64 px
    Image.fromarray(image).save(tmp_path / "in.png")
    # The embedded model (weights shipped in the wheel), 16-latent windows: a few seconds on CPU.
    run_core(core_python, [str(core_python.parent / "csd2d"), "panorama", "in.png", "--model", "embedded",
                           "--device", "cpu", "--prompt", "make it night", "--steps", "3", "--window", "16",
                           "--stride", "8", "--batch", "4", "--output", "out.png", "--no-progress"], tmp_path)
    edited = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"), dtype=np.float64)
    assert edited.shape == image.shape
    assert edited.mean() < 0.8 * image.mean(), (edited.mean(), image.mean())  # "make it night" darkens
    assert np.array_equal(np.asarray(Image.open(tmp_path / "in.png")), image)  # the input is not overwritten


PRESETS = r"""
import json
from pathlib import Path
import csd2d
from csd2d.config import PRESET_DIR, PanoramaConfig, VideoConfig, load_preset, preset_names
loaded = {name: type(load_preset(name, VideoConfig if name == "video" else PanoramaConfig)).__name__
          for name in preset_names()}
print(json.dumps({"dir": str(PRESET_DIR), "package": str(Path(csd2d.__file__).parent), "loaded": loaded}))
"""


def test_presets_load_from_the_installed_wheel(core_python, tmp_path):
    """A regular (non-editable) install carries the presets: every one loads from the venv's own copy."""
    probe = json.loads(run_core(core_python, [str(core_python), "-c", PRESETS], tmp_path).stdout)
    assert Path(probe["dir"]).parent == Path(probe["package"])
    assert not Path(probe["dir"]).is_relative_to(REPO / "csd2d")  # the wheel's copy, not the checkout's
    assert "site-packages" in Path(probe["dir"]).parts
    assert probe["loaded"] == {"image": "PanoramaConfig", "region": "PanoramaConfig", "video": "VideoConfig"}
