"""The per-dataset attention-diagnostics figure from hand-written diagnostics files."""

import json

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.report.attention_plots import load_diagnostics, plot_attention_diagnostics, run_values


def _entry(bg, own, other, rest=0.3, lift=2.0):
    return {
        "background_to_object_ratio": bg,
        "own_object_lift": own,
        "other_object_lift": other,
        "entropy_normalised": 0.8,
        "self_share": 0.4,
        "rest_of_object_share": rest,
        "other_objects_share": 0.1,
        "background_share": 0.2,
        "class_token_lift": lift,
    }


def _write(
    path, run, seed, blocks=None, affinity=None, skipped=None, dataset="synthetic", classes=None
):
    data = {"meta": {"dataset": dataset, "run": run, "seed": seed}, "skipped": skipped}
    if not skipped:
        data.update(blocks=blocks, affinity=affinity)
        if classes is not None:
            data["class_attention"] = {"blocks": [1], "class_token_lift": classes}
    path.write_text(json.dumps(data))
    return path


def test_values_per_block_then_affinity_with_none_as_nan(tmp_path):
    path = _write(
        tmp_path / "a.json",
        "r",
        0,
        [_entry(0.5, 2.0, None), _entry(3.0, 4.0, 1.5)],
        _entry(1.2, 3.0, 1.1),
    )
    run = load_diagnostics(path)
    values = run_values(run, "other_object_lift")
    assert np.isnan(values[0]) and values[1:].tolist() == [1.5, 1.1]
    assert run_values(run, "background_to_object_ratio").tolist() == [0.5, 3.0, 1.2]
    # A file without the summed class attention: its class-token point is missing.
    assert run_values(run, "class_token_lift")[:2].tolist() == [2.0, 2.0]
    assert np.isnan(run_values(run, "class_token_lift")[2])


def test_class_token_lift_ends_with_the_summed_class_attention_not_the_affinity(tmp_path):
    blocks = [_entry(1, 1, 1, rest=0.1, lift=1.5), _entry(1, 1, 1, rest=0.6, lift=4.0)]
    path = _write(tmp_path / "a.json", "r", 0, blocks, _entry(1, 1, 1, rest=0.5), classes=3.0)
    run = load_diagnostics(path)
    assert run_values(run, "class_token_lift").tolist() == [1.5, 4.0, 3.0]
    assert run_values(run, "rest_of_object_share").tolist() == [0.1, 0.6, 0.5]


def test_a_file_from_before_the_shares_still_plots(tmp_path):
    old = {"background_to_object_ratio": 2.0, "own_object_lift": 3.0, "other_object_lift": 1.0}
    path = _write(tmp_path / "old.json", "r", 0, [old, old], old)
    out = plot_attention_diagnostics([path], tmp_path / "fig.png")
    assert Image.open(out).size[0] > 800


def test_figure_of_two_runs_and_seeds_through_the_cli(tmp_path):
    files = [
        _write(
            tmp_path / f"{run}{seed}.json",
            run,
            seed,
            [_entry(0.5 + seed, 2, 1)] * 4,
            _entry(1, 3, 1),
            classes=2.5,
        )
        for run in ("mctformer_v2", "aream")
        for seed in (0, 1)
    ]
    out = tmp_path / "fig" / "attention_diagnostics.png"
    config = json.dumps({"run_order": ["aream"], "labels": {"aream": "AReAM"}})
    args = ["--config", config, "--diagnostics", *map(str, files), "--out", str(out)]
    assert main(["attention-figure", *args]) == 0
    width, height = Image.open(out).size
    assert width > 800 and height > 300


def test_all_skipped_gives_a_figure_that_says_why(tmp_path):
    files = [_write(tmp_path / "s.json", "r", 0, skipped="dataset coco has no instance masks")]
    out = plot_attention_diagnostics(files, tmp_path / "fig.png")
    assert Image.open(out).size[0] > 0


def test_bad_inputs_name_the_problem(tmp_path):
    a = _write(tmp_path / "a.json", "r", 0, [_entry(1, 1, 1)], _entry(1, 1, 1))
    b = _write(tmp_path / "b.json", "r", 0, [_entry(1, 1, 1)], _entry(1, 1, 1), dataset="voc")
    with pytest.raises(ValueError, match="several datasets"):
        plot_attention_diagnostics([a, b], tmp_path / "x.png")
    c = _write(tmp_path / "c.json", "r", 1, [_entry(1, 1, 1)] * 2, _entry(1, 1, 1))
    with pytest.raises(ValueError, match="different depths"):
        plot_attention_diagnostics([a, c], tmp_path / "x.png")
    (tmp_path / "bad.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError, match="bad.json: not an attention diagnostics file"):
        load_diagnostics(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="attention_diagnostics rule"):
        load_diagnostics(tmp_path / "none.json")
