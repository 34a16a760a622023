"""score_segmentation: every image of a split predicted in batches and scored against its mask."""

import numpy as np
import pytest
import torch
from conftest import tiny_synthetic_dataset

from wsss.data.datasets import open_dataset
from wsss.evaluation.segmentation import score_segmentation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return open_dataset(tiny_synthetic_dataset(root, num_train=5, num_val=2, image_size=32))


# nothing predicted as a class: its precision is undefined (NaN), as summarize reports it
@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_all_background_prediction_scores_as_counted_by_hand(dataset):
    masks = [dataset.layout.load_mask(i) for i in dataset.layout.split_ids("train")]
    valid = np.concatenate([m[m != 255] for m in masks])
    # predicting background everywhere: background IoU = its share of the labelled pixels,
    # every class present in the masks scores 0
    expected = {"background": (valid == 0).mean()}
    seen = []

    def predict(images: torch.Tensor) -> np.ndarray:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        seen.append(len(images))
        return np.zeros((len(images), *images.shape[2:]), np.uint8)

    result = score_segmentation(
        predict, dataset, "train", torch.device("cpu"), batch_size=2, progress=False
    )
    assert result["split"] == "train" and result["images"] == 5 and seen == [2, 2, 1]
    per_class = result["per_class"]
    assert per_class["iou"]["background"] == pytest.approx(expected["background"])
    present = {dataset.class_names[c - 1] for c in np.unique(valid) if c != 0}
    assert present and all(per_class["iou"][name] == 0 for name in present)


def test_a_perfect_prediction_scores_100(dataset):
    ids = iter(dataset.layout.split_ids("val"))

    def predict(images: torch.Tensor) -> np.ndarray:
        # batches come in split order; 255 (ignored) is predicted as background
        masks = [dataset.layout.load_mask(next(ids)) for _ in range(len(images))]
        return np.stack([np.where(m == 255, 0, m) for m in masks]).astype(np.uint8)

    result = score_segmentation(
        predict, dataset, "val", torch.device("cpu"), batch_size=1, progress=False
    )
    assert result["miou"] == pytest.approx(1.0)


def test_an_empty_split_is_refused(dataset, monkeypatch):
    monkeypatch.setattr(dataset.layout, "split_ids", lambda split: [])
    with pytest.raises(ValueError, match="split 'val' is empty"):
        score_segmentation(lambda x: x, dataset, "val", torch.device("cpu"), progress=False)
