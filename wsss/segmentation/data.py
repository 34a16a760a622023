"""Training pairs for stage 2: images with their pseudo-label PNGs, augmented.

Augmentation (DeepLab practice, as the official ``seg/train_seg.py``): a
random rescale of the image (bilinear) and its label (nearest), padding to the
crop size (image with the mean colour, i.e. 0 after normalisation; label with
255, ignored by the loss), a random crop and a random horizontal flip. The
random numbers come from a generator seeded per (seed, epoch, index), so a run
is reproducible whatever the data-loader worker layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsss.data.classification import normalize
from wsss.data.datasets import OpenedDataset
from wsss.data.palette import IGNORE_INDEX, load_label_png


class PseudoLabelDataset(Dataset):
    """(normalised 3 x S x S image, S x S int64 label) pairs of a split, S = ``crop_size``."""

    def __init__(
        self,
        dataset: OpenedDataset,
        split: str,
        labels_dir: str | Path,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 1.5),
        hflip: bool = True,
        cache: bool = False,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.labels_dir = Path(labels_dir)
        self.ids = dataset.layout.split_ids(split)
        if not self.ids:
            raise ValueError(f"dataset {dataset.name}: split {split!r} is empty")
        if not self.labels_dir.is_dir():
            raise FileNotFoundError(
                f"pseudo-label folder {self.labels_dir} does not exist; run the pseudo_labels stage"
            )
        missing = [i for i in self.ids if not (self.labels_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.labels_dir} lacks the pseudo-labels of {len(missing)} {split} images "
                f"(e.g. {missing[0]}.png); rerun the pseudo_labels stage"
            )
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The un-augmented (3 x H x W uint8 image, H x W uint8 label)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image_id = self.ids[index]
        image = self.dataset.layout.load_image(image_id)
        label = load_label_png(self.labels_dir / f"{image_id}.png")
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"{image_id}: image is {image.shape[:2]}, its pseudo-label "
                f"{self.labels_dir / f'{image_id}.png'} is {label.shape}"
            )
        pair = (
            torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(),  # a writable copy
            torch.from_numpy(np.array(label)),
        )
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.pair(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale = rng.uniform(*self.scale_range)
        height, width = label.shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = normalize(image)[None]
        y = label[None, None].float()
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="nearest")
        x, y = x[0], y[0, 0].long()
        crop = self.crop_size
        pad_h, pad_w = max(0, crop - size[0]), max(0, crop - size[1])
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            y = F.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(rng.integers(0, y.shape[0] - crop + 1))
        left = int(rng.integers(0, y.shape[1] - crop + 1))
        x = x[:, top : top + crop, left : left + crop]
        y = y[top : top + crop, left : left + crop]
        if self.hflip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()
