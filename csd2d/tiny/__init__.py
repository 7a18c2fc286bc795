"""Small InstructPix2Pix-format models built and trained by the project (no download needed)."""
