"""Small InstructPix2Pix-format models built and trained by the project (no download needed)."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""The embedded model (``IP2PGuidance.from_pretrained("embedded")``), written by ``python -m csd2d.tiny.train``."""
