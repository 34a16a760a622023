"""benchmarks/proxy_recipes.py: the recipe tables read from hand-made run files."""

import json
import sys
from pathlib import Path

import pytest

# The script lives outside the package (benchmarks/), run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from proxy_recipes import main, tables  # noqa: E402


def _stats(bg, other, own=2.0, entropy=0.5):
    return {
        "background_to_object_ratio": bg,
        "other_object_lift": other,
        "own_object_lift": own,
        "entropy_normalised": entropy,
    }


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _recipe(root: Path, bg3: float, hits: int, seed: int = 0) -> Path:
    """A results_dir with one trained run (4 blocks) and one variant scored on 2 images of
    2 labels: background IoU 1, object IoU hits/10 in both images."""
    run = root / f"runs/synthetic/train/mctformer_v2/seed{seed}"
    blocks = [_stats(0.5, 1.0), _stats(0.5, 1.0), _stats(0.5, 1.0), _stats(bg3, 2.0)]
    _write(
        run / "attention_diagnostics.json",
        {
            "split": "train",
            "images": 2,
            "min_fraction": 0.5,
            "affinity_blocks": [0, 1, 2, 3],
            "blocks": blocks,
            "affinity": _stats(bg3 / 2, 1.5, own=8.0, entropy=0.7),
        },
    )
    _write(run / "train_metrics.json", {"train_map": 0.9})
    image = {"labels": [0, 1], "intersection": [10, hits], "union": [10, 10]}
    _write(
        root / f"runs/synthetic/mctformer_v2/seed{seed}/cam_metrics.json",
        {
            "meta": {"dataset": "synthetic", "method": "mctformer_v2", "seed": seed},
            "cam": {
                "split": "train",
                "miou": (1 + hits / 10) / 2,
                "threshold": 0.99 if hits < 5 else 0.3,
                "threshold_at_edge": hits < 5,
                "per_image": {
                    "threshold": 0.3,
                    "num_labels": 2,
                    "images": {"a": image, "b": image},
                },
            },
        },
    )
    return root


def test_tables_show_blocks_miou_thresholds_and_paired_difference(tmp_path):
    scratch = _recipe(tmp_path / "scratch", bg3=4.0, hits=6)
    frozen = _recipe(tmp_path / "frozen", bg3=0.2, hits=2)
    text = tables(
        [("scratch", scratch), ("frozen", frozen)],
        "synthetic",
        "mctformer_v2",
        [0],
        "mctformer_v2",
        variants=["mctformer_v2"],
    )
    # per block bg->object / other-object lift, then the affinity and the train mAP
    early = "0.50 / 1.00 | 0.50 / 1.00 | 0.50 / 1.00"
    assert f"| scratch | {early} | 4.00 / 2.00 | 8.00 | 1.50 | 2.00 | 0.900 |" in text
    assert f"| frozen | {early} | 0.20 / 2.00 | 8.00 | 1.50 | 0.10 | 0.900 |" in text
    # identical images: mIoU (1 + 0.6) / 2 = 80.0; the frozen recipe's (1 + 0.2) / 2 = 60.0
    # at the sweep end, 20 points below, paired; one seed: no interval over seeds
    assert "| scratch | 80.0 [one seed] (0.30) |  |" in text
    assert "| frozen | 60.0 [one seed] (0.99*) | -20.0 [one seed] |" in text


def test_missing_file_is_named(tmp_path):
    scratch = _recipe(tmp_path / "scratch", bg3=4.0, hits=6)
    with pytest.raises(FileNotFoundError, match="results-x/runs/synthetic/train/mctformer_v2"):
        main(["--recipe", f"scratch={scratch}", "--recipe", f"x={tmp_path / 'results-x'}"])


def test_recipe_argument_needs_a_name_and_a_folder(capsys):
    with pytest.raises(SystemExit):
        main(["--recipe", "no-equals-sign"])
    assert "expected NAME=RESULTS_DIR" in capsys.readouterr().err
