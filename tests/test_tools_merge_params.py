"""`wsss merge-params`: a preset merged into params.yaml as Snakemake's --configfile merges
it, params.yaml's comments kept, the grid stage's output paths kept, bad input refused."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss.config import ParamsError, deep_merge
from wsss.tools.merge_params import merge_into

REPO = Path(__file__).resolve().parents[1]


def _comments(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"#.*", text)]


@pytest.fixture
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


def test_the_smoke_preset_merged_keeps_comments_and_the_dvc_paths(params):
    before = params.read_text()
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    kept = merge_into(params, [REPO / "configs" / "smoke.yaml"])
    assert kept == ["results_dir", "datasets.synthetic.root"]
    after = params.read_text()
    # Every comment, in order, except the end-of-line comments of replaced values: they
    # described params.yaml's value (`seeds: [0]  # at least 3 ...` after the merge), so
    # they now name the preset; the comment lines after them stay.
    smoke_path = REPO / "configs" / "smoke.yaml"
    marked = f"# set by {smoke_path}"
    assert re.search(rf"\n  seeds: \[0\] +{re.escape(marked)}\n", after)
    assert "at least 3" in before and "at least 3" not in after
    stale = [c for c in _comments(before) if c not in _comments(after)]
    assert len(stale) == after.count(marked) > 0
    assert [c for c in _comments(after) if c != marked] == [
        c for c in _comments(before) if c not in stale
    ]
    assert "null" in after and "weights: null" in after  # not rewritten as empty values
    expected = deep_merge(yaml.safe_load(before), smoke)
    del expected["results_dir"]  # params.yaml has none: the schema default, results
    expected["datasets"]["synthetic"]["root"] = "data/synthetic"
    assert yaml.safe_load(after) == expected
    # merging again changes nothing
    merge_into(params, [REPO / "configs" / "smoke.yaml"])
    assert params.read_text() == after


def test_an_invalid_merge_is_refused_and_params_yaml_left_alone(params, tmp_path):
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -3\n")
    with pytest.raises(ParamsError, match=r"(?s)bad\.yaml is invalid:.*train\.epochs"):
        merge_into(params, [bad])
    assert params.read_text() == before
    bad.write_text("train: [1\n")
    with pytest.raises(SystemExit, match=r"(?s)bad\.yaml: not valid YAML.*bad\.yaml\", line 1"):
        merge_into(params, [bad])
    with pytest.raises(SystemExit, match=r"missing\.yaml: no such file"):
        merge_into(params, [tmp_path / "missing.yaml"])
    assert params.read_text() == before


def test_the_command_prints_what_it_kept(params):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "merge-params",
            "configs/smoke.yaml",
            "--params",
            params,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "kept results_dir from" in result.stdout and "comments kept" in result.stdout
