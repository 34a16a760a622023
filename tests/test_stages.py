"""wsss.stages: the options every stage shares (``--config`` as JSON text or @FILE)."""

import argparse

import pytest

from wsss.stages import json_arg


def test_config_is_json_text_or_a_file(tmp_path):
    assert json_arg('{"a": 1}') == {"a": 1}
    path = tmp_path / "job.json"
    path.write_text('{"dataset": {"kind": "synthetic"}}')
    assert json_arg(f"@{path}") == {"dataset": {"kind": "synthetic"}}


def test_bad_config_names_the_problem_and_the_file(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match=r"not valid JSON.*or @FILE"):
        json_arg("config.json")  # a path without @ is not JSON
    with pytest.raises(argparse.ArgumentTypeError, match=r"--config must be a JSON object"):
        json_arg("[1, 2]")
    missing = tmp_path / "missing.json"
    with pytest.raises(argparse.ArgumentTypeError, match=rf"--config file {missing}: cannot read"):
        json_arg(f"@{missing}")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(argparse.ArgumentTypeError, match=rf"--config file {bad} is not valid"):
        json_arg(f"@{bad}")
