"""Read and write the training images that nerfstudio's datamanagers cache (the dataset that edits go into)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["TrainImages"]


class TrainImages:
    """Read and write the training images a datamanager caches (VanillaDataManager or FullImageDatamanager),
    keeping a copy of the originals for conditioning."""

    def __init__(self, datamanager) -> None:
        self.dm = datamanager
        if hasattr(datamanager, "train_image_dataloader"):
            batch = datamanager.train_image_dataloader.cached_collated_batch
            if batch is None or not isinstance(batch.get("image"), Tensor):
                raise ValueError(
                    "pipeline.datamanager: expected all training images cached in one tensor "
                    "(train-num-images-to-sample-from -1 and images of one size)"
                )
            self._batch = batch
            self._pos = {int(i): p for p, i in enumerate(batch["image_idx"].tolist())}
            self.originals = [batch["image"][self._pos[i]].clone() for i in range(len(self._pos))]
        elif hasattr(datamanager, "cached_train"):
            self._batch = None
            self.originals = [d["image"].clone() for d in datamanager.cached_train]
        else:
            raise ValueError(f"pipeline.datamanager: cannot edit the images of {type(datamanager).__name__}")

    def __len__(self) -> int:
        return len(self.originals)

    def _slot(self, index: int) -> Tensor:
        return self._batch["image"][self._pos[index]] if self._batch is not None else self.dm.cached_train[index]["image"]

    @property
    def device(self) -> torch.device:
        """The device the training images are cached on."""
        return self._slot(0).device

    def get(self, index: int) -> Float[Tensor, "H W 3"]:
        """Current training image ``index`` as float ``[H, W, 3]`` in [0, 1]."""
        return to_float(self._slot(index))

    def original(self, index: int) -> Float[Tensor, "H W 3"]:
        """The original photo ``index`` (never edited) as float ``[H, W, 3]`` in [0, 1]."""
        return to_float(self.originals[index])

    def set(self, index: int, image: Float[Tensor, "H W 3"]) -> None:
        """Replace the colour of training image ``index`` with ``image`` (float ``[H, W, 3]``), in the cache's
        dtype. An alpha channel (RGBA scenes) is the photo's and stays. Values are rounded to 8 bits in a float
        cache too, so that the edits a checkpoint stores as uint8 (:meth:`uint8`) are exactly what trains."""
        dst = self._slot(index)[..., :3]
        value = (image[..., :3].to(dst.device).float().clamp(0, 1) * 255).round()
        dst.copy_(value.to(dst.dtype) if dst.dtype == torch.uint8 else (value / 255).to(dst.dtype))

    def uint8(self, index: int) -> Tensor:
        """Current training image ``index`` as uint8 ``[H, W, C]`` on the CPU, alpha included (C = 3 or 4)."""
        img = self._slot(index)
        return img.cpu() if img.dtype == torch.uint8 else (img.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def edited(self) -> list:
        """Indices of the training images that differ from their photos."""
        return [i for i in range(len(self)) if not torch.equal(self._slot(i), self.originals[i].to(self._slot(i).device))]


def to_float(img: Tensor) -> Tensor:
    """A cached image (uint8 or float, RGB or RGBA) as float RGB in [0, 1]."""
    img = img[..., :3]
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
