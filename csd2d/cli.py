"""``csd2d``: command-line panorama and video editing with Collaborative Score Distillation.

    csd2d panorama INPUT --prompt "..." --output OUT.png [--model ID_OR_PATH] [--steps N] [--seed S]
    csd2d video INPUT --prompt "..." --output OUT.mp4|OUT.gif|DIR [...]
    csd2d demo [--output DIR]      CSD vs independent editing with the embedded model, offline on a CPU

Every option of the API's config dataclasses is a flag; ``--preset NAME_OR_FILE`` loads one of the presets
in ``configs/`` (image, region, video) first and flags override it.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple, Union

import tyro
from typing_extensions import Annotated

from .config import PanoramaConfig, VideoConfig, load_preset
from .guidance import DEFAULT_MODEL, EMBEDDED_MODEL, ModelLoadError
from .io import InputError

__all__ = ["DemoArgs", "PanoramaArgs", "VideoArgs", "main", "entrypoint"]

Flat = tyro.conf.OmitArgPrefixes


@dataclass
class _Common:
    model: str = DEFAULT_MODEL
    """InstructPix2Pix model: hub id or local directory (diffusers layout, safetensors)."""
    device: str = "auto"
    """Torch device, e.g. cuda, cuda:1, cpu; auto picks cuda when available."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Model weights dtype; auto is float16 on CUDA and float32 on CPU."""
    attention: Literal["sdpa", "sliced"] = "sdpa"
    """UNet attention: sdpa (PyTorch scaled-dot-product, diffusers' default) or sliced (attention slicing, lower
    memory, slower; the official CSD code's choice)."""
    compile: bool = False
    """torch.compile the UNet (slow first step, faster later steps on a GPU)."""
    offload: bool = False
    """Keep the text encoder and VAE on the CPU, moving each to the device only while it runs (saves their
    device memory during the optimisation)."""
    preset: Optional[str] = None
    """Preset name in configs/ (image, region, video) or a YAML file; other flags override it."""
    overwrite: bool = False
    """Replace an existing output."""
    preview: bool = False
    """Also write a before/after preview PNG next to the output (OUT.preview.png)."""
    progress: bool = True
    """Show a progress bar."""

    def memory_kwargs(self) -> dict:
        """The memory controls of CSDEditor.from_pretrained, from these flags."""
        return dict(attention=self.attention, compile_unet=self.compile, offload=self.offload)


@dataclass
class PanoramaArgs(_Common):
    """Edit a panorama or large image (overlapping windows are the CSD particles)."""

    input: tyro.conf.Positional[Path] = tyro.MISSING
    """Input image (png, jpg, ...; RGBA and grayscale are fine)."""
    output: Path = tyro.MISSING
    """Output image path."""
    prompt: Optional[str] = None
    """Editing instruction, e.g. "turn into van gogh style painting"."""
    prompts: Tuple[str, ...] = ()
    """Region editing: several instructions laid out left to right with smooth transitions."""
    config: Flat[PanoramaConfig] = field(default_factory=PanoramaConfig)


@dataclass
class VideoArgs(_Common):
    """Edit a video (frames are the CSD particles; long videos go in overlapping chunks)."""

    input: tyro.conf.Positional[Path] = tyro.MISSING
    """Input video: mp4 (or another ffmpeg container), gif, or a folder of frames."""
    output: Path = tyro.MISSING
    """Output: a .mp4/.gif file or a folder (no suffix) of PNG frames; same fps and size as the input."""
    prompt: str = tyro.MISSING
    """Editing instruction, e.g. "make his shirt yellow"."""
    config: Flat[VideoConfig] = field(default_factory=VideoConfig)


@dataclass
class DemoArgs:
    """Compare CSD with independent editing on a panorama and a video made from scikit-image photos, using
    the embedded model (offline, CPU, about a minute). Writes PNGs, GIFs, report.json and report.md."""

    output: Path = Path("csd-demo")
    """Output folder."""
    model: str = EMBEDDED_MODEL
    """Model (the demo's inputs and settings are made for the embedded model's 64 px windows)."""
    device: str = "cpu"
    """Torch device."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    """Model weights dtype."""
    seed: int = 0
    """Random seed of both runs."""
    steps: Optional[int] = None
    """Override the optimisation steps of every run (fewer: faster, weaker edits)."""
    match_strength: bool = True
    """Search CSD's learning rate until its edit strength is within 10 % of the baseline's (a fair comparison);
    off: one run at the fixed learning-rate ratio."""
    overwrite: bool = False
    """Replace an existing output folder."""
    progress: bool = True
    """Show progress bars."""


def _preset_from_argv(argv: Sequence[str]) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return None


def parse(argv: Sequence[str]) -> Union[PanoramaArgs, VideoArgs, "DemoArgs"]:
    """Parse ``argv`` (without the program name); a ``--preset`` becomes the defaults flags override."""
    preset = _preset_from_argv(argv)
    pano, video = PanoramaConfig(), VideoConfig()
    if preset is not None:
        command = argv[0] if argv else ""
        if command == "panorama":
            pano = load_preset(preset, PanoramaConfig)
        elif command == "video":
            video = load_preset(preset, VideoConfig)
    spec = Union[
        Annotated[PanoramaArgs, tyro.conf.subcommand("panorama", default=PanoramaArgs(config=pano))],
        Annotated[VideoArgs, tyro.conf.subcommand("video", default=VideoArgs(config=video))],
        Annotated[DemoArgs, tyro.conf.subcommand("demo", default=DemoArgs())],
    ]
    return tyro.cli(spec, args=list(argv), prog="csd2d", description=__doc__)


def _device_dtype(args):
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"--device: expected a torch device such as cuda, cuda:1 or cpu, got {args.device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device: expected an available device, got {args.device!r} but CUDA is not available")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype)


def _preview(before: List, after: List, path: Path) -> Path:
    """A before (top) / after (bottom) strip of up to 3 images, written atomically."""
    from PIL import Image

    from .io import save_image

    picks = sorted({0, len(before) // 2, len(before) - 1})
    cells = [(before[i].convert("RGB"), after[i].convert("RGB")) for i in picks]
    width = sum(b.width for b, _ in cells)
    height = max(b.height for b, _ in cells)
    sheet = Image.new("RGB", (width, 2 * height), "white")
    x = 0
    for b, a in cells:
        sheet.paste(b, (x, 0))
        sheet.paste(a, (x, height))
        x += b.width
    return save_image(sheet, path)


def run(args: Union[PanoramaArgs, VideoArgs]) -> Path:
    """Execute parsed arguments; returns the output path."""
    from .editor import CSDEditor, check_prompts
    from .io import IMAGE_SUFFIXES, check_output, load_image, load_video, refuse_existing, save_image, save_video

    if isinstance(args, DemoArgs):
        from .demo import DemoConfig, report_markdown, run_demo

        refuse_existing(args.output, args.overwrite)  # before loading the model
        device, dtype = _device_dtype(args)
        editor = CSDEditor.from_pretrained(args.model, device=device, torch_dtype=dtype, arg_name="--model")
        demo = DemoConfig(seed=args.seed, match_strength=args.match_strength)
        if args.steps is not None:
            demo = dataclasses.replace(demo, panorama=dataclasses.replace(demo.panorama, steps=args.steps),
                                       video=dataclasses.replace(demo.video, steps=args.steps))
        report = run_demo(editor, args.output, demo, progress=args.progress, overwrite=args.overwrite)
        print(report_markdown(report))
        return args.output
    check_output(args.input, args.output, args.overwrite)
    if isinstance(args, PanoramaArgs):
        image = load_image(args.input, "input")
        prompts = check_prompts(args.prompt, args.prompts)  # before loading the model
        if args.output.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"--output: expected an image path ({', '.join(IMAGE_SUFFIXES)}), got {str(args.output)!r}")
    else:
        frames, fps = load_video(args.input, "input")
        check_prompts(args.prompt, None)
    device, dtype = _device_dtype(args)
    editor = CSDEditor.from_pretrained(
        args.model, device=device, torch_dtype=dtype, arg_name="--model", **args.memory_kwargs()
    )
    if isinstance(args, PanoramaArgs):
        out = editor.edit_panorama(image, prompts=prompts, config=args.config, progress=args.progress)
        save_image(out, args.output)
        before, after = [image], [out]
    else:
        edited = editor.edit_video(frames, args.prompt, config=args.config, progress=args.progress)
        save_video(edited, args.output, fps)
        before, after = frames, edited
    if args.preview:
        _preview(before, after, args.output.with_name(args.output.name.split(".")[0] + ".preview.png"))
    return args.output


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input or model)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        out = run(args)
    except (InputError, ModelLoadError, ValueError) as err:
        print(f"csd2d: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def entrypoint() -> None:
    sys.exit(main())
