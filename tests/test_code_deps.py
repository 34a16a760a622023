"""Each rule's code inputs are the code its job really runs (wsss.code_deps), and each
job's params are the values it reads: what reruns after an edit is exactly what it must."""

import re
from pathlib import Path

import pytest
import yaml
from test_workflow import _copy_project, _job_counts, _jobs, _snakemake

from wsss.code_deps import closure, code_inputs, command_modules

REPO = Path(__file__).resolve().parents[1]
RULES = (
    "prepare_data",
    "train",
    "entropy_weights",
    "cams",
    "evaluate_cams",
    "evaluate_decoder",
    "pseudo_labels",
    "segment",
    "table",
    "plots",
    "gallery",
    "table_html",
    "attention_diagnostics",
    "attention_figure",
)
# Imports a stage makes only when a setting is on: PAR in the pseudo-label stage
# (pseudo_labels.par.enabled; it pulls in torch, which the plain rule never loads). The
# closure declares them anyway (every import counts), so editing them reruns the
# pseudo-label jobs even with PAR off: conservative, never stale. A run with the
# setting off may leave exactly these (and what only they import) unimported.
CONDITIONAL_IMPORTS = {"pseudo_labels": ("wsss.ops.par",)}
# The smoke DAG plus the methods whose training imports more than the baseline's.
GRID = {
    "grid": {
        "methods": [
            "mctformer_v2",
            "mctformer_v2_affinity",
            "aream",
            "aream_entropy",
            "clustercam",
        ]
    },
    "methods": {"clustercam": {"cam": {"class_layers": 2}}},
    # the smoke model has 2 blocks: block 0 refines, block 1 gets AReAM's loss
    "method_params": {
        "aream": {"layer_index": 1, "cls_epochs": 1},
        "clustercam": {"seg_start_epoch": 1, "cluster_cell": 1, "pseudo_class_layers": 2},
    },
}


# Imported into every Python process of the run (sitecustomize): at exit, each job writes
# the wsss modules it really imported to stderr, which its rule logs. (-X importtime would
# miss modules imported through importlib, as the CLI imports its stage.)
RECORDER = """
import atexit, sys

def _record():
    modules = sorted(m for m in sys.modules if m == "wsss" or m.startswith("wsss."))
    sys.stderr.write("wsss-imported: " + " ".join(modules) + "\\n")
    heavy = [m for m in ("torch", "timm", "torchvision") if m in sys.modules]
    sys.stderr.write("heavy-imported: " + " ".join(heavy) + "\\n")

atexit.register(_record)
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The grid above run once with every job's imports recorded in its log, and the
    dry-run plan of the same DAG (each job's declared inputs)."""
    project = _copy_project(tmp_path_factory.mktemp("deps") / "project")
    (project / "grid.yaml").write_text(yaml.safe_dump(GRID))
    hook = project.parent / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORDER)
    args = ("--configfile", "configs/smoke.yaml", "grid.yaml")
    plan = _snakemake(project, "-n", "-p", "--forceall", *args).stdout
    _snakemake(project, *args, env={"PYTHONPATH": str(hook)})
    return project, args, plan


def _imported(log: Path) -> set[str]:
    """The wsss modules a job imported, from the recorder's line in its log."""
    lines = re.findall(r"^wsss-imported: (.*)$", log.read_text(), re.M)
    assert len(lines) == 1, f"{log}: {len(lines)} recorder lines (one job per log expected)"
    return set(lines[0].split())


@pytest.mark.slow
def test_declared_code_inputs_are_the_modules_each_job_imported(ran):
    project, _, plan = ran
    checked = 0
    for rule in RULES:
        for job in _jobs(plan, rule):
            declared = {
                p.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                for p in job["input"].split(", ")
                if p.startswith("wsss/") and p.endswith(".py")
            }
            log = next(p for p in job["log"].split(", ") if p.endswith(".log"))
            real = _imported(project / log)
            assert real, f"{log}: no wsss module recorded"
            # what a stage imports only when a setting is on is declared (conservatively)
            # but may be absent from a run with the setting off: exactly those modules
            optional = closure(CONDITIONAL_IMPORTS.get(rule, ()))
            assert real <= declared and declared - real <= optional, (
                f"rule {rule} ({log}): declared but not imported "
                f"{sorted(declared - real)}; imported but not declared {sorted(real - declared)}"
            )
            checked += 1
    assert checked >= 30


# Rules that only score, plot or write tables: their jobs import neither torch nor timm
# (seconds of start-up each; tests/test_cli.py checks their commands' start-up alone).
NO_MODEL_RULES = (
    "prepare_data",
    "evaluate_cams",
    "pseudo_labels",
    "table",
    "plots",
    "gallery",
    "table_html",
    "attention_figure",
)


@pytest.mark.slow
def test_jobs_that_build_no_model_import_no_torch(ran):
    project, _, plan = ran
    checked = 0
    for rule in NO_MODEL_RULES:
        for job in _jobs(plan, rule):
            log = next(p for p in job["log"].split(", ") if p.endswith(".log"))
            lines = re.findall(r"^heavy-imported: ?(.*)$", (project / log).read_text(), re.M)
            assert len(lines) == 1, f"{log}: {len(lines)} recorder lines"
            assert lines[0].split() == [], f"rule {rule} ({log}) imported {lines[0]}"
            checked += 1
    assert checked >= len(NO_MODEL_RULES)


def test_an_unrelated_module_is_not_an_input():
    """The COCO converter is no code of a synthetic job; a method's module only of its own."""
    for command in ("prepare-data", "train", "cams", "evaluate", "pseudo-labels", "segment"):
        files = code_inputs(command, "synthetic", ["mctformer_v2"], ["none"])
        assert "wsss/data/coco.py" not in files, command
        assert "wsss/methods/aream.py" not in files, command
    assert "wsss/data/coco.py" in code_inputs("train", "coco", ["mctformer_v2"])
    assert "wsss/methods/aream.py" in code_inputs("train", "synthetic", ["aream"])
    assert "wsss/ops/par.py" in code_inputs("train", "synthetic", ["aream"])
    assert "wsss/ops/par.py" not in code_inputs("train", "synthetic", ["mctformer_v2"])
    assert "wsss/resources/paper_numbers.yaml" in code_inputs("table")
    assert "wsss.stages.table" not in command_modules("train", "synthetic", ["mctformer_v2"])


def _plan(project: Path, args: tuple[str, ...]) -> dict[str, list[dict]]:
    out = _snakemake(project, "-n", *args).stdout
    return {rule: _jobs(out, rule) for rule in _job_counts(out)}


def _run_name(job: dict) -> str:
    """The run (training key or grid method) of a planned job, from its first output."""
    parts = job["output"].split(", ")[0].split("/")
    return parts[4] if parts[3] == "train" else parts[3]


def _edit(path: Path, text: str = "\n# edited\n") -> str:
    old = path.read_text()
    path.write_text(old + text)
    return old


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # PAR is on AReAM's and ClusterCAM's training path (online pseudo-labels)
        ("wsss/ops/par.py", {"train": {"aream", "aream_entropy", "clustercam"}}),
        # the decoder's multi-scale inference: the decoder's evaluation reruns
        ("wsss/ops/multiscale.py", {"evaluate_decoder": {"clustercam"}}),
        # the segmenter's inference: stage 2 reruns, the decoder's evaluation does not run it
        ("wsss/segmentation/infer.py", {"segment": None, "evaluate_decoder": set()}),
        ("wsss/data/coco.py", {}),
    ],
)
def test_a_code_edit_reruns_exactly_the_jobs_that_run_it(ran, case, expected):
    project, args, _ = ran
    old = _edit(project / case)
    try:
        plan = _plan(project, args)
    finally:
        (project / case).write_text(old)
    if not expected:
        assert plan == {}, f"{case}: {sorted(plan)} would rerun"
    for rule, runs in expected.items():
        planned = {_run_name(job) for job in plan.get(rule, [])}
        if runs is None:
            assert planned, f"{case}: no {rule} job reruns"
        else:
            assert planned == runs, f"{case}: {rule} reruns {sorted(planned)}"
    if case == "wsss/ops/par.py":
        assert "mctformer_v2" not in {_run_name(j) for j in plan["train"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "override", "expected"),
    [
        # a display label reaches only the report jobs
        (
            "label",
            {"methods": {"aream": {"label": "AReAM renamed"}}},
            {"table", "plots", "gallery", "table_html"},
        ),
        # seg_split is read by stage 2 and by prepare-data, which refuses a train split that
        # overlaps it (wsss/data/checks.py): the data job and so everything after it reruns
        (
            "seg_split",
            {"datasets": {"synthetic": {"seg_split": "train"}}},
            {"prepare_data", "segment"},
        ),
        # a default spelled out changes no job's params
        (
            "default",
            {"datasets": {"synthetic": {"label_source": "auto", "mask_dir": "auto"}}},
            set(),
        ),
        # execution knobs are not params
        ("num_workers", {"train": {"num_workers": 1, "cache_images": False}}, set()),
    ],
)
def test_a_params_edit_reruns_exactly_the_jobs_that_read_it(ran, case, override, expected):
    project, args, _ = ran
    extra = project / f"{case}.yaml"
    extra.write_text(yaml.safe_dump(override))
    plan = _plan(project, (*args, extra.name))
    planned = set(plan) - {"all", "total"}  # "total": the job-stats sum row
    if case == "seg_split":  # the data job's manifest is upstream of every job
        assert expected <= planned, case
    else:
        assert planned == expected, case
