"""DVC wraps the Snakemake grid: `dvc repro` regenerates the table, `dvc metrics diff` compares commits."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss.config import deep_merge

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        XDG_CACHE_HOME=str(cwd / ".cache"),
        DVC_SITE_CACHE_DIR=str(cwd / ".dvc-site"),
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def dvc_project(tmp_path):
    dest = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for part in ("workflow", "wsss", "configs", ".dvc"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    (dest / "results").mkdir()
    shutil.copy(REPO / "results" / ".gitignore", dest / "results" / ".gitignore")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, dest / name)
    (dest / "data").mkdir()
    shutil.copy(REPO / "data" / ".gitignore", dest / "data" / ".gitignore")
    # The smoke settings merged into params.yaml: dvc.yaml reads params.yaml only.
    params = deep_merge(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text()),
    )
    params["datasets"]["synthetic"]["root"] = "data/synthetic"  # the path dvc.yaml declares
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "init"], dest)
    return dest


def test_dvc_repro_equals_snakemake_and_metrics_diff(dvc_project):
    dvc = [sys.executable, "-m", "dvc"]
    stages = _run([*dvc, "stage", "list"], dvc_project).stdout
    assert "grid" in stages and "pretrain" in stages
    # the grid only: the pretrained backbone (its own stage) is no input of it
    _run([*dvc, "repro", "grid"], dvc_project)
    table_from_dvc = (dvc_project / "results" / "table.md").read_text()
    metrics_from_dvc = json.loads((dvc_project / "results" / "metrics.json").read_text())

    # The same params through Snakemake directly, from scratch: the same numbers.
    shutil.rmtree(dvc_project / "results" / "runs")
    shutil.rmtree(dvc_project / "results" / "cams")
    (dvc_project / "results" / "table.md").unlink()
    _run([sys.executable, "-m", "snakemake", "--cores", "2"], dvc_project)
    assert (dvc_project / "results" / "table.md").read_text() == table_from_dvc

    _run([*dvc, "commit", "-f", "grid"], dvc_project)
    _run(["git", "add", "-A"], dvc_project)
    _run(["git", "commit", "-qm", "results"], dvc_project)

    # Change the CAM scales: CAMs, evaluation and the table rerun, training does
    # not, and `dvc metrics diff` shows what moved.
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["cam"]["scales"] = [1.0, 0.5]
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([*dvc, "repro", "grid"], dvc_project)
    log = out.stdout + out.stderr
    assert "rule cams:" in log and "rule train:" not in log
    diff = json.loads(_run([*dvc, "metrics", "diff", "HEAD", "--json"], dvc_project).stdout)
    changed = diff["results/metrics.json"]
    assert any(key.endswith(".cam_miou") for key in changed), changed
    assert metrics_from_dvc["synthetic"]["mctformer_v2"]["seeds"] == 1
