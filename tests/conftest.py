"""Shared fixtures: tiny random InstructPix2Pix components, saved and loaded the way users load models."""

from __future__ import annotations

import os

# No network in tests: set before huggingface_hub / diffusers are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; fails loudly in CI when missing, skips elsewhere."""
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared data missing in CI: {path} (CI must have ../shared beside the clone)")
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A seeded tiny IP2P model written with save_pretrained (diffusers layout, safetensors)."""
    from csd2d.tiny.components import save_components, tiny_ip2p_components

    root = tmp_path_factory.mktemp("tiny_ip2p")
    components = tiny_ip2p_components(root / "tokenizer_src", seed=0)
    return save_components(components, root / "model")


@pytest.fixture(scope="session")
def guidance(tiny_model_dir):
    """The tiny model loaded back through the real classmethod."""
    from csd2d import IP2PGuidance

    return IP2PGuidance.from_pretrained(tiny_model_dir, device="cpu", torch_dtype=torch.float32)


@pytest.fixture(scope="session")
def editor(guidance):
    from csd2d import CSDEditor

    return CSDEditor(guidance)


# Fast knobs for the tiny model (VAE factor 2): 16-latent windows are 32 px.
FAST_PANO = dict(steps=3, window=16, stride=8, batch=4, vae_tile=64, vae_overlap=16)
FAST_VIDEO = dict(steps=2, batch=6, overlap=2)


def synthetic_video(num_frames: int = 30, size=(48, 40), seed: int = 0):
    """A camera pan across a random smooth texture: list of PIL frames."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    big = rng.random((h // 4 + 1, (w + 2 * num_frames) // 4 + 2, 3))
    big = np.kron(big, np.ones((4, 4, 1)))[:h]
    return [Image.fromarray((big[:, 2 * i : 2 * i + w] * 255).astype("uint8")) for i in range(num_frames)]


def unavailable(reason: str):
    """A test's prerequisite is missing: fail under CI=true (CI must run every test), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot run in CI: {reason}")
    pytest.skip(reason)
