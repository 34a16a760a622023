"""Dataset kinds are plug-ins (wsss.data.kinds): a kind declared in one module, here two toy
kinds declared in test code only, is validated, opened, prepared and scheduled by the
workflow without an edit anywhere else; no code outside the kind modules branches on a
kind's name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_workflow import _copy_project, _job_counts, _without_venv

from wsss.config import (
    ParamsError,
    conversion_family,
    conversion_stage,
    job_config,
    validate_params,
)
from wsss.data.datasets import open_dataset, prepare_dataset
from wsss.data.kinds import DATASET_KINDS, conversion_stages
from wsss.registry import scan_plugins

REPO = Path(__file__).resolve().parents[1]

# Two kinds as a contributor would write them, each in its own module: one already in the
# VOC layout, one that a conversion stage (`wsss convert-toy`) writes into the layout.
TOY_KINDS = """
import json

from wsss.data.kinds import DatasetKind, register_kind


@register_kind
class ToyLayoutKind(DatasetKind):
    name = "toy_layout"

    def class_names(self, config, layout):
        return ["apple", "pear"]


@register_kind
class ToyConvertedKind(DatasetKind):
    name = "toy_converted"
    conversion = "convert-toy"

    def class_names(self, config, layout):
        return json.loads((layout.root / "toy.json").read_text())["class_names"]

    def check_inputs(self, name, spec):
        return []  # its conversion stage writes the root
"""


@pytest.fixture
def toy_kinds(monkeypatch):
    """The toy kinds registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(DATASET_KINDS, "_entries", dict(DATASET_KINDS._entries))
    exec(compile(TOY_KINDS, "toy_kinds.py", "exec"), {"__name__": "toy_kinds"})


def _voc_layout(root: Path, ids=("a", "b")) -> Path:
    """A two-image VOC layout: PNG images, class-index masks (classes 1 and 2), one split."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for n, image_id in enumerate(ids):
        Image.fromarray(np.full((8, 8, 3), 40 * n, np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.png"
        )
        mask = np.zeros((8, 8), np.uint8)
        mask[2:6, 2:6] = n + 1
        Image.fromarray(mask).save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def _params(datasets: dict) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = datasets
    params["grid"]["datasets"] = list(datasets)
    return params


def _block(kind: str, root: Path) -> dict:
    return {"kind": kind, "root": str(root), "train_split": "train", "eval_split": "train"}


# ---------------------------------------------------------------- the registry


def test_the_project_kinds_are_registered_each_in_its_module():
    assert scan_plugins("wsss.data", "register_kind") == {
        "coco": "wsss.data.coco",
        "synthetic": "wsss.data.synthetic",
        "voc": "wsss.data.pascal_voc",
    }
    assert conversion_stages() == {"coco": "convert-coco"}
    assert DATASET_KINDS.get("synthetic").generated and DATASET_KINDS.get("synthetic").own_keys


def test_an_unknown_kind_fails_with_the_known_names(tmp_path):
    with pytest.raises(ValueError, match=r"datasets\.d\.kind: unsupported kind 'vocc' "):
        open_dataset({**_block("vocc", tmp_path), "name": "d"})
    with pytest.raises(ValueError, match=r"known: coco, synthetic, voc\)"):
        prepare_dataset({**_block("vocc", tmp_path), "name": "d"})
    with pytest.raises(ParamsError, match=r"datasets\.d\.kind: 'vocc' is not one of .*'voc'"):
        validate_params(_params({"d": _block("vocc", tmp_path)}))


# ---------------------------------------------------------------- a kind in the VOC layout


def test_a_voc_layout_kind_needs_only_its_module(toy_kinds, tmp_path):
    root = _voc_layout(tmp_path / "toy")
    params = _params({"toy": _block("toy_layout", root)})
    validate_params(params)  # the schema's enum is the registry's
    assert conversion_stage(params, "toy") is None
    dataset = open_dataset({**_block("toy_layout", root), "name": "toy"})
    assert dataset.kind == "toy_layout" and dataset.class_names == ["apple", "pear"]
    manifest = prepare_dataset({**_block("toy_layout", root), "name": "toy"}, progress=False)
    assert manifest["kind"] == "toy_layout" and manifest["splits"] == {"train": 2}
    assert set(manifest["files"]) == {
        "ImageSets/Segmentation/train.txt",
        "JPEGImages/a.png",
        "JPEGImages/b.png",
        "SegmentationClass/a.png",
        "SegmentationClass/b.png",
    }
    # the default checks: a missing root is named before any job; a kind-owned key
    # (synthetic's generator) is refused on another kind
    missing = _params({"toy": _block("toy_layout", tmp_path / "absent")})
    with pytest.raises(ParamsError, match=r"datasets\.toy\.root: no VOC-layout dataset at"):
        validate_params(missing)
    foreign = _params({"toy": {**_block("toy_layout", root), "generator": {"seed": 1}}})
    with pytest.raises(ParamsError, match=r"only a synthetic dataset has a generator"):
        validate_params(foreign)


# ---------------------------------------------------------------- a converted kind


def test_a_converted_kind_needs_its_module_and_its_stage(toy_kinds, tmp_path):
    root = tmp_path / "converted"
    params = _params({"toy": _block("toy_converted", root)})
    validate_params(params)  # nothing on disk yet: its stage writes the root
    assert conversion_stage(params, "toy") == "convert-toy"
    assert conversion_family(params, "toy") == "convert_toy"
    assert job_config(params, "convert-toy", {"dataset": "toy"}) == {
        **_block("toy_converted", root),
        "name": "toy",
    }
    with pytest.raises(FileNotFoundError, match="no VOC-layout dataset"):
        open_dataset({**_block("toy_converted", root), "name": "toy"})
    _voc_layout(root)
    (root / "toy.json").write_text(json.dumps({"class_names": ["x", "y"]}))
    assert open_dataset({**_block("toy_converted", root), "name": "toy"}).class_names == ["x", "y"]


def test_the_workflow_schedules_the_toy_kinds(tmp_path):
    """A dry run (the toy kinds imported before Snakemake starts, as an installed plug-in
    module would be): the converted dataset is converted once by its kind's stage, then both
    are prepared and run through the grid."""
    project = _copy_project(tmp_path / "project")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_kinds.py").write_text(TOY_KINDS)
    layout = _voc_layout(tmp_path / "toy")
    override = {
        "grid": {"datasets": ["toy", "conv"], "methods": ["mctformer_v2"], "seeds": [0]},
        "datasets": {
            "toy": _block("toy_layout", layout),
            "conv": _block("toy_converted", tmp_path / "converted"),
        },
        "results_dir": "results-toy",
    }
    (project / "toy.yaml").write_text(yaml.safe_dump(override))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "plugins"))
    env["PATH"] = _without_venv(env["PATH"])
    env.setdefault("XDG_CACHE_HOME", str(project / ".cache"))
    start = (
        "import sys, toy_kinds; from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", start, "-n", "-p", "--cores", "1", "--configfile", "toy.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = _job_counts(result.stdout)
    assert counts["convert_data"] == 1 and counts["prepare_data"] == 2
    assert counts["train"] == 2 and counts["evaluate_cams"] == 2
    convert = result.stdout.split("rule convert_data:")[1].split("\nrule ")[0]
    assert "wildcards: dataset=conv" in convert
    assert "wsss convert-toy --config" in convert
    assert "results-toy/data/conv.conversion.json" in result.stdout


# ---------------------------------------------------------------- no branching on kind names

KIND_NAMES = sorted(scan_plugins("wsss.data", "register_kind"))
_NAMES = "|".join(KIND_NAMES)
# A dataset's kind compared or looked up outside the kind modules: config["kind"] == ...,
# spec.get("kind") != ..., dataset.kind in (...), a kind name compared or matched as a
# literal ('== "coco"', 'in ("voc", "coco")', 'case "synthetic"').
BRANCHING = [
    re.compile(
        r"""(\[\s*["']kind["']\s*\]|\.get\(\s*["']kind["']\s*\)|\.kind)\s*(==|!=|in\b|not\s+in\b)"""
    ),
    re.compile(rf"""(==|!=)\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=)"""),
    re.compile(rf"""\bin\s*[(\[{{][^)\]}}]*["']({_NAMES})["']"""),
    re.compile(rf"""\bcase\s+["']({_NAMES})["']"""),
]


def kind_branches(text: str) -> list[str]:
    """Lines of ``text`` that branch on a dataset kind's name."""
    return [
        line.strip()
        for line in text.splitlines()
        if not line.lstrip().startswith("#") and any(p.search(line) for p in BRANCHING)
    ]


def _scanned_files() -> list[Path]:
    kind_modules = {
        REPO / (module.replace(".", "/") + ".py")
        for module in scan_plugins("wsss.data", "register_kind").values()
    } | {REPO / "wsss" / "data" / "kinds.py"}
    files = [*sorted((REPO / "wsss").rglob("*.py")), *sorted((REPO / "benchmarks").glob("*.py"))]
    files += [REPO / "workflow" / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    return [f for f in files if f not in kind_modules]


def test_the_branch_scan_finds_what_it_must():
    """The scan itself can fail: each way the code branched on a kind before the kinds
    were plug-ins is found, and the code of today's non-kind modules is not."""
    for line in (
        'if spec["kind"] == "coco":',
        'elif spec["kind"] != "synthetic":  # comment',
        "if kind == 'synthetic':",
        'if dataset.kind == "synthetic":',
        'if config["datasets"][wildcards.dataset]["kind"] == "coco":',
        'if dataset_kind(dataset) == "coco":',
        'if config.get("kind") in ("voc", "coco"):',
        '    case "voc":',
    ):
        assert kind_branches(line) == [line.strip()], line
    for line in (
        'order = np.argsort(classes, kind="stable")',
        "if kind in _types(alt):",
        '"dataset_kinds": {d: params["datasets"][d]["kind"] for d in datasets},',
        'p.add_argument("--dataset", default="synthetic")',
        'facts = decode_image(data) if kind == "image" else decode_mask(data)',  # a file kind
    ):
        assert kind_branches(line) == [], line


def test_no_code_outside_the_kind_modules_branches_on_a_kind():
    found = {
        str(path.relative_to(REPO)): lines
        for path in _scanned_files()
        if (lines := kind_branches(path.read_text()))
    }
    assert found == {}, "ask the kind's declaration (wsss.data.kinds) instead"
