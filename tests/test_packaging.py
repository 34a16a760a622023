"""The package is self-contained: a built wheel holds the params schema and validates a
params file from anywhere, without the source tree."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_schema_and_validates_params(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO / "wsss", source / "wsss", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("wsss-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "wsss/resources/params.schema.yaml" in names
    assert "wsss/resources/paper_numbers.yaml" in names
    assert not any(n.startswith(("benchmarks/", "tests/", "workflow/")) for n in names)

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(REPO / "params.yaml", elsewhere / "params.yaml")
    env = dict(os.environ, PYTHONPATH=str(site))
    code = (
        "import sys, wsss; from wsss.cli import main; "
        "print(wsss.__file__); sys.exit(main(['check-params', 'params.yaml']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    installed_from, message = result.stdout.splitlines()[:2]
    assert installed_from.startswith(str(site)), installed_from  # not the source tree
    assert "params.yaml: valid" in message
