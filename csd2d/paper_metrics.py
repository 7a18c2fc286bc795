"""The paper's metrics (Kim et al. 2023, Tables 1 and 2): CLIP directional similarity, CLIP image and direction
consistency, and LPIPS between consecutive edited frames; the ``csd2d eval`` subcommand.

Definitions (``C`` = L2-normalised CLIP image embedding, ``T`` = L2-normalised CLIP text embedding, ``o_i`` the
source frames or views, ``e_i`` the edited ones, ``cos`` the cosine similarity, 0 where a vector is zero):

- **CLIP directional similarity** (IN2N's ``ClipSimilarity``, ``sim_direction``):
  ``cos(C(e_i) − C(o_i), T(target caption) − T(source caption))``, averaged over frames.
- **CLIP image consistency**: ``cos(C(e_i), C(e_{i+1}))`` over consecutive edited frames / neighbouring views.
- **CLIP direction consistency**, two readings of IN2N's definition (instruct-nerf2nerf issues #28, #82, #91):
  - ``appendix``: ``cos(C(e_i) − C(o_i), C(e_{i+1}) − C(e_i))``, the formula as printed in IN2N's appendix C;
  - ``issue28``: ``cos(C(o_{i+1}) − C(o_i), C(e_{i+1}) − C(e_i))``, the reading proposed in issue #28 (the
    change between neighbouring edited frames agrees with the change between the source frames).
- **LPIPS** between consecutive edited frames ``LPIPS(e_i, e_{i+1})`` (Zhang et al. 2018), lower is more
  consistent, as in the paper's Table 1.

CLIP is loaded through ``transformers.CLIPModel.from_pretrained`` (any hub id or local directory, safetensors
only; default ``openai/clip-vit-large-patch14``, the backbone IN2N uses) or, with the prefix ``open_clip:``,
through ``open_clip`` if installed (the CSD paper used OpenCLIP ViT-bigG-14). Images are resized to the backbone's
input size with bicubic interpolation and normalised with CLIP's mean and std, as IN2N's ``ClipSimilarity`` does
(no centre crop). Every result names its backbone.

Nothing here is imported by :mod:`csd2d.metrics` or at ``import csd2d``; models load only when asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from torch import Tensor

__all__ = [
    "DEFAULT_CLIP",
    "ClipScorer",
    "LPIPS",
    "EvalArgs",
    "cosine_or_zero",
    "clip_directional_similarity",
    "clip_image_consistency",
    "clip_direction_consistency_appendix",
    "clip_direction_consistency_issue28",
    "lpips_consecutive",
    "evaluate_frames",
    "format_table",
    "run_eval",
]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""The CLIP backbone of IN2N's metrics (``ViT-L/14``)."""
OPEN_CLIP_PREFIX = "open_clip:"
DEFAULT_OPEN_CLIP = "ViT-bigG-14"
"""The CLIP backbone of the CSD paper's metrics (OpenCLIP ViT-bigG-14)."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's input normalisation (IN2N's ``ClipSimilarity`` uses the same constants)."""

ImagesLike = Union[Float[Tensor, "B 3 H W"], Sequence[Image.Image]]


def _as_tensor(images: ImagesLike, arg: str) -> Tensor:
    """PIL images or a ``[B, 3, H, W]`` tensor in [0, 1] → a float tensor ``[B, 3, H, W]``."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{arg}: expected images of shape [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        return images.float()
    from .imaging import pil_to_tensor

    images = list(images)
    if not images or not all(isinstance(i, Image.Image) for i in images):
        raise ValueError(f"{arg}: expected a non-empty list of PIL images or a [B, 3, H, W] tensor")
    return torch.cat([pil_to_tensor(i) for i in images])


def cosine_or_zero(a: Float[Tensor, "B D"], b: Float[Tensor, "B D"]) -> Float[Tensor, "B"]:
    """Row-wise cosine similarity, exactly 0 where either vector is zero (no change means no direction)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    zero = (na == 0) | (nb == 0)
    cos = (a * b).sum(-1) / torch.where(zero, torch.ones_like(na), na * nb)
    return torch.where(zero, torch.zeros_like(cos), cos).float()


# ---------------------------------------------------------------------------------------------------------- CLIP
class ClipScorer:
    """A CLIP backbone that embeds images in [0, 1] and captions, L2-normalised.

    Build it with :meth:`from_pretrained`. ``name`` says which backbone produced a number.
    """

    def __init__(self, encode_image, encode_text, image_size: int, name: str, device: torch.device) -> None:
        self._encode_image = encode_image
        self._encode_text = encode_text
        self.image_size = int(image_size)
        self.name = name
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_CLIP, *, device: Union[str, torch.device] = "cpu", arg_name: str = "clip"
    ) -> "ClipScorer":
        """Load CLIP from a hub id or local directory (transformers, safetensors only), or ``open_clip:ARCH`` /
        ``open_clip:ARCH:PRETRAINED`` (e.g. ``open_clip:ViT-bigG-14:laion2b_s39b_b160k``) through ``open_clip``."""
        from .guidance import ModelLoadError

        source = str(model).strip()
        if not source:
            raise ModelLoadError(f"{arg_name}: expected a CLIP hub id or directory, got an empty string")
        if source.startswith(OPEN_CLIP_PREFIX):
            return cls._open_clip(source[len(OPEN_CLIP_PREFIX):], device, arg_name)
        from transformers import CLIPModel, CLIPTokenizer

        try:
            clip = CLIPModel.from_pretrained(source, use_safetensors=True).to(device).eval().requires_grad_(False)
            tokenizer = CLIPTokenizer.from_pretrained(source)
        except (OSError, ValueError, EnvironmentError) as err:
            raise ModelLoadError(
                f"{arg_name}: expected a CLIP model for transformers' CLIPModel with safetensors weights and a "
                f"tokenizer (a hub id like {DEFAULT_CLIP!r} or a local directory), got {source!r}: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        max_len = int(clip.config.text_config.max_position_embeddings)

        def features(out) -> Tensor:  # transformers 4 returns the tensor, 5 an output with pooler_output
            return out if isinstance(out, Tensor) else out.pooler_output

        def encode_image(pixels: Tensor) -> Tensor:
            return features(clip.get_image_features(pixel_values=pixels.to(clip.dtype)))

        def encode_text(captions: List[str]) -> Tensor:
            tokens = tokenizer(captions, padding="max_length", max_length=max_len, truncation=True,
                               return_tensors="pt").to(device)
            return features(clip.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask))

        size = int(clip.config.vision_config.image_size)
        return cls(encode_image, encode_text, size, f"transformers:{source}", torch.device(device))

    @classmethod
    def _open_clip(cls, spec: str, device, arg_name: str) -> "ClipScorer":
        from .guidance import ModelLoadError

        try:
            import open_clip
        except ImportError as err:
            raise ModelLoadError(
                f"{arg_name}: {OPEN_CLIP_PREFIX}{spec} needs the open_clip package (pip install open_clip_torch); "
                f"or pass a transformers CLIP id such as {DEFAULT_CLIP!r}"
            ) from err
        arch, _, pretrained = spec.partition(":")
        arch = arch or DEFAULT_OPEN_CLIP
        try:
            model = open_clip.create_model(arch, pretrained=pretrained or None, device=device)
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as err:  # open_clip raises RuntimeError/ValueError/OSError for unknown names and files
            raise ModelLoadError(f"{arg_name}: could not load open_clip model {spec!r}: {err}") from err
        model.eval().requires_grad_(False)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return cls(lambda x: model.encode_image(x), lambda c: model.encode_text(tokenizer(c).to(device)), size,
                   f"open_clip:{arch}:{pretrained or 'random'}", torch.device(device))

    @torch.no_grad()
    def embed_images(self, images: ImagesLike, chunk: int = 16) -> Float[Tensor, "B D"]:
        """L2-normalised image embeddings; images in [0, 1], resized (bicubic) and normalised as IN2N does."""
        x = _as_tensor(images, "images")
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        out = []
        for part in x.split(chunk):
            part = F.interpolate(part, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
            out.append(self._encode_image(((part - mean) / std).to(self.device)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, captions: Sequence[str]) -> Float[Tensor, "B D"]:
        """L2-normalised text embeddings."""
        return F.normalize(self._encode_text(list(captions)).float().cpu(), dim=-1)


def _pairs(n: int, metric: str) -> None:
    if n < 2:
        raise ValueError(f"edited: {metric} needs at least 2 frames or views, got {n}")


def clip_directional_similarity(
    source: Float[Tensor, "B D"], edited: Float[Tensor, "B D"], source_text: Float[Tensor, "D"],
    target_text: Float[Tensor, "D"]
) -> Float[Tensor, "B"]:
    """``cos(C(e_i) − C(o_i), T(target) − T(source))`` per frame (IN2N's ``ClipSimilarity.sim_direction``).

    Inputs are normalised embeddings (:meth:`ClipScorer.embed_images`, :meth:`ClipScorer.embed_text`). An edit
    that changes nothing (or equal captions) gives exactly 0.
    """
    if source.shape != edited.shape:
        raise ValueError(f"edited: expected as many frames as source {tuple(source.shape)}, got {tuple(edited.shape)}")
    return cosine_or_zero(edited - source, (target_text - source_text).expand_as(edited))


def clip_image_consistency(edited: Float[Tensor, "T D"]) -> Float[Tensor, "T-1"]:
    """``cos(C(e_i), C(e_{i+1}))`` between consecutive edited frames or neighbouring views."""
    _pairs(edited.shape[0], "CLIP image consistency")
    return cosine_or_zero(edited[:-1], edited[1:])


def clip_direction_consistency_appendix(source: Float[Tensor, "T D"], edited: Float[Tensor, "T D"]) -> Float[Tensor, "T-1"]:
    """IN2N appendix C as printed: ``cos(C(e_i) − C(o_i), C(e_{i+1}) − C(e_i))``."""
    _pairs(edited.shape[0], "CLIP direction consistency")
    return cosine_or_zero(edited[:-1] - source[:-1], edited[1:] - edited[:-1])


def clip_direction_consistency_issue28(source: Float[Tensor, "T D"], edited: Float[Tensor, "T D"]) -> Float[Tensor, "T-1"]:
    """The reading of instruct-nerf2nerf issue #28: ``cos(C(o_{i+1}) − C(o_i), C(e_{i+1}) − C(e_i))``."""
    _pairs(edited.shape[0], "CLIP direction consistency")
    return cosine_or_zero(source[1:] - source[:-1], edited[1:] - edited[:-1])


# --------------------------------------------------------------------------------------------------------- LPIPS
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
"""torchvision AlexNet ``features`` indices ending at relu1 … relu5, LPIPS's five taps (Zhang et al. 2018)."""
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
"""LPIPS's input scaling layer constants (Zhang et al. 2018, the reference implementation)."""


class LPIPS(torch.nn.Module):
    """LPIPS with the AlexNet backbone: ``Σ_l mean_hw ‖w_l ⊙ (f̂_l(x) − f̂_l(y))‖²`` over five AlexNet taps, with
    channel-normalised features ``f̂`` and learned non-negative channel weights ``w_l`` (Zhang et al. 2018).

    Weights load from one safetensors file (:meth:`from_file`) holding torchvision's AlexNet ``features.*``
    tensors and ``lin.{0..4}.weight`` (``[1, C_l, 1, 1]``); nothing is downloaded. To make that file from the
    official weights (once, where they are available)::

        sd = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights="DEFAULT").features.state_dict().items()}
        sd |= {f"lin.{i}.weight": v for i, v in enumerate(lpips_v01_alex_lin_weights)}  # lpips' weights/v0.1/alex.pth
        safetensors.torch.save_file(sd, "lpips_alex.safetensors")
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import alexnet

        self.features = alexnet(weights=None).features
        self.lin = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, 1, bias=False) for c in _ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.name = "lpips-alex:random"
        self.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: Union[str, Path], *, device: Union[str, torch.device] = "cpu",
                  arg_name: str = "lpips") -> "LPIPS":
        """Load backbone and linear weights from a safetensors file (see the class docstring)."""
        from safetensors.torch import load_file

        path = Path(path)
        if path.suffix != ".safetensors" or not path.is_file():
            raise ValueError(f"{arg_name}: expected an existing .safetensors file with LPIPS-AlexNet weights, "
                             f"got {str(path)!r}")
        net = cls()
        state = load_file(str(path))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{arg_name}: expected AlexNet 'features.*' and 'lin.{{0..4}}.weight' tensors in "
                             f"{str(path)!r}: {str(err).splitlines()[0]}") from err
        net.name = f"lpips-alex:{path.name}"
        return net.to(device)

    def forward(self, x: Float[Tensor, "B 3 H W"], y: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B"]:
        """LPIPS distance per pair; images in [0, 1]."""
        from .guidance import to_minus_one_one

        dev = self.shift.device
        hx = (to_minus_one_one(x.float().to(dev)) - self.shift) / self.scale
        hy = (to_minus_one_one(y.float().to(dev)) - self.shift) / self.scale
        total = torch.zeros(x.shape[0], device=dev)
        for (a, b), lin in zip(_ALEX_SLICES, self.lin):
            hx, hy = self.features[a:b](hx), self.features[a:b](hy)
            diff = (F.normalize(hx, dim=1, eps=1e-10) - F.normalize(hy, dim=1, eps=1e-10)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total.cpu()


@torch.no_grad()
def lpips_consecutive(lpips: LPIPS, edited: ImagesLike, chunk: int = 8) -> Float[Tensor, "T-1"]:
    """``LPIPS(e_i, e_{i+1})`` between consecutive edited frames (the paper's Table 1)."""
    x = _as_tensor(edited, "edited")
    _pairs(x.shape[0], "LPIPS between consecutive frames")
    return torch.cat([lpips(a, b) for a, b in zip(x[:-1].split(chunk), x[1:].split(chunk))])


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_frames(
    source: ImagesLike,
    edited: ImagesLike,
    *,
    clip: Optional[ClipScorer] = None,
    source_caption: Optional[str] = None,
    target_caption: Optional[str] = None,
    lpips: Optional[LPIPS] = None,
) -> Dict:
    """All paper metrics for matching source and edited frames (or views; or one image pair).

    The hook for the 3-D evaluation: pass renders of the source and the edited scene in camera order. Metrics
    between neighbours need at least 2 frames; the directional similarity needs both captions. Returns
    ``{"backbones": {...}, "frames": T, "metrics": {name: mean}, "per_frame": {name: [...]}}``.
    """
    src, edt = _as_tensor(source, "source"), _as_tensor(edited, "edited")
    if src.shape[0] != edt.shape[0]:
        raise ValueError(f"edited: expected as many frames as source ({src.shape[0]}), got {edt.shape[0]}")
    if clip is None and lpips is None:
        raise ValueError("clip/lpips: expected at least one backbone to evaluate with, got none")
    per: Dict[str, Tensor] = {}
    backbones: Dict[str, str] = {}
    if clip is not None:
        backbones["clip"] = clip.name
        c_src, c_edt = clip.embed_images(src), clip.embed_images(edt)
        if (source_caption is None) != (target_caption is None):
            raise ValueError("source_caption/target_caption: expected both captions or neither, got one")
        if source_caption is not None:
            t_src, t_tgt = clip.embed_text([source_caption, target_caption])
            per["clip_directional_similarity"] = clip_directional_similarity(c_src, c_edt, t_src, t_tgt)
        per["clip_image_similarity_to_source"] = cosine_or_zero(c_src, c_edt)
        if len(edt) > 1:
            per["clip_image_consistency"] = clip_image_consistency(c_edt)
            per["clip_direction_consistency_appendix"] = clip_direction_consistency_appendix(c_src, c_edt)
            per["clip_direction_consistency_issue28"] = clip_direction_consistency_issue28(c_src, c_edt)
    if lpips is not None and len(edt) > 1:
        backbones["lpips"] = lpips.name
        per["lpips_consecutive"] = lpips_consecutive(lpips, edt)
    return {
        "backbones": backbones,
        "frames": int(edt.shape[0]),
        "metrics": {k: float(v.double().mean()) for k, v in per.items()},
        "per_frame": {k: [round(float(x), 6) for x in v] for k, v in per.items()},
    }


def format_table(result: Dict) -> str:
    """A markdown table of the mean metrics, each row naming its backbone."""
    rows = ["| metric | value | backbone |", "|---|---|---|"]
    for name, value in result["metrics"].items():
        backbone = result["backbones"]["lpips" if name.startswith("lpips") else "clip"]
        rows.append(f"| {name} | {value:.4f} | {backbone} |")
    return "\n".join(rows)


@dataclass
class EvalArgs:
    """Compute the paper's metrics (CLIP directional similarity, CLIP image and direction consistency, LPIPS
    between consecutive frames) for a source and an edited image, frame folder or video."""

    source: Path
    """Source: an image, a folder of frames or a video."""
    edited: Path
    """Edited result, same kind and frame count as the source."""
    source_caption: Optional[str] = None
    """Caption of the source (for the directional similarity), e.g. "a photograph of a man"."""
    target_caption: Optional[str] = None
    """Caption of the intended edit, e.g. "a photograph of a man in a yellow shirt"."""
    clip: Optional[str] = DEFAULT_CLIP
    """CLIP backbone: transformers hub id or directory (default: IN2N's ViT-L/14), or open_clip:ARCH[:PRETRAINED]
    (the CSD paper used open_clip:ViT-bigG-14:laion2b_s39b_b160k); None skips the CLIP metrics."""
    lpips: Optional[Path] = None
    """LPIPS-AlexNet weights (.safetensors; see csd2d.paper_metrics.LPIPS); None skips LPIPS."""
    output: Path = Path("metrics.json")
    """Where to write the result as JSON (the table is printed too)."""
    device: str = "cpu"
    """Torch device."""
    overwrite: bool = False
    """Replace an existing JSON output."""


def _load_frames(path: Path, arg: str) -> List[Image.Image]:
    from .io import IMAGE_SUFFIXES, load_image, load_video, split_alpha

    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [split_alpha(load_image(path, arg))[0]]
    return load_video(path, arg)[0]


def run_eval(args: EvalArgs) -> Path:
    """Execute ``csd2d eval``: load inputs first, then the backbones; print the table, write the JSON (returned)."""
    from .io import InputError, refuse_existing, write_text_atomic

    refuse_existing(args.output, args.overwrite)
    source, edited = _load_frames(args.source, "--source"), _load_frames(args.edited, "--edited")
    if len(source) != len(edited):
        raise InputError(f"--edited: expected as many frames as --source ({len(source)}), got {len(edited)}")
    if (args.source_caption is None) != (args.target_caption is None):
        raise InputError("--source-caption/--target-caption: expected both captions or neither, got one")
    size = source[0].size
    edited = [e if e.size == size else e.resize(size, Image.BICUBIC) for e in edited]
    clip = ClipScorer.from_pretrained(args.clip, device=args.device, arg_name="--clip") if args.clip else None
    lpips = LPIPS.from_file(args.lpips, device=args.device, arg_name="--lpips") if args.lpips else None
    if clip is None and lpips is None:
        raise InputError("--clip/--lpips: expected at least one backbone, got --clip None and no --lpips")
    result = evaluate_frames(source, edited, clip=clip, source_caption=args.source_caption,
                             target_caption=args.target_caption, lpips=lpips)
    result["inputs"] = {"source": str(args.source), "edited": str(args.edited),
                        "source_caption": args.source_caption, "target_caption": args.target_caption}
    print(format_table(result))
    write_text_atomic(args.output, json.dumps(result, indent=1))
    return args.output

