"""dvc.yaml's hand-written params list is checked against the params schema, so that
`dvc exp run -S <key>` reruns the grid for every setting that changes a result."""

import re
from pathlib import Path

import pytest
import yaml

from wsss.config.schema import _schema

REPO = Path(__file__).resolve().parents[1]
# Top-level keys the grid stage leaves out, and why.
GRID_PARAM_EXCEPTIONS = {
    "pretrain": "its own DVC stage (pretrain) builds the proxy weights",
    "resources": "cluster resources: how a job runs, never what it computes",
    "results_dir": "where the outputs go; the grid stage's outs name the default folder",
}


def grid_params(dvc: dict) -> set[str]:
    return set(dvc["stages"]["grid"]["params"])


def missing_and_extra(dvc: dict) -> tuple[set[str], set[str]]:
    expected = set(_schema()["properties"]) - set(GRID_PARAM_EXCEPTIONS)
    listed = grid_params(dvc)
    return expected - listed, listed - expected


@pytest.fixture
def dvc():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_the_grid_stage_lists_every_schema_key_but_the_documented_exceptions(dvc):
    assert missing_and_extra(dvc) == (set(), set())
    assert set(GRID_PARAM_EXCEPTIONS) <= set(_schema()["properties"])


@pytest.mark.parametrize("key", ["attention_diagnostics", "train"])
def test_the_check_fails_when_a_key_is_dropped(dvc, key):
    """The drift test itself: dropping a key from the list is caught, naming it."""
    dvc["stages"]["grid"]["params"].remove(key)
    assert missing_and_extra(dvc) == ({key}, set())


def test_the_check_fails_when_an_exception_is_listed(dvc):
    dvc["stages"]["grid"]["params"].append("resources")
    assert missing_and_extra(dvc) == (set(), {"resources"})


# The wsss command each DVC stage runs (through Snakemake); the grid stage runs them all.
STAGE_COMMANDS = {"pretrain": ["pretrain"]}


def uncovered(deps: list[str], command: str) -> list[str]:
    """The code inputs of ``wsss <command>`` that no dep (a file or a folder) covers."""
    from wsss.code_deps import code_inputs

    return [
        f for f in code_inputs(command) if not any(f == d or f.startswith(f"{d}/") for d in deps)
    ]


def test_every_dvc_stage_depends_on_the_code_its_command_runs(dvc):
    from wsss.cli import commands

    stages = dvc["stages"]
    assert set(STAGE_COMMANDS) | {"grid"} == set(stages)
    for command in commands():  # the grid stage runs every stage of the DAG
        assert uncovered(stages["grid"]["deps"], command) == [], command
    for stage, stage_commands in STAGE_COMMANDS.items():
        for command in stage_commands:
            assert uncovered(stages[stage]["deps"], command) == [], (stage, command)


@pytest.mark.parametrize("dropped", ["wsss/runtime.py", "wsss/checkpoint.py", "wsss/models"])
def test_the_deps_check_fails_when_a_dep_is_dropped(dvc, dropped):
    deps = [d for d in dvc["stages"]["pretrain"]["deps"] if d != dropped]
    assert uncovered(deps, "pretrain")


def _out_paths(stage: dict) -> list[str]:
    return [
        next(iter(out)) if isinstance(out, dict) else out
        for kind in ("outs", "metrics", "plots")
        for out in stage.get(kind, [])
    ]


def test_merge_params_keeps_exactly_the_grid_stages_output_paths(dvc):
    """`wsss merge-params` keeps params.yaml's values of DVC_PATHS: every output of the grid
    stage lies under the results folder or is the synthetic root, and those are the values
    params.yaml (with the schema default) gives them."""
    from wsss.config import results_dir
    from wsss.tools.merge_params import DVC_PATHS

    assert DVC_PATHS == (("results_dir",), ("datasets", "synthetic", "root"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    results, synthetic = results_dir(params), params["datasets"]["synthetic"]["root"]
    paths = _out_paths(dvc["stages"]["grid"])
    assert synthetic in paths
    assert all(p == synthetic or p.startswith(f"{results}/") for p in paths), paths


def undeclared_plots(dvc: dict, outputs: list[str], results: str) -> list[str]:
    """The workflow's outputs under ``<results>/plots/`` that no plots entry of the grid
    stage covers (the file itself or a folder above it)."""
    declared = [p for p in _out_paths({"plots": dvc["stages"]["grid"]["plots"]})]
    return [
        path
        for path in outputs
        if path.startswith(f"{results}/plots/")
        and not any(path == p or path.startswith(f"{p}/") for p in declared)
    ]


@pytest.fixture(scope="module")
def workflow_outputs(tmp_path_factory) -> list[str]:
    """Every output file of the smoke grid's DAG (`snakemake --summary`, no job run), with
    the default results folder for the smoke preset's (the layout below it is the same)."""
    import subprocess
    import sys

    from test_workflow import _copy_project

    project = _copy_project(tmp_path_factory.mktemp("summary"))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", "--configfile", "configs/smoke.yaml"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    outputs = [line.split("\t")[0] for line in result.stdout.splitlines()[1:] if line.strip()]
    return [re.sub(r"^results-smoke/", "results/", path) for path in outputs]


def test_every_plot_csv_of_the_workflow_is_a_dvc_plot(dvc, workflow_outputs):
    """dvc.yaml's plots list is written by hand: every CSV the workflow writes under
    results/plots/ (threshold curves, per-class IoU, training curves) must be in it."""
    curves = [p for p in workflow_outputs if p.startswith("results/plots/train_curves/")]
    assert curves == ["results/plots/train_curves/synthetic.csv"]
    assert undeclared_plots(dvc, workflow_outputs, "results") == []
    train_curves = dvc["stages"]["grid"]["plots"][-3]["results/plots/train_curves"]
    assert (train_curves["x"], train_curves["y"]) == ("epoch", "loss")
    # the drift test itself: dropping the training curves from dvc.yaml is caught
    dvc["stages"]["grid"]["plots"] = [
        p for p in dvc["stages"]["grid"]["plots"] if "results/plots/train_curves" not in p
    ]
    assert undeclared_plots(dvc, workflow_outputs, "results") == curves
