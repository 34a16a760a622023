"""Training images as torch tensors: normalisation and the augmenting classification dataset."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsss.data.datasets import OpenedDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 B x 3 x H x W (or 3 x H x W) -> float, ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(-1, 1, 1)
    return (images.float() / 255.0 - mean) / std


class ClassificationDataset(Dataset):
    """Images with image-level labels for training, with random-resized-crop + flip.

    The crop is drawn from a generator seeded per (seed, epoch, index) so a
    run is reproducible whatever the data-loader worker layout.
    """

    def __init__(
        self,
        dataset: OpenedDataset,
        split: str,
        img_size: int,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        hflip: bool = True,
        cache_images: bool = False,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.ids = dataset.layout.split_ids(split)
        if not self.ids:
            raise ValueError(f"dataset {dataset.name}: split {split!r} is empty")
        self.img_size = img_size
        self.crop_scale = crop_scale
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0
        self.labels = np.stack(
            [
                dataset.layout.image_labels(i, dataset.num_classes, dataset.label_source())
                for i in self.ids
            ]
        ).astype(np.float32)
        self._cache: dict[int, torch.Tensor] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _image(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        # np.array: a writable copy (decoded images may be read-only views; torch warns on those)
        image = torch.from_numpy(np.array(self.dataset.layout.load_image(self.ids[index])))
        image = image.permute(2, 0, 1).contiguous()
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._image(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        _, height, width = image.shape
        area = height * width * rng.uniform(*self.crop_scale)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_h = int(round(min(height, np.sqrt(area / aspect))))
        crop_w = int(round(min(width, np.sqrt(area * aspect))))
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        crop = image[:, top : top + crop_h, left : left + crop_w].float()
        crop = F.interpolate(
            crop[None], size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )[0]
        if self.hflip and rng.random() < 0.5:
            crop = crop.flip(-1)
        return normalize(crop.clamp(0, 255)), torch.from_numpy(self.labels[index])
