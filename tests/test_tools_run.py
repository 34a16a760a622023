"""`wsss run`: the project lock, live-run detection, leftovers of a killed run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wsss.io import atomic_directory, atomic_path
from wsss.tools.run import (
    RunRefused,
    acquire_project_lock,
    is_run_command,
    live_run_processes,
    snakemake_locked,
    stale_temporaries,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/v/bin/python", "-m", "snakemake", "--cores", "2"], True),
        (["/v/bin/python", "/v/bin/snakemake", "--cores", "2"], True),
        (["snakemake", "-n"], True),
        (["/v/bin/python", "/v/bin/wsss", "train", "--config", "{}"], True),
        (["/v/bin/python", "/v/bin/wsss", "run", "--cores", "2"], False),  # ordered by the lock
        (["/bin/bash"], False),
        (["make", "run"], False),
        (["vim", "snakemake.txt"], False),
    ],
)
def test_is_run_command(argv, expected):
    assert is_run_command(argv) is expected


def test_targets_after_the_overrides_stay_targets():
    # `wsss run --configfile o.yaml -- a.json -n`: Snakemake must see a.json as a target,
    # not as a second config file (its --configfile takes every value that follows).
    from snakemake.cli import get_argument_parser

    from wsss.tools.run import run_command

    command = run_command(2, ["--configfile", "o.yaml"], ["a.json", "-n"])
    parsed = get_argument_parser().parse_args(command[3:])
    assert parsed.targets == ["a.json"] and parsed.dryrun
    assert [str(f) for f in parsed.configfile] == ["o.yaml"]


def test_temporaries_of_wsss_io_are_found_and_nothing_else(tmp_path):
    """Names made by the real atomic writers (caught while they exist) match; final files,
    .gitignore and Snakemake's .snakemake_timestamp do not."""
    run_dir = tmp_path / "results" / "runs" / "d" / "m" / "seed0"
    made = []
    with atomic_path(run_dir / "model.pt") as tmp:
        tmp.write_bytes(b"x")
        made.append(tmp)
        with atomic_directory(tmp_path / "results" / "pseudo_labels" / "d" / "m" / "seed0") as d:
            (d / "a.png").write_bytes(b"x")
            made.append(d)
            assert stale_temporaries(tmp_path, []) == sorted(made)
    keep = [
        tmp_path / "results" / ".gitignore",
        run_dir / "model.pt",
        tmp_path / "results" / "pseudo_labels" / "d" / "m" / "seed0" / ".snakemake_timestamp",
        tmp_path / "data" / ".other.tmp-12-0a1b2c3d",  # not beside a dataset root of this grid
        tmp_path / "data" / "synthetic" / "dataset.json",
    ]
    leftovers = [
        run_dir / ".segmenter_checkpoint.ab_d3f9k.pt",
        tmp_path / "results" / "pseudo_labels" / "d" / "m" / ".seed1.old.zz99yy88",
        tmp_path / "data" / ".synthetic.tmp-4242-0a1b2c3d",
    ]
    for path in keep + leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    found = stale_temporaries(tmp_path, [Path("data/synthetic")])
    assert found == sorted(leftovers)


def _python(code: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, text=True, **kwargs
    )


def test_project_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path):
    holder = _python(
        """
        import sys, time
        from pathlib import Path
        from wsss.tools.run import acquire_project_lock
        lock = acquire_project_lock(Path.cwd())
        print("held", flush=True)
        time.sleep(60)
        """,
        tmp_path,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunRefused, match=rf'another run holds the project lock .*"pid": {holder.pid}'
        ):
            acquire_project_lock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash would: no cleanup runs
        holder.wait()
    lock = acquire_project_lock(tmp_path)  # the kernel released it with its holder
    owner = json.loads((tmp_path / ".snakemake" / "wsss-run.lock").read_text())
    assert owner["pid"] == os.getpid()
    lock.close()


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc (Linux)")
def test_live_snakemake_process_in_the_project_is_seen(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    # `exec -a` names the process like Snakemake's entry point.
    inside = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 60"], cwd=tmp_path)
    outside = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 60"], cwd=other)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = live_run_processes(tmp_path)
            if found:
                break
            time.sleep(0.05)
        assert [pid for pid, _ in found] == [inside.pid]
    finally:
        for process in (inside, outside):
            process.kill()
            process.wait()
    assert live_run_processes(tmp_path) == []


def _copy_project(dest: Path) -> Path:
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for part in ("workflow", "wsss", "configs"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    shutil.copy(REPO / "params.yaml", dest / "params.yaml")
    return dest


def _wsss_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        XDG_CACHE_HOME=str(project / ".cache"),
    )
    smoke = ["--configfile", "configs/smoke.yaml"]
    return subprocess.run(
        [sys.executable, "-m", "wsss.cli", "run", "--cores", "1", *smoke, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_stale_lock_and_temporaries_are_cleared_but_a_live_run_is_never_unlocked(tmp_path):
    project = _copy_project(tmp_path / "project")
    locks = project / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    # What a kill -9 leaves: Snakemake's lock files and a half-written model.
    (locks / "0.input.lock").write_text("results/data/synthetic.json\n")
    (locks / "0.output.lock").write_text("results/table.md\n")
    half = (
        # under the smoke config's results_dir
        project
        / "results-smoke"
        / "runs"
        / "synthetic"
        / "train"
        / "m"
        / "seed0"
        / ".model.k2j3h4g5.pt"
    )
    half.parent.mkdir(parents=True)
    half.write_bytes(b"PK")

    # 1. A Snakemake process alive in the project: refused, nothing touched.
    live = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 60"], cwd=project)
    try:
        refused = _wsss_run(project, "--", "-n")
    finally:
        live.kill()
        live.wait()
    assert refused.returncode == 1, refused.stderr
    assert f"pid {live.pid}: snakemake" in refused.stderr
    assert snakemake_locked(project) and half.exists()

    # 2. Another `wsss run` holds the project lock: refused, nothing touched.
    with acquire_project_lock(project):
        refused = _wsss_run(project, "--", "-n")
    assert refused.returncode == 1
    assert "another run holds the project lock" in refused.stderr
    assert snakemake_locked(project) and half.exists()

    # 3. Nobody alive: the lock is cleared, the temporary removed, the DAG runs (dry).
    done = _wsss_run(project, "--", "-n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "clearing the Snakemake lock of an interrupted run" in done.stderr
    assert str(half.relative_to(project)) in done.stderr
    assert not snakemake_locked(project) and not half.exists()
    assert "prepare_data" in done.stdout


def test_bad_params_fail_before_the_lock_with_file_and_line(tmp_path):
    project = _copy_project(tmp_path / "project")
    (project / "bad.yaml").write_text("train:\n  epochs: 2\n   lr: 3\n")
    result = _wsss_run(project, "--configfile", "bad.yaml")
    assert result.returncode == 1
    assert "bad.yaml:3:" in result.stderr and "not valid YAML" in result.stderr
    assert not (project / ".snakemake").exists()


@pytest.mark.parametrize(
    "configfiles, dry, expected",
    [
        ([], False, "results/table.md"),
        (["configs/smoke.yaml"], False, "results-smoke/table.md"),
        (["configs/smoke.yaml"], True, None),
    ],
)
def test_a_finished_run_names_its_own_table(
    tmp_path, monkeypatch, capsys, configfiles, dry, expected
):
    """`make run ARGS="--configfile configs/smoke.yaml"` ended with "table: results/table.md"
    (a fixed echo in the Makefile) while the table was in results-smoke/. `wsss run` now
    names the table of the params it ran, after Snakemake succeeds, and not for a dry run."""
    import argparse

    from wsss.tools import run as run_module

    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "Snakefile").write_text("")
    (tmp_path / "configs").mkdir()
    for name in ("params.yaml", "configs/smoke.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_module, "recover", lambda *a: None)

    class Done:
        def __init__(self, *args, **kwargs):
            pass

        def wait(self):
            return 0

    monkeypatch.setattr(run_module.subprocess, "Popen", Done)
    args = argparse.Namespace(cores=1, configfile=configfiles, snakemake_args=["-n"] if dry else [])
    assert run_module.run(args) == 0
    err = capsys.readouterr().err
    if expected is None:
        assert "table:" not in err
    else:
        assert err.splitlines()[-1] == f"wsss run: table: {expected}"
