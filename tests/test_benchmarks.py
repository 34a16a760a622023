"""Every script in benchmarks/ imports cleanly and runs its quick mode in the suite (a
check that it runs, in seconds; the timings are not asserted). The table below is written
by hand; test_every_script_has_a_quick_check compares it with the folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# script -> where its quick mode runs in the suite
QUICK_CHECKS = {
    "bench.py": "test_bench_quick (here)",
    "grid_time.py": "test_grid_time_quick (here)",
    "coverage.py": "test_coverage_quick (here)",
    # No costly part without --before: its whole CLI on hand-made run files is seconds.
    "proxy_recipes.py": "tests/test_proxy_recipes.py (main on hand-made recipes)",
}


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(*args, cwd=REPO, timeout=300):
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_script_has_a_quick_check():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    assert scripts == set(QUICK_CHECKS), "benchmarks/ and QUICK_CHECKS differ"


@pytest.mark.parametrize("script", sorted(QUICK_CHECKS))
def test_script_imports_cleanly(script):
    done = _run(BENCHMARKS / script, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_coverage_quick(tmp_path):
    out = tmp_path / "coverage.md"
    done = _run(BENCHMARKS / "coverage.py", "--quick", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "seeds" in out.read_text()


def test_grid_time_quick(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "[Sat Dec  5 09:00:00 2026]\nlocalrule table:\n    jobid: 3\n"
        "[Sat Dec  5 09:00:04 2026]\nFinished jobid: 3\n"
    )
    out = tmp_path / "grid.md"
    done = _run(BENCHMARKS / "grid_time.py", log, "--quick", "--out", out)
    assert done.returncode == 0, done.stderr
    row = next(line for line in out.read_text().splitlines() if line.startswith("| table "))
    assert row.startswith("| table | 1 | 4 |")


@pytest.mark.slow
def test_bench_quick(tmp_path):
    """Every section (training, epochs, CAMs, evaluation, sweep, CAM memory) at --quick."""
    done = _run(
        BENCHMARKS / "bench.py",
        "--quick",
        "--threads",
        "1",
        "--shared-data",
        SHARED_DATA,
        "--out-dir",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "bench.md").read_text()
    assert text.startswith("**--quick")
    for row in ("| train mctformer_v2 ", "| CAMs, refiner none ", "| evaluation, 8 VOC masks "):
        assert row in text
    assert "### CAM artifacts" in text
