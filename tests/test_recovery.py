"""Recovery of the smoke DAG through the README's run command (`make run` = `wsss run`):
kills at seeded points, deleted artifacts, `make clean`, a concurrent `dvc repro`. Each
ends with the same bytes as a clean run (timings aside)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMOKE = ("--configfile", "configs/smoke.yaml")
DATA = "data/synthetic-smoke"  # the smoke preset's dataset root
RESULTS = "results-smoke"  # its results_dir
RUN = f"{RESULTS}/runs/synthetic/mctformer_v2/seed0"
TRAIN = f"{RESULTS}/runs/synthetic/train/mctformer_v2/seed0"
CAMS = f"{RESULTS}/cams/synthetic/mctformer_v2/seed0"


def _env(project: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        XDG_CACHE_HOME=str(project / ".cache"),
        DVC_NO_ANALYTICS="1",
    )


def _command() -> list[str]:
    """What `make run ARGS="--configfile configs/smoke.yaml"` runs (Makefile, CORES=2)."""
    return [sys.executable, "-m", "wsss.cli", "run", "--cores", "2", *SMOKE]


def _copy_project(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for part in ("workflow", "wsss", "configs"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    for name in ("params.yaml", "Makefile"):
        shutil.copy(REPO / name, dest / name)
    return dest


def _run(project: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _command(), cwd=project, env=_env(project), capture_output=True, text=True
    )
    assert result.returncode == 0, f"wsss run failed:\n{result.stdout}\n{result.stderr}"
    return result


def _timeless(obj):
    """A JSON document without its wall-clock timings (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {
            k: _timeless(v)
            for k, v in obj.items()
            if "seconds" not in k and not k.endswith("per_second")
        }
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def _snapshot(project: Path) -> dict[str, object]:
    """Every result a run leaves: the table files, every .pt/.npz/.json under results/runs,
    results/cams and results/data, the pseudo-labels and the dataset root, as bytes (JSON
    without timings)."""
    files = [project / RESULTS / n for n in ("table.md", "table.csv", "runs.csv", "metrics.json")]
    for folder, patterns in (
        (f"{RESULTS}/runs", ("*.pt", "*.npz", "*.json")),
        (f"{RESULTS}/cams", ("*.pt", "*.npz", "*.json")),
        (f"{RESULTS}/data", ("*.json",)),
        (f"{RESULTS}/pseudo_labels", ("*.png",)),
        (DATA, ("*",)),
    ):
        for pattern in patterns:
            files.extend(p for p in (project / folder).rglob(pattern) if p.is_file())
    snapshot = {}
    for path in sorted(files):
        name = path.relative_to(project).as_posix()
        if path.suffix == ".json":
            snapshot[name] = _timeless(json.loads(path.read_text()))
        else:
            snapshot[name] = path.read_bytes()
    return snapshot


def _leftovers(project: Path) -> list[str]:
    """Hidden temporaries and Snakemake locks a run should not leave behind."""
    found = [
        p.relative_to(project).as_posix()
        for folder in (RESULTS, "data")
        for p in (project / folder).rglob(".*")
        if p.name not in (".gitignore", ".snakemake_timestamp")
    ]
    locks = project / ".snakemake" / "locks"
    found += [p.name for p in locks.iterdir()] if locks.is_dir() else []
    return found


def _assert_same(snapshot: dict, clean: dict) -> None:
    assert sorted(snapshot) == sorted(clean), set(snapshot) ^ set(clean)
    differ = [name for name in clean if snapshot[name] != clean[name]]
    assert not differ, f"differ from the clean run: {differ}"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    project = _copy_project(tmp_path_factory.mktemp("clean") / "project")
    _run(project)
    return project, _snapshot(project)


def _clone(project: Path, dest: Path) -> Path:
    """A copy of a finished project with its file times and Snakemake records."""
    shutil.copytree(project, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------- deleted artifacts


@pytest.mark.parametrize(
    "artifact",
    [
        # one per kind of job output, then the dataset root's kinds of files
        f"{TRAIN}/model.pt",
        f"{CAMS}/train.npz",
        f"{RUN}/cam_metrics.json",
        f"{RUN}/pseudo_label_metrics.json",
        f"{RUN}/segmenter.pt",
        f"{RESULTS}/data/synthetic.json",
        f"{DATA}/JPEGImages/train_00007.png",
        f"{DATA}/SegmentationClass/val_00003.png",
        f"{DATA}/ImageSets/Segmentation/train.txt",
        f"{DATA}/dataset.json",
    ],
)
def test_a_deleted_artifact_is_rebuilt_by_the_run_command(clean_run, tmp_path, artifact):
    clean, expected = clean_run
    project = _clone(clean, tmp_path / "project")
    (project / artifact).unlink()
    result = _run(project)
    assert (project / artifact).is_file()
    _assert_same(_snapshot(project), expected)
    assert _leftovers(project) == []
    if artifact.startswith(DATA):
        # regenerated in place, byte for byte: nothing downstream reruns
        assert "regenerated 1 lost file(s)" in result.stderr
        assert "Nothing to be done" in result.stdout + result.stderr


def test_make_clean_then_the_run_command_rebuilds_everything(clean_run, tmp_path):
    clean, expected = clean_run
    project = _clone(clean, tmp_path / "project")
    subprocess.run(["make", "clean"], cwd=project, check=True, capture_output=True)
    for gone in ("runs", "cams", "pseudo_labels", "data"):
        gone = f"{RESULTS}/{gone}"
        assert not (project / gone).exists()
    _run(project)
    _assert_same(_snapshot(project), expected)


# ---------------------------------------------------------------- kill battery


def _processes() -> dict[int, tuple[int, list[str]]]:
    """{pid: (parent pid, command line)} of every readable process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), argv)
    return table


def _tree(root: int, table: dict | None = None) -> list[int]:
    table = _processes() if table is None else table
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += [p for p, (parent, _) in table.items() if parent == pid]
    return tree


def _kill_tree(root: int) -> None:
    """SIGKILL the whole process tree (stopped first, so that nothing reacts in between)."""
    tree = _tree(root)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _stage_running(root: int, stage: str) -> bool:
    """Whether a `wsss <stage>` job runs in the process tree of ``root``."""
    table = _processes()
    return any(
        len(argv) > 2 and Path(argv[1]).name == "wsss" and argv[2] == stage
        for argv in (table[pid][1] for pid in _tree(root, table) if pid in table)
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_battery_then_the_run_command_gives_a_clean_runs_bytes(clean_run, tmp_path):
    """kill -9 of the whole process tree during train, then (in the recovering run) during
    cams, then during the table, each a seeded delay after the job's process appeared; the
    last run finishes, and every result equals the clean run's."""
    _, expected = clean_run
    project = _copy_project(tmp_path / "project")
    rng = random.Random(20)
    killed = []
    # `wsss table` needs no torch and lives well under a second: a shorter delay.
    for stage, longest in (("train", 1.0), ("cams", 1.0), ("table", 0.15)):
        delay = rng.uniform(0.0, longest)
        run = subprocess.Popen(
            _command(),
            cwd=project,
            env=_env(project),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while not _stage_running(run.pid, stage):
            assert run.poll() is None, f"the run ended before `wsss {stage}` started"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(delay)
        assert _stage_running(run.pid, stage), f"`wsss {stage}` ended within {delay:.2f} s"
        _kill_tree(run.pid)
        run.wait()
        if killed:  # a run after a kill cleared the lock the killed one held
            assert "clearing the Snakemake lock of an interrupted run" in run.stderr.read()
        killed.append((stage, round(delay, 2)))
    _run(project)
    _assert_same(_snapshot(project), expected)
    assert _leftovers(project) == []


# ---------------------------------------------------------------- DVC beside a live run


def test_dvc_repro_beside_a_live_run_deletes_none_of_its_outputs(tmp_path):
    """`dvc repro` started while Snakemake runs stops at Snakemake's lock; every output of
    the stage is `persist`, so DVC removed nothing before that."""
    import yaml

    project = _copy_project(tmp_path / "project")
    shutil.copytree(REPO / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["grid"]
    outputs = [next(iter(o)) for kind in ("outs", "metrics", "plots") for o in stage[kind]]
    for out in outputs:
        path = project / out
        if Path(out).suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("from the live run\n")
        else:
            (path / "x").parent.mkdir(parents=True, exist_ok=True)
            (path / "x").write_text("from the live run\n")
    # A live Snakemake run's locks on the table it is writing.
    locks = project / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/table.md\n")
    env = dict(_env(project), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["DVC_SITE_CACHE_DIR"] = str(project / ".dvc-site")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True
    )
    assert repro.returncode != 0
    assert "LockException" in repro.stdout + repro.stderr or "cannot be locked" in (
        repro.stdout + repro.stderr
    )
    for out in outputs:
        path = project / out
        assert (path if Path(out).suffix else path / "x").is_file(), f"dvc repro deleted {out}"
