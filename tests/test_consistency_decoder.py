"""Decoding with a tiny random ConsistencyDecoderVAE, saved with save_pretrained and loaded by path."""

from pathlib import Path

import pytest
import torch

from csd2d import CSDEditor, IP2PGuidance, ModelLoadError
from csd2d.guidance import to_zero_one


def _tiny_decoder(directory: Path, blocks=(32, 64)) -> Path:
    from diffusers import ConsistencyDecoderVAE

    torch.manual_seed(0)
    n = len(blocks)
    ConsistencyDecoderVAE(
        latent_channels=4, sample_size=32, encoder_block_out_channels=blocks,
        encoder_down_block_types=("DownEncoderBlock2D",) * n, encoder_layers_per_block=1,
        decoder_block_out_channels=blocks, decoder_down_block_types=("ResnetDownsampleBlock2D",) * n,
        decoder_up_block_types=("ResnetUpsampleBlock2D",) * n, decoder_layers_per_block=1,
    ).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> Path:
    return _tiny_decoder(tmp_path_factory.mktemp("consistency_decoder") / "decoder")


@pytest.fixture(scope="module")
def cd_guidance(tiny_model_dir, decoder_dir) -> IP2PGuidance:
    return IP2PGuidance.from_pretrained(tiny_model_dir, consistency_decoder=str(decoder_dir))


def test_decode_latents_uses_the_consistency_decoder(guidance, cd_guidance, decoder_dir):
    from diffusers import ConsistencyDecoderVAE

    assert (decoder_dir / "diffusion_pytorch_model.safetensors").exists()
    latents = guidance.encode_images(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    out = cd_guidance.decode_latents(latents)
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, cd_guidance.decode_latents(latents))  # seeded: same latents, same images
    assert not torch.allclose(out, guidance.decode_latents(latents), atol=1e-2)  # not the VAE
    ref_model = ConsistencyDecoderVAE.from_pretrained(decoder_dir, use_safetensors=True)
    with torch.no_grad():
        ref = ref_model.decode(latents / ref_model.config.scaling_factor, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, to_zero_one(ref.sample), atol=1e-5)
    assert torch.equal(cd_guidance.encode_images(torch.zeros(1, 3, 32, 32)), guidance.encode_images(torch.zeros(1, 3, 32, 32)))


def test_editor_round_trip_with_tiles(cd_guidance):
    from PIL import Image

    from csd2d import PanoramaConfig

    image = Image.new("RGB", (128, 64), (200, 80, 30))  # two 64 px tiles wide (the smallest tile allowed)
    out = CSDEditor(cd_guidance).reconstruct([image], PanoramaConfig(window=16, stride=8, vae_tile=64, vae_overlap=16))
    assert out[0].size == image.size


def test_bad_or_mismatched_decoder_names_the_flag(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="--consistency-decoder: expected a ConsistencyDecoderVAE"):
        IP2PGuidance.from_pretrained(tiny_model_dir, consistency_decoder=str(tmp_path / "none"),
                                     consistency_decoder_arg="--consistency-decoder")
    wrong = _tiny_decoder(tmp_path / "wrong", blocks=(32, 32, 64))  # 4× upsampling; the tiny VAE has 2×
    with pytest.raises(ModelLoadError, match="--consistency-decoder: expected a decoder for the model's VAE"):
        IP2PGuidance.from_pretrained(tiny_model_dir, consistency_decoder=str(wrong),
                                     consistency_decoder_arg="--consistency-decoder")


def test_cli_flag_reaches_the_loader(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from csd2d.cli import main

    Image.new("RGB", (32, 32), "red").save(tmp_path / "in.png")
    argv = ["panorama", str(tmp_path / "in.png"), "--prompt", "make it red", "--output", str(tmp_path / "out.png"),
            "--model", str(tiny_model_dir), "--device", "cpu", "--consistency-decoder", str(tmp_path / "missing")]
    assert main(argv) == 2
    assert "--consistency-decoder: expected a ConsistencyDecoderVAE" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
