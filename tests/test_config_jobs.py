"""Every job's ``--config`` is built in wsss.config.jobs and nowhere else; every rule's
resources come from job_resources."""

import json
import re
from pathlib import Path

import pytest
import yaml

from wsss.config import JOBS, job_config, job_resources, table_config
from wsss.data.kinds import conversion_stages

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "workflow" / "Snakefile"]


@pytest.fixture
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _stages_with_config() -> set[str]:
    """The ``wsss`` stage commands that take ``--config`` (read from their sources)."""
    return {
        path.stem.replace("_", "-")
        for path in (REPO / "wsss" / "stages").glob("*.py")
        if path.stem != "__init__" and '"--config"' in path.read_text()
    }


def test_every_stage_that_takes_a_config_has_one_builder():
    """JOBS, plus the dataset kinds' conversion stages (one builder: conversion_config)."""
    assert set(JOBS) | set(conversion_stages().values()) == _stages_with_config()
    assert not set(JOBS) & set(conversion_stages().values())


def test_every_rule_passes_its_config_from_job_config():
    """A rule's ``--config`` is ``job_config("<its command>")``: no rule builds a config
    (no json.dumps of a dict, no ``*_config(config, ...)`` call) in a rule file."""
    for path in RULES:
        text = path.read_text()
        for shell in re.findall(r'"wsss ([a-z-]+) --config \{params\.cfg:q\}', text):
            assert f'job_config("{shell}"' in text, f"{path.name}: wsss {shell}"
        assert not re.search(r"wsss_config\.(?!job_config)\w+_config\(", text), path.name
        assert "json.dumps(" not in text.replace("return lambda wc: json.dumps(", ""), path.name


def test_every_rule_takes_its_resources_from_job_resources():
    for path in RULES:
        for block in re.findall(r"\n( *)resources:\n((?:\1    .*\n)+)", path.read_text()):
            assert block[1].strip().startswith("**job_resources("), (path.name, block[1])
            assert block[1].strip().count("\n") == 0, (path.name, block[1])


def test_config_commands_in_the_rules_are_every_stage_with_a_config():
    """Each stage by name; the conversion stages through the one rule that asks the
    dataset's kind (convert_data: job_config(conversion_stage))."""
    text = "".join(path.read_text() for path in RULES)
    commands = set(re.findall(r'job_config\("([a-z-]+)"', text))
    assert commands == set(JOBS)
    assert text.count("job_config(conversion_stage)") == 1


def test_a_conversion_stage_gets_the_whole_dataset_block(params):
    params = {**params, "datasets": {"c": {"kind": "coco", "root": "x", "source": {"s": 1}}}}
    assert job_config(params, "convert-coco", {"dataset": "c"}) == {
        "kind": "coco",
        "root": "x",
        "source": {"s": 1},
        "name": "c",
    }


def test_an_unknown_stage_names_the_known_ones(params):
    with pytest.raises(KeyError, match=r"no job config for stage 'trian'; known: .*train"):
        job_config(params, "trian", {})


def test_job_config_gives_the_builders_values(params):
    wildcards = {"dataset": "synthetic", "method": "aream", "seed": "2"}
    config = job_config(params, "segment", wildcards)
    assert config["meta"] == {"dataset": "synthetic", "method": "aream", "seed": 2}
    config = job_config(
        params, "attention-diagnostics", {"dataset": "synthetic", "train": "aream", "seed": "1"}
    )
    assert config["meta"] == {"dataset": "synthetic", "run": "aream", "seed": 1}
    assert config["affinity_layers"] == params["cam"]["affinity_layers"]
    json.dumps(job_config(params, "table", {}))  # JSON all the way down


def test_the_figure_jobs_get_order_and_labels_in_one_config(params):
    """plots and attention-figure: the grid's order and display labels as a job config (no
    NAME=LABEL lists in the rules); a trained run is labelled by its unrefined variant."""
    methods = params["grid"]["methods"]
    plots = job_config(params, "plots", {"dataset": "synthetic"})
    assert plots == {"method_order": methods, "labels": table_config(params)["labels"]}
    figure = job_config(params, "attention-figure", {"dataset": "synthetic"})
    runs = list(dict.fromkeys(table_config(params)["training_runs"][m] for m in methods))
    assert figure["run_order"] == runs and sorted(figure["labels"]) == sorted(runs)
    assert figure["labels"]["mctformer_v2"] == plots["labels"]["mctformer_v2"]
    params["methods"]["mctformer_v2"]["label"] = "MCT"
    assert job_config(params, "attention-figure", {})["labels"]["mctformer_v2"] == "MCT"
    for path in RULES:
        assert "=LABEL" not in path.read_text() and "--labels {params" not in path.read_text()


def test_the_table_job_gets_every_setting_in_one_config(params):
    config = table_config(params)
    methods = params["grid"]["methods"]
    assert config["method_order"] == methods
    assert config["dataset_kinds"] == {"synthetic": "synthetic"}
    assert set(config["labels"]) == set(methods) == set(config["training_runs"])
    assert config["baselines"]["aream"] == "mctformer_v2"
    assert "mctformer_v2" not in config["baselines"]
    assert config["intervals"] == params["intervals"] == {"n_resamples": 4000, "seed": 0}


def test_job_resources_carry_the_family_resources_and_execution_knobs(params):
    params["resources"]["train"] = {"gpu": 2, "threads": 4, "mem_mb": 1000, "runtime": 5}
    resources = job_resources(params, "train", "train")
    assert {k: resources[k] for k in ("gpu", "mem_mb", "runtime", "nodes")} == {
        "gpu": 2,
        "mem_mb": 1000,
        "runtime": 5,
        "nodes": 1,
    }

    class Wildcards:
        dataset = "synthetic"

    assert resources["device"](Wildcards) == "auto"
    assert resources["cache_images"](Wildcards) in (0, 1)
    assert "device" not in job_resources(params, "evaluate_cams")
    params["resources"]["cams"] = {"gpu": 2}
    with pytest.raises(ValueError, match=r"resources.cams.gpu: 2, but the cams job uses one GPU"):
        job_resources(params, "cams")
