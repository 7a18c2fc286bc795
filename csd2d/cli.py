"""``csd2d``: command-line panorama and video editing with Collaborative Score Distillation.

    csd2d panorama INPUT --prompt "..." --output OUT.png [--model ID_OR_PATH] [--steps N] [--seed S]
    csd2d video INPUT --prompt "..." --output OUT.mp4|OUT.gif|DIR [...]
    csd2d demo [--output DIR]      CSD vs independent editing with the embedded model, offline on a CPU

Every option of the API's config dataclasses is a flag; ``--preset NAME_OR_FILE`` loads one of the presets
shipped in ``csd2d/presets/`` (image, region, video) first and flags override it.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Literal, Optional, Sequence, Tuple, Union

import tyro
from typing_extensions import Annotated

from ._launch import INTERRUPTED, entrypoint, interrupts_raise  # noqa: F401  (csd2d.cli:entrypoint stays importable)
from .config import MemoryConfig, PanoramaConfig, VideoConfig, load_preset
from .guidance import DEFAULT_MODEL, EMBEDDED_MODEL, ModelLoadError
from .io import InputError
from .paper_metrics import EvalArgs, run_eval

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["DemoArgs", "PanoramaArgs", "VideoArgs", "main", "entrypoint"]

Flat = tyro.conf.OmitArgPrefixes


def _unchecked(cls: type) -> type:
    """``cls`` with its ``__post_init__`` checks off, for tyro to fill in. :func:`parse` then builds the real
    ``cls`` outside tyro, so that a bad value gets csd2d's one-line error naming its flag (inside tyro it
    becomes a box naming tyro's internal ``__tyro-dummy-inner__``)."""
    sub = dataclasses.make_dataclass(cls.__name__, [], bases=(cls,),
                                     namespace={"__post_init__": lambda self: None, "__doc__": cls.__doc__})
    sub.__module__, sub.__qualname__ = cls.__module__, cls.__qualname__
    return sub


_PanoramaFlags, _VideoFlags = _unchecked(PanoramaConfig), _unchecked(VideoConfig)


def _as(cls: type, config):
    """``config``'s init fields as a ``cls`` (running ``cls``'s checks)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if f.init})


@dataclass
class _Common(MemoryConfig):
    model: str = DEFAULT_MODEL
    """InstructPix2Pix model: hub id or local directory (diffusers layout, safetensors)."""
    device: str = "auto"
    """Torch device, e.g. cuda, cuda:1, cpu; auto picks cuda when available."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Model weights dtype; auto is float16 on CUDA and float32 on CPU."""
    consistency_decoder: Optional[str] = None
    """Decode with OpenAI's consistency decoder (hub id such as openai/consistency-decoder or a directory)."""
    preset: Optional[str] = None
    """Preset name (image, region, video; shipped in csd2d/presets/) or a YAML file; other flags override it."""
    overwrite: bool = False
    """Replace an existing output (and preview); a folder only if csd2d wrote it."""
    preview: bool = False
    """Also write a before/after preview PNG next to the output (OUT.png -> OUT.preview.png)."""
    progress: bool = True
    """Show a progress bar."""

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
    config: Flat[_PanoramaFlags] = field(default_factory=_PanoramaFlags)


@dataclass
class VideoArgs(_Common):
    """Edit a video (frames are the CSD particles; long videos go in overlapping chunks)."""

    input: tyro.conf.Positional[Path] = tyro.MISSING
    """Input video: mp4 (or another ffmpeg container), gif, or a folder of frames."""
    output: Path = tyro.MISSING
    """Output: a .mp4/.gif file or a folder (no suffix) of PNG frames; same fps and size as the input."""
    prompt: str = tyro.MISSING
    """Editing instruction, e.g. "make his shirt yellow"."""
    overwrite_foreign_folder: bool = False
    """Replace an existing output folder even if it holds files csd2d did not write (they are deleted)."""
    config: Flat[_VideoFlags] = field(default_factory=_VideoFlags)


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
    """Replace an existing output folder that csd2d wrote."""
    overwrite_foreign_folder: bool = False
    """Replace an existing output folder even if it holds files csd2d did not write (they are deleted)."""
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
        Annotated[PanoramaArgs, tyro.conf.subcommand("panorama",
                                                     default=PanoramaArgs(config=_as(_PanoramaFlags, pano)))],
        Annotated[VideoArgs, tyro.conf.subcommand("video", default=VideoArgs(config=_as(_VideoFlags, video)))],
        Annotated[DemoArgs, tyro.conf.subcommand("demo", default=DemoArgs())],
        Annotated[EvalArgs, tyro.conf.subcommand("eval")],
    ]
    args = tyro.cli(spec, args=list(argv), prog="csd2d", description=__doc__)
    if isinstance(args, PanoramaArgs):
        args = dataclasses.replace(args, config=_as(PanoramaConfig, args.config))
    elif isinstance(args, VideoArgs):
        args = dataclasses.replace(args, config=_as(VideoConfig, args.config))
    return args


def _device_dtype(args):
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"--device: expected a torch device such as cuda, cuda:1 or cpu, got {args.device!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device: expected an available device, got {args.device!r} but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device: expected a CUDA index below {torch.cuda.device_count()}, got {args.device!r}")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"--device: expected an available device, got {args.device!r} but MPS (Apple GPU) "
                             "is not available here; use cpu or cuda")
    elif device.type != "cpu":
        raise InputError(f"--device: expected cpu, cuda, cuda:N or mps, got {args.device!r}")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype)


def _join_ranks(device):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (NCCL on CUDA, gloo on CPU) and give each
    rank its own GPU (``cuda:LOCAL_RANK``); returns ``(rank, device)``, or ``(None, device)`` in one process."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        torch.cuda.set_device(device)
    return dist.get_rank(), device


def _preview(before: List, after: List, path: Path) -> Path:
    """A before (top) / after (bottom) strip of up to 3 images, written atomically."""
    from PIL import Image

    from .io import save_image, split_alpha

    picks = sorted({0, len(before) // 2, len(before) - 1})
    cells = [(split_alpha(before[i])[0], split_alpha(after[i])[0]) for i in picks]
    width = sum(b.width for b, _ in cells)
    height = max(b.height for b, _ in cells)
    sheet = Image.new("RGB", (width, 2 * height), "white")
    x = 0
    for b, a in cells:
        sheet.paste(b, (x, 0))
        sheet.paste(a, (x, height))
        x += b.width
    return save_image(sheet, path)


def _check_outputs(args: Union[PanoramaArgs, VideoArgs]) -> Optional["Image.Image"]:
    """Every check of paths, formats and prompts that can run before the model loads; returns the image
    (panorama) after reading it, or None (video: frames are read by the caller)."""
    from .editor import check_prompts
    from .io import (check_file_output, check_image_output, check_video_output, edit_mode, load_image,
                     preview_path)

    inputs = [args.input]
    image = None
    if isinstance(args, PanoramaArgs):
        check_prompts(args.prompt, args.prompts)
        check_file_output(args.output, "--output", inputs, args.overwrite)
        image = load_image(args.input, "input")
        check_image_output(args.output, edit_mode(image), "--output")
    else:
        check_prompts(args.prompt, None)
        check_video_output(args.output, inputs, args.overwrite, args.overwrite_foreign_folder, "--output")
    if args.preview:
        check_file_output(preview_path(args.output), "--preview", [*inputs, args.output], args.overwrite)
    return image


def _silence_library_progress() -> None:
    """``--no-progress`` also covers the weight-loading bars that diffusers and transformers draw."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def run(args: Union[PanoramaArgs, VideoArgs]) -> Path:
    """Execute parsed arguments; returns the output path. Everything checkable is checked before the model loads."""
    from .editor import CSDEditor
    from .io import check_folder_output, load_video, preview_path, save_image, save_video

    if not getattr(args, "progress", True):
        _silence_library_progress()
    if isinstance(args, EvalArgs):
        interrupts_raise()
        return run_eval(args)
    if isinstance(args, DemoArgs):
        from .demo import DemoConfig, report_markdown, run_demo

        check_folder_output(args.output, "--output", (), args.overwrite or args.overwrite_foreign_folder,
                            args.overwrite_foreign_folder)  # before loading the model
        device, dtype = _device_dtype(args)
        editor = CSDEditor.from_pretrained(args.model, device=device, torch_dtype=dtype, arg_name="--model")
        interrupts_raise()  # csd2d._launch: from here on Ctrl-C unwinds through the writers' cleanup
        demo = DemoConfig(seed=args.seed, match_strength=args.match_strength)
        if args.steps is not None:
            demo = dataclasses.replace(demo, panorama=dataclasses.replace(demo.panorama, steps=args.steps),
                                       video=dataclasses.replace(demo.video, steps=args.steps))
        report = run_demo(editor, args.output, demo, progress=args.progress,
                          overwrite=args.overwrite or args.overwrite_foreign_folder,
                          allow_foreign=args.overwrite_foreign_folder)
        print(report_markdown(report))
        return args.output
    if isinstance(args, VideoArgs) and args.overwrite_foreign_folder and args.output.suffix == "":
        args = dataclasses.replace(args, overwrite=True)
    image = _check_outputs(args)
    if isinstance(args, VideoArgs):
        frames, fps = load_video(args.input, "input")
    device, dtype = _device_dtype(args)
    rank, device = _join_ranks(device)
    editor = CSDEditor.from_pretrained(args.model, device=device, torch_dtype=dtype, arg_name="--model",
                                       consistency_decoder=args.consistency_decoder,
                                       consistency_decoder_arg="--consistency-decoder", **args.memory_kwargs())
    interrupts_raise()  # csd2d._launch: from here on Ctrl-C unwinds through the writers' cleanup
    if rank is not None:
        from .distributed import ShardedGuidance

        editor = CSDEditor(ShardedGuidance(editor.guidance))
        if rank == 0:
            print(f"csd2d: {editor.guidance.world} ranks share the particles", file=sys.stderr)
    if isinstance(args, PanoramaArgs):
        prompts = [args.prompt] if args.prompt is not None else list(args.prompts)
        out = editor.edit_panorama(image, prompts=prompts, config=args.config, progress=args.progress)
        if rank:  # every rank holds the same result; rank 0 writes it
            return args.output
        save_image(out, args.output, exif=image.info.get("exif"))
        before, after = [image], [out]
    else:
        edited = editor.edit_video(frames, args.prompt, config=args.config, progress=args.progress)
        if rank:
            return args.output
        save_video(edited, args.output, fps, allow_foreign=args.overwrite_foreign_folder)
        before, after = frames, edited
    if args.preview:
        _preview(before, after, preview_path(args.output))
    return args.output


_TYRO_DUMMY = "__tyro-dummy-inner__"


def _config_fields() -> set:
    return {f.name for cls in (PanoramaConfig, VideoConfig) for f in dataclasses.fields(cls)}


def _flag_message(err: BaseException) -> str:
    """One line for a bad-input error: a config field named at its start (``ConfigError.field`` or a message
    ``"vae_tile: ..."``) becomes its flag (``--vae-tile: ...``); tyro's internal names are removed."""
    msg = str(err).strip().replace(_TYRO_DUMMY, "")
    field_name = getattr(err, "field", None)
    if field_name is None:
        head = msg.split(":", 1)[0]
        field_name = head if head in _config_fields() | {"prompt", "prompts"} else None
    if field_name:  # flags are flat: a nested field "a.b_c" is --b-c
        if msg.startswith(f"{field_name}:"):
            msg = msg[len(field_name) + 1:].lstrip()
        msg = f"--{field_name.split('.')[-1].replace('_', '-')}: {msg}"
    return " ".join(msg.split("\n")[0].split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"csd2d: warning: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input or model, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args = parse(argv)
            out = run(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except (InputError, ModelLoadError, ValueError) as err:
        print(f"csd2d: error: {_flag_message(err)}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    entrypoint()
