"""`wsss compare <rev>`: another commit's per-run metrics through DVC, paired differences.

Tested on a temporary git repository with two commits and a local DVC remote; the
first commit's data is read back from the remote after the cache is emptied.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.cli import main
from wsss.report.compare import compare_runs, local_runs

pytestmark = pytest.mark.slow

DVC_YAML = """stages:
  grid:
    cmd: "true"
    outs:
      - results/runs:
          persist: true
"""


def _git_env(scratch: Path) -> dict[str, str]:
    return dict(
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


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=_git_env(cwd.parent), capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout}\n{result.stderr}"


def _cam(miou_per_image: list[float], method: str, seed: int, split: str = "val") -> dict:
    """A run whose 6 images (one label, union 1000) have the given IoUs."""
    images = {
        f"img{i}": {"labels": [0], "intersection": [round(v * 1000)], "union": [1000]}
        for i, v in enumerate(miou_per_image)
    }
    return {
        "meta": {"dataset": "synthetic", "method": method, "seed": seed},
        "cam": {
            "split": split,
            "per_image": {"threshold": 0.2, "num_labels": 1, "images": images},
        },
    }


def _write_runs(root: Path, gain: float, split: str = "val") -> None:
    base = [0.2, 0.3, 0.4, 0.5, 0.35, 0.25]
    for seed, shift in enumerate((0.0, 0.01, -0.01)):
        for method, extra in (("a", gain), ("b", 0.0)):
            path = root / "results/runs/synthetic" / method / f"seed{seed}" / "cam_metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            values = [v + shift + extra for v in base]
            path.write_text(json.dumps(_cam(values, method, seed, split)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Commit 1: the runs; commit 2: method a gains 5 points on every image and seed.
    Commit 1's data lives only in the local remote (the cache is emptied)."""
    scratch = tmp_path_factory.mktemp("compare")
    root, remote = scratch / "repo", scratch / "remote"
    root.mkdir()
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], root)
    (root / "dvc.yaml").write_text(DVC_YAML)
    # The project's params with fewer resamples: compare must use them (the table's intervals).
    params = (Path(__file__).parents[1] / "params.yaml").read_text()
    assert "n_resamples: 4000" in params
    (root / "params.yaml").write_text(params.replace("n_resamples: 4000", "n_resamples: 300"))
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qam", "empty"], root)  # a commit with no DVC data
    _write_runs(root, gain=0.0)
    for cmd in (
        [sys.executable, "-m", "dvc", "commit", "-q", "-f"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "one"],
        [sys.executable, "-m", "dvc", "push", "-q"],
    ):
        _run(cmd, root)
    _write_runs(root, gain=0.05)
    for cmd in (
        [sys.executable, "-m", "dvc", "commit", "-q", "-f"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "two"],
    ):
        _run(cmd, root)
    shutil.rmtree(root / ".dvc" / "cache")  # HEAD~1's data now comes from the remote
    return root


def test_compare_reads_the_other_commit_through_dvc(repo, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(repo.parent / ".cache"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(repo.parent / ".dvc-site"))
    out = repo.parent / "compare.md"
    assert main(["compare", "HEAD~1", "--repo", str(repo), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "300 image resamples, seed 0" in text.splitlines()[0]  # params.yaml intervals
    rows = {line.split("|")[2].strip(): line for line in text.splitlines()[4:]}
    # a: +5 points on every image of every seed: a zero-width interval at +5, better.
    assert "| +5.0 [+5.0, +5.0] | better |" in rows["a"]
    assert "| 0,1,2 |" in rows["a"]
    # b unchanged: exactly 0, no difference.
    assert "| +0.0 [+0.0, +0.0] | no difference |" in rows["b"]


def test_a_rev_without_dvc_data_or_unknown_is_named(repo, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(repo.parent / ".cache"))
    assert main(["compare", "HEAD~2", "--repo", str(repo)]) == 1
    assert "revision 'HEAD~2': no DVC data" in capsys.readouterr().err
    assert main(["compare", "no-such-rev", "--repo", str(repo)]) == 1
    assert "revision 'no-such-rev'" in capsys.readouterr().err


def test_data_missing_from_cache_and_remote_says_what_to_do(repo, tmp_path, capsys, monkeypatch):
    """A clone with no DVC remote and an empty cache (what a fresh clone of this project
    is): DVC only says "failed to load directory"; the error names the revision, that the
    data is in neither the cache nor a remote, and how to get it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(repo.parent / ".cache"))
    clone = tmp_path / "clone"
    shutil.copytree(repo, clone)
    _run([sys.executable, "-m", "dvc", "remote", "remove", "local"], clone)
    assert main(["compare", "HEAD~1", "--repo", str(clone)]) == 1
    err = capsys.readouterr().err
    assert "revision 'HEAD~1': DVC cannot read its results/runs" in err
    assert "none is configured (`dvc remote list` is empty)" in err


def test_different_splits_are_refused(tmp_path):
    _write_runs(tmp_path / "x", gain=0.0, split="val")
    _write_runs(tmp_path / "y", gain=0.0, split="train")
    ours, theirs = local_runs(tmp_path / "x/results"), local_runs(tmp_path / "y/results")
    with pytest.raises(ValueError, match="synthetic/a seed 0: scored on split 'val' here and"):
        compare_runs(ours, theirs, n_resamples=100)


def test_seed_noise_widens_the_comparison(tmp_path):
    # Seeds that disagree about the change (this checkout +4, -2, +1 points above the other
    # commit's run of the same seed): no verdict, a wide interval.
    _write_runs(tmp_path / "x", gain=0.0)
    ours = local_runs(tmp_path / "x/results")
    theirs = {}
    for (dataset, method, seed), (split, counts) in ours.items():
        shift = round((0.04, -0.02, 0.01)[seed] * 1000)
        theirs[(dataset, method, seed)] = (
            split,
            type(counts)(counts.ids, counts.intersection - shift, counts.union, 0.2),
        )
    row = next(r for r in compare_runs(ours, theirs, n_resamples=200) if r["method"] == "a")
    assert row["diff"] == pytest.approx(0.01)
    assert row["verdict"] == "no difference" and row["diff_ci_high"] - row["diff_ci_low"] > 0.05
    assert not math.isnan(row["diff_ci_low"])
