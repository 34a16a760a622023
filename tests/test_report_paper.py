"""The packaged paper numbers and their loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wsss.data.kinds import DATASET_KINDS
from wsss.report.paper import load_paper_numbers, paper_numbers

REPO = Path(__file__).resolve().parents[1]


def test_reported_numbers_by_kind_and_variant():
    aream = paper_numbers("voc", "aream")
    assert aream["cam_miou"]["value"] == 67.93 and aream["cam_miou"]["split"] == "train"
    assert aream["cam_miou"]["verified"] and aream["cam_miou"]["source"] == "methods.md 3.6"
    entropy = paper_numbers("voc", "aream_entropy")["cam_miou"]  # README: entropy layer weights
    assert entropy["value"] == 67.73 and entropy["split"] == "train" and entropy["verified"]

    mct = paper_numbers("voc", "mctformer_v2_affinity")
    assert mct["seg_miou_val"]["value"] == 71.9 and mct["seg_miou_test"]["value"] == 71.6
    assert mct["cam_miou"]["value"] == 61.7 and not mct["cam_miou"]["verified"]
    assert paper_numbers("coco", "mctformer_v2_affinity")["seg_miou_val"]["value"] == 42.0

    # The decoder is shared by both ClusterCAM variants, and so is its number.
    assert paper_numbers("voc", "clustercam") == paper_numbers("voc", "clustercam_affinity")
    assert paper_numbers("coco", "clustercam")["seg_miou_val"]["value"] == 41.8


@pytest.mark.parametrize(
    "kind, variant",
    [
        ("voc", "mctformer_v2_adcam"),  # AD-CAM: no number could be verified
        ("voc", "doei"),  # DOEI: its gains do not say what they refer to
        ("voc", "mctformer_v2"),  # the official numbers are of the refined CAM
        ("synthetic", "aream"),
        ("voc", "no_such_variant"),
    ],
)
def test_unknown_is_empty(kind, variant):
    assert paper_numbers(kind, variant) == {}


def test_result_is_a_copy():
    paper_numbers("voc", "aream")["cam_miou"]["value"] = 0.0
    assert paper_numbers("voc", "aream")["cam_miou"]["value"] == 67.93


def test_every_key_names_a_variant_and_a_dataset_kind():
    data = load_paper_numbers(REPO / "wsss" / "resources" / "paper_numbers.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(data) == {"voc", "coco"} and set(data) <= set(DATASET_KINDS.names())
    for variants in data.values():
        assert set(variants) <= set(params["methods"])


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"value": 0.679, "split": "train"}, "exactly the keys"),
        (
            {
                "value": 679,
                "split": "train",
                "verified": True,
                "source": "methods.md 3.6",
                "note": "",
            },
            "mIoU in percent",
        ),
        (
            {
                "value": 67.9,
                "split": "trainval",
                "verified": True,
                "source": "methods.md 3.6",
                "note": "",
            },
            "split",
        ),
        (
            {"value": 67.9, "split": "train", "verified": True, "source": "a blog", "note": ""},
            "methods.md <section>",
        ),
    ],
)
def test_malformed_files_are_refused(tmp_path, entry, message):
    path = tmp_path / "numbers.yaml"
    path.write_text(yaml.safe_dump({"voc": {"aream": {"cam_miou": entry}}}))
    with pytest.raises(ValueError, match=message):
        load_paper_numbers(path)
    path.write_text(yaml.safe_dump({"voc": {"aream": {"miou": entry}}}))
    with pytest.raises(ValueError, match="unknown metric"):
        load_paper_numbers(path)
