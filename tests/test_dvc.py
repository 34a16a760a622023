"""DVC wraps the Snakemake grid: `dvc repro` regenerates the table, `dvc metrics diff` compares
commits, a fresh clone pulls instead of retraining, `dvc plots diff` draws every method."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss.config import rule_family
from wsss.report.table import threshold_curves

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    scratch = cwd.parent  # caches outside the project: they must not show up in git or DVC
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        XDG_CACHE_HOME=str(scratch / ".cache"),
        DVC_SITE_CACHE_DIR=str(scratch / ".dvc-site"),
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


DVC = [sys.executable, "-m", "dvc"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WSSS = [sys.executable, "-m", "wsss.cli"]


def _make_project(dest: Path, params: dict | None = None) -> Path:
    """The project's code and DVC files in a fresh git repo (one commit), with the smoke
    preset merged into params.yaml by the documented route (README, "Presets and -S":
    `wsss merge-params configs/smoke.yaml`; dvc.yaml reads params.yaml only)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake", "cache", "tmp")
    # pretrained/ and dvc.lock as a clone has them: the pretrain stage is current, so a
    # `dvc exp run` reruns the grid stage only (without them DVC rebuilt the backbone, ~50 s)
    for part in ("workflow", "wsss", "configs", ".dvc", "pretrained"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    for name in (
        "dvc.yaml",
        "dvc.lock",
        "params.yaml",
        ".dvcignore",
        ".gitignore",
        "results/.gitignore",
        "data/.gitignore",
    ):
        (dest / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, dest / name)
    if params is None:
        out = _run([*WSSS, "merge-params", "configs/smoke.yaml"], dest).stdout
        # the stage's output paths stay dvc.yaml's (the preset's results-smoke is for runs
        # outside DVC), and params.yaml keeps its comments
        assert "kept results_dir from params.yaml" in out, out
        assert "# The single source of truth" in (dest / "params.yaml").read_text()
    else:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """The smoke grid run once by `dvc repro` and committed; tests work on copies."""
    project = _make_project(tmp_path_factory.mktemp("reproduced") / "project")
    stages = _run([*DVC, "stage", "list"], project).stdout
    assert "grid" in stages and "pretrain" in stages
    # the grid only: the pretrained backbone (its own stage) is no input of it
    _run([*DVC, "repro", "grid"], project)
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "results"], project)
    return project


def _copy(project: Path, dest: Path) -> Path:
    # copy2 keeps file times, so Snakemake sees the same state as in the original
    shutil.copytree(project, dest, symlinks=True)
    return dest


def _set_params(project: Path, block: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[block][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _planned_rules(project: Path) -> set[str]:
    """Rules a Snakemake dry run would run ({} when there is nothing to do)."""
    out = _run([*SNAKEMAKE, "-n", "--cores", "1", "--quiet", "rules"], project)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:")[-1].split("Reasons:")[0]
    rules = {
        rule_family(line.split()[0]) for line in table.splitlines()[3:] if len(line.split()) == 2
    }
    return rules - {"total", "all"}


def _walk(node):
    """Every dict inside a JSON value (depth first)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dvc_repro_equals_snakemake_and_metrics_diff(reproduced, tmp_path):
    project = _copy(reproduced, tmp_path / "project")
    # DVC's default link type leaves the outputs' times as Snakemake wrote them: nothing to
    # do. (With cache.type symlink or hardlink, 6 jobs were planned here: docs/real-data.md.)
    assert _planned_rules(project) == set()
    table_from_dvc = (project / "results" / "table.md").read_text()
    metrics_from_dvc = json.loads((project / "results" / "metrics.json").read_text())

    # The same params through Snakemake directly, from scratch: the same numbers.
    shutil.rmtree(project / "results" / "runs")
    shutil.rmtree(project / "results" / "cams")
    (project / "results" / "table.md").unlink()
    _run([*SNAKEMAKE, "--cores", "2"], project)
    assert (project / "results" / "table.md").read_text() == table_from_dvc

    # Every tracked output is byte-identical (no timings in them): recording this run
    # leaves dvc.lock and the git-tracked report files exactly as `dvc repro` left them.
    _run([*DVC, "commit", "-f", "grid"], project)
    assert _run(["git", "status", "--porcelain"], project).stdout == ""

    # A DVC experiment on a non-default key (the documented route): CAMs, evaluation and
    # the table rerun, training does not, and `dvc metrics diff` shows what moved.
    out = _run([*DVC, "exp", "run", "-S", "cam.scales=[1.0,0.5]"], project)
    log = out.stdout + out.stderr
    assert re.search(r"rule cams_\w+:", log) and "rule train:" not in log
    assert "rule pretrain:" not in log  # its stage is current: what `snakemake -n` would run
    assert yaml.safe_load((project / "params.yaml").read_text())["cam"]["scales"] == [1.0, 0.5]
    diff = json.loads(_run([*DVC, "metrics", "diff", "HEAD", "--json"], project).stdout)
    changed = diff["results/metrics.json"]
    assert any(key.endswith(".cam_miou") for key in changed), changed
    # `dvc exp show` lists it: its params and its metrics (the intervals as scalar leaves)
    shown = json.loads(_run([*DVC, "exp", "show", "--json"], project).stdout)
    experiments = [
        node
        for node in _walk(shown)
        if node.get("scales") == [1.0, 0.5] or node.get("cam", {}).get("scales") == [1.0, 0.5]
    ]
    assert experiments, json.dumps(shown)[:3000]
    # (no cam_miou_ci_low here: with the smoke grid's one seed the interval is null and DVC
    # drops null leaves)
    assert metrics_from_dvc["synthetic"]["mctformer_v2"]["seeds"] == 1


def test_tracked_outputs_hold_no_timings(reproduced):
    """Run-to-run wall-clock times stay in the untracked logs, so rerunning the same params
    does not change what DVC caches or git tracks."""
    runs = reproduced / "results" / "runs" / "synthetic"
    for path in [*runs.glob("train/*/seed0/train_metrics.json"), *runs.glob("*/seed0/seg_*")]:
        if path.suffix == ".json":
            text = path.read_text()
            assert "seconds" not in text and "images_per_second" not in text, path
    for path in runs.glob("train/*/seed0/train_log.tsv"):
        assert "seconds" not in path.read_text().splitlines()[0], path
    cams = reproduced / "results" / "cams"
    assert {p.suffix for p in cams.rglob("*") if p.is_file()} == {".npz"}
    timings = list((reproduced / "results" / "logs" / "cams").rglob("*_timing.json"))
    assert timings and all("seconds" in json.loads(p.read_text()) for p in timings)


def test_fresh_clone_pulls_instead_of_retraining(reproduced, tmp_path):
    project = _copy(reproduced, tmp_path / "project")
    _run([*DVC, "remote", "add", "-d", "store", str(tmp_path / "remote")], project)
    _run(["git", "commit", "-qam", "remote"], project)
    _run([*DVC, "push"], project)

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    _run([*DVC, "pull"], clone)
    models = sorted((clone / "results" / "runs").glob("*/train/*/seed*/model.pt"))
    assert models and (clone / "data" / "synthetic" / "dataset.json").is_file()
    before = {p: _sha(p) for p in models}

    # DVC: the pulled outputs match dvc.lock, nothing to reproduce.
    assert "up to date" in _run([*DVC, "status", "grid"], clone).stdout
    dry = _run([*DVC, "repro", "--dry", "grid"], clone).stdout
    assert "didn't change" in dry and "Running stage" not in dry

    # Snakemake: pulled files carry checkout times and the clone has no .snakemake/
    # metadata; `--touch --forceall` records both for every job, so nothing is planned ...
    _run([*SNAKEMAKE, "--touch", "--forceall", "--cores", "1"], clone)
    assert _planned_rules(clone) == set()
    assert "up to date" in _run([*DVC, "status", "grid"], clone).stdout
    # ... and a training setting still reruns training (without metadata it would not).
    _set_params(clone, "train", "lr", 0.0023)
    assert "train" in _planned_rules(clone)
    _run(["git", "checkout", "-q", "params.yaml"], clone)

    # A CAM setting reruns CAMs onward; no data preparation, no training.
    _set_params(clone, "cam", "scales", [1.0, 0.5])
    planned = _planned_rules(clone)
    assert "cams" in planned and not {"prepare_data", "train"} & planned, planned
    out = _run([*DVC, "repro", "grid"], clone)
    log = out.stdout + out.stderr
    assert re.search(r"rule cams_\w+:", log) and "rule evaluate_cams:" in log
    assert "rule train:" not in log and "rule prepare_data:" not in log
    assert {p: _sha(p) for p in models} == before


def _cam_metrics(path: Path, dataset: str, method: str, seed: int, curve: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    points = [{"threshold": t, "miou": m} for t, m in curve]
    run = {"meta": {"dataset": dataset, "method": method, "seed": seed}}
    run["cam"] = {"sweep": {"curve": points}}
    path.write_text(json.dumps(run))
    return path


def test_plots_diff_draws_every_method_and_seed(tmp_path):
    """threshold_curves.csv in long format and dvc.yaml's template: the Vega-Lite spec of
    `dvc plots diff` has one line per (revision, method, seed)."""
    project = _make_project(tmp_path / "project", params={})
    csv = project / "results" / "plots" / "threshold_curves.csv"
    csv.parent.mkdir(parents=True)

    def write(offset: float) -> None:
        files = [
            _cam_metrics(tmp_path / f"m/{method}{seed}.json", "synthetic", method, seed, curve)
            for method, seed, curve in [
                ("mctformer_v2", 0, [(0.0, 0.1), (0.5, 0.4), (0.7, 0.3)]),
                ("mctformer_v2", 1, [(0.0, 0.2), (0.5, 0.5), (0.7, 0.2)]),
                ("mctformer_v2_adcam", 0, [(0.0, 0.1 + offset), (0.5, 0.6), (0.7, 0.5)]),
            ]
        ]
        threshold_curves(files).to_csv(csv, index=False, float_format="%.6f")

    write(0.0)
    lines = csv.read_text().splitlines()
    assert lines[0] == "dataset,method,seed,threshold,miou"
    assert lines[1] == "synthetic,mctformer_v2,0,0.000000,0.100000"
    assert lines[8] == "synthetic,mctformer_v2_adcam,0,0.500000,0.600000" and len(lines) == 10
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "curves 1"], project)
    write(0.25)
    _run(["git", "commit", "-qam", "curves 2"], project)

    out = _run(
        [*DVC, "plots", "diff", "HEAD~1", "HEAD", "--show-vega", "--targets", str(csv)], project
    )
    spec = json.loads(out.stdout)
    layer = spec["spec"]
    assert spec["facet"]["column"]["field"] == "dataset"
    assert layer["mark"]["type"] == "line"
    encoding = layer["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("threshold", "miou")
    assert encoding["color"]["field"] == "method"
    assert encoding["detail"]["field"] == "seed" and encoding["strokeDash"]["field"] == "rev"
    lines: dict[tuple, dict[float, float]] = {}
    for row in spec["data"]["values"]:
        key = (row["rev"], row["method"], int(row["seed"]))
        lines.setdefault(key, {})[float(row["threshold"])] = float(row["miou"])
    runs = [("mctformer_v2", 0), ("mctformer_v2", 1), ("mctformer_v2_adcam", 0)]
    assert sorted(lines) == sorted((rev, *run) for rev in ("HEAD", "HEAD~1") for run in runs)
    assert all(sorted(curve) == [0.0, 0.5, 0.7] for curve in lines.values())
    assert lines["HEAD~1", "mctformer_v2_adcam", 0][0.0] == pytest.approx(0.1)
    assert lines["HEAD", "mctformer_v2_adcam", 0][0.0] == pytest.approx(0.35)
