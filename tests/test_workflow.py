"""The Snakemake DAG: dry runs of the grid, and a smoke run of every stage."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss.config import rule_family, training_key

REPO = Path(__file__).resolve().parents[1]


def _copy_project(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(
        "__pycache__", "*.pyc", ".snakemake", ".pytest_cache", ".ruff_cache"
    )
    for part in ("workflow", "wsss", "configs"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    shutil.copy(REPO / "params.yaml", dest / "params.yaml")
    return dest


def _snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 ARGS`` in ``workdir`` run by this venv's interpreter, with the venv
    NOT on PATH (as for a user who did not activate it: the Snakefile puts the interpreter's
    directory first on the jobs' PATH); ``env``: extra environment variables."""
    env = dict(os.environ, **(env or {}))
    env["PATH"] = _without_venv(env["PATH"])
    env.pop("VIRTUAL_ENV", None)
    env.setdefault("XDG_CACHE_HOME", str(workdir / ".cache"))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def _without_venv(path: str) -> str:
    """PATH without this venv's bin folder (or any folder holding a `wsss` command)."""
    venv = Path(sys.executable).parent
    return os.pathsep.join(
        p
        for p in path.split(os.pathsep)
        if p and Path(p) != venv and not (Path(p) / "wsss").exists()
    )


def test_a_run_without_wsss_refuses_to_start_naming_the_fix(project):
    """Snakemake run by an interpreter with no `wsss` beside it (the venv's base Python, the
    venv's packages on PYTHONPATH) and none on PATH stops before any job, saying how to run
    it; with the venv's interpreter (every other test here) the jobs find `wsss`."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = dict(os.environ, PATH=_without_venv(os.environ["PATH"]))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site])
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [sys._base_executable, "-m", "snakemake", "--cores", "1", "-n"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "the rules call `wsss`, which is neither next to the interpreter" in output, output
    assert "run Snakemake from the project's environment" in output


def test_deployed_as_a_module_into_another_folder_it_plans_the_grid(tmp_path):
    """The deployment snakedeploy writes (`module ...: snakefile:` plus `use rule * from`),
    here with a local path to this checkout, in a folder with its own config: the code inputs
    resolve against the checkout and every output lands in the deploying folder. (snakedeploy
    itself cannot write this for a local checkout: its local provider gives the Snakefile's
    path relative to the source, which does not resolve from the deploying folder.)"""
    deploy = tmp_path / "deploy"
    (deploy / "config").mkdir(parents=True)
    (deploy / "workflow").mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["results_dir"] = "my-results"
    (deploy / "config" / "config.yaml").write_text(yaml.safe_dump(params))
    (deploy / "workflow" / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        f'module wsss:\n    snakefile:\n        "{REPO / "workflow" / "Snakefile"}"\n'
        "    config:\n        config\n\n\n"
        "use rule * from wsss\n"
    )
    result = _snakemake(deploy, "-n", "--configfile", str(REPO / "configs" / "smoke.yaml"))
    counts = _job_counts(result.stdout)
    assert counts["prepare_data"] == 1 and counts["train"] >= 1 and counts["table"] == 1
    assert "my-results/table.md" not in result.stdout  # the smoke preset's results_dir wins
    assert "results-smoke/table.md" in result.stdout


def test_the_workflow_files_are_snakefmt_formatted():
    """`snakefmt --check` on the Snakefile and every rule file (the formatter's defaults,
    line length from pyproject's [tool.snakefmt]): exit 0 when nothing would change."""
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    files = [REPO / "workflow" / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run(
        [snakefmt, "--check", *map(str, files)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_lists_every_lint_finding(project):
    """The README lists `snakemake --lint`'s findings by kind with a count and a reason; a
    new rule, helper or grid change moved the counts (32/25 stated, 33/26 found) unnoticed.
    Compares each kind's count and the total with what lint reports on the default grid."""
    import re

    result = _snakemake(project, "--lint", check=False)
    found: dict[str, int] = {}
    for line in (result.stdout + result.stderr).splitlines():
        if match := re.match(r"^\s+\* (.+?)(?: in line \d+\.)?:$", line):
            kind = match.group(1).rstrip(".")
            found[kind] = found.get(kind, 0) + 1
    assert found, result.stdout + result.stderr
    readme = (REPO / "README.md").read_text()
    total = re.search(r"`snakemake --lint` \(Snakemake [\d.]+\) reports (\d+) findings", readme)
    stated = {
        kind.rstrip("."): int(n) for n, kind in re.findall(r'\*\*(\d+) x "([^"]+)"\*\*', readme)
    }
    assert stated == found
    assert int(total.group(1)) == sum(found.values())


def _job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count} (rule_family names)."""
    counts, in_table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                family = rule_family(parts[0])
                counts[family] = counts.get(family, 0) + int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                if counts:
                    break
    return counts


@pytest.fixture
def project(tmp_path):
    return _copy_project(tmp_path / "project")


def test_dry_run_lists_the_grid(project):
    override = project / "grid.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "grid": {"datasets": ["synthetic", "synthetic_easy"], "seeds": [0, 1]},
                "datasets": {
                    "synthetic_easy": {
                        "kind": "synthetic",
                        "root": "data/synthetic-easy",
                        "train_split": "train",
                        "eval_split": "train",
                        "generator": {"context_prob": 0.0, "context_alone_prob": 0.0},
                    }
                },
            }
        )
    )
    result = _snakemake(project, "-n", "--configfile", str(override))
    counts = _job_counts(result.stdout)
    params = yaml.safe_load((project / "params.yaml").read_text())
    methods = params["grid"]["methods"]
    train_runs = {training_key(params, m) for m in methods}
    assert counts["prepare_data"] == 2
    assert counts["train"] == 2 * 2 * len(train_runs)  # refiners share trained models
    assert counts["cams"] == 2 * 2 * len(train_runs)  # one CAM job per trained model
    assert counts["evaluate_cams"] == 2 * 2 * len(methods)
    assert counts["pseudo_labels"] == 2 * 2 * len(methods)  # stage 2 for every method
    assert counts["segment"] == 2 * 2 * len(methods)
    # aream_entropy, the grid's only reader of entropy weights, is in configs/full.yaml
    assert "entropy_weights" not in counts
    assert counts["attention_diagnostics"] == counts["train"]  # one per trained model
    assert counts["attention_figure"] == 2
    assert counts["table"] == 1
    assert "pretrain" not in counts  # the default grid trains from scratch


def test_training_from_the_pretrained_proxy_builds_it_first(project):
    """model.weights naming the pretrain rule's file: every training job depends on it, and
    a missing file is built once by the pretrain rule."""
    override = project / "pretrained.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "grid": {"methods": ["mctformer_v2", "aream"]},
                "model": {"pretrained": True, "weights": "pretrained/proxy_vit.pth"},
                "train": {"layer_decay": 0.65},
            }
        )
    )
    result = _snakemake(project, "-n", "-p", "--configfile", str(override))
    counts = _job_counts(result.stdout)
    seeds = yaml.safe_load((project / "params.yaml").read_text())["grid"]["seeds"]
    assert counts["pretrain"] == 1 and counts["train"] == 2 * len(seeds)
    for job in _jobs(result.stdout, "train"):
        assert "pretrained/proxy_vit.pth" in job["input"].split(", ")
        assert '"layer_decay": 0.65' in job["shell"]


def _jobs(output: str, rule: str) -> list[dict[str, str]]:
    """The dry run's jobs of one rule (or rule_family), each as {field: text} (input,
    output, shell, ...)."""
    jobs = []
    blocks = re.split(r"^rule (\w+):\n", output, flags=re.M)
    for name, block in zip(blocks[1::2], blocks[2::2], strict=True):
        if rule not in (name, rule_family(name)):
            continue
        job, field = {}, None
        for line in block.splitlines():
            if line.startswith("rule ") or line.startswith("Job stats") or line.startswith("["):
                break
            key, sep, value = line.strip().partition(": ")
            if line.startswith("    ") and sep and key.isidentifier():
                field = key
                job[field] = value
            elif field == "shell" or line.startswith("Shell command: "):
                field = "shell"
                job["shell"] = job.get("shell", "") + line.removeprefix("Shell command: ")
        jobs.append(job)
    return jobs


def test_entropy_weights_rule_feeds_only_the_baseline_keyword_runs(project):
    """aream_entropy (entropy_weights: baseline) trains after the entropy_weights job of its
    dataset and seed, which reads that seed's trained mctformer_v2; plain aream does not
    (the full grid: the default leaves aream_entropy out)."""
    result = _snakemake(project, "-n", "-p", "--configfile", "configs/full.yaml")
    full = yaml.safe_load((project / "configs/full.yaml").read_text())
    seeds = full["grid"]["seeds"]  # the preset's own seeds (more than the default's)
    entropy = _jobs(result.stdout, "entropy_weights")
    assert len(entropy) == len(seeds) == _job_counts(result.stdout)["entropy_weights"]
    for seed in seeds:
        weights = f"results-full/runs/synthetic/train/mctformer_v2/seed{seed}/entropy_weights.json"
        (job,) = [j for j in entropy if j["output"] == weights]
        assert f"results-full/runs/synthetic/train/mctformer_v2/seed{seed}/model.pt" in job["input"]
        log = f"results-full/logs/entropy_weights/synthetic/mctformer_v2/seed{seed}.log"
        assert job["log"] == log
        assert "wsss entropy-weights" in job["shell"] and f"--out {weights}" in job["shell"]
        train = {
            j["output"].split("/")[4]: j
            for j in _jobs(result.stdout, "train")
            if f"/seed{seed}/" in j["output"]
        }
        assert weights in train["aream_entropy"]["input"]
        assert f"--upstream entropy_weights={weights}" in train["aream_entropy"]["shell"]
        for plain in ("aream", "mctformer_v2"):
            assert "entropy_weights.json" not in train[plain]["input"]
            assert "--upstream" not in train[plain]["shell"]


def test_equal_values_written_otherwise_give_every_job_the_same_params(project):
    """Issue 28, case 5: `crop_scale: [0.6, 1]` or `drop_path_rate: 0` (the defaults are
    1.0 and 0.0) retrained every classifier. Params are normalised by their schema type
    before the job configs are built, so each job's --config (Snakemake's params, compared
    for reruns) is the same text and a finished run reruns nothing."""
    smoke = str(project / "configs" / "smoke.yaml")
    equal = project / "equal.yaml"
    equal.write_text(
        yaml.safe_dump(
            {
                "train": {"crop_scale": [0.6, 1], "lr": "1e-3"},
                "model": {"drop_path_rate": 0},
                "segmentation": {"head_lr_mult": 10.0, "crf": {"bilateral_sxy": 83.0}},
            }
        )
    )

    def commands(*configfiles):
        out = _snakemake(project, "-n", "-p", "--configfile", smoke, *configfiles).stdout
        return {
            rule: sorted(job["shell"] for job in _jobs(out, rule))
            for rule in ("train", "cams", "segment", "pseudo_labels", "table")
        }

    as_written = commands()
    assert all(as_written.values()), as_written
    assert commands(str(equal)) == as_written


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"grid": {"methods": ["no_such_method"]}},
            "grid.methods: unknown method 'no_such_method'",
        ),
        ({"train": {"epochs": -1}}, "train.epochs: -1 is less than the minimum of 1"),
    ],
)
def test_bad_params_fail_before_any_job(project, override, message):
    path = project / "bad.yaml"
    path.write_text(yaml.safe_dump(override))
    result = _snakemake(project, "-n", "--configfile", str(path), check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    # the override set the bad value: the error names it, not params.yaml (issue 28, case 9)
    assert "bad.yaml is invalid:" in result.stdout + result.stderr
    assert not (project / "results").exists()


def _git(workdir: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    result = subprocess.run(
        ["git", *args], cwd=workdir, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def test_every_output_and_log_is_under_results_dir(project):
    """One prefix (results_dir) moves every file a job writes; the smoke preset uses it."""
    smoke = yaml.safe_load((project / "configs" / "smoke.yaml").read_text())
    assert smoke["results_dir"] == "results-smoke"
    smoke_file = str(project / "configs" / "smoke.yaml")
    result = _snakemake(project, "-n", "-p", "--configfile", smoke_file)
    paths = [
        path.strip()
        for line in result.stdout.splitlines()
        if line.startswith(("    output: ", "    log: "))
        for path in line.split(": ", 1)[1].split(",")
    ]
    assert len(paths) > 20
    assert [p for p in paths if not p.startswith("results-smoke/")] == []
    table = _jobs(result.stdout, "table")
    assert "--out-dir results-smoke " in table[0]["shell"]


@pytest.mark.slow
def test_smoke_run_then_nothing_to_do_then_code_edit_reruns_dependents(project):
    smoke = str(project / "configs" / "smoke.yaml")
    # A git repo with the project's ignore files: the smoke run must leave it clean
    # (its results and data folders are git-ignored, the committed results untouched).
    for ignore in (".gitignore", "results/.gitignore", "data/.gitignore"):
        (project / ignore).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / ignore, project / ignore)
    _git(project, "init", "-q")
    # .cache/ is this test's XDG_CACHE_HOME (_snakemake), not something the pipeline writes
    (project / ".git" / "info" / "exclude").write_text(".cache/\n")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "project")
    _snakemake(project, "--configfile", smoke)
    assert _git(project, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (project / "results").exists() or {
        p.name for p in (project / "results").iterdir()
    } <= {".gitignore"}
    results = project / "results-smoke"
    table = (results / "table.md").read_text()
    assert "MCTformer-V2" in table and "patch affinity" in table
    metrics = json.loads((results / "metrics.json").read_text())
    run = metrics["synthetic"]["mctformer_v2"]
    assert 0.0 <= run["cam_miou"] <= 1.0 and run["seeds"] == 1
    assert (
        results / "logs" / "train" / "synthetic" / "mctformer_v2" / "seed0.log"
    ).stat().st_size > 0
    # Stage 2: one pseudo-label PNG per training image, a segmenter scored on val.
    smoke_params = yaml.safe_load(Path(smoke).read_text())
    num_train = smoke_params["datasets"]["synthetic"]["generator"]["num_train"]
    labels = results / "pseudo_labels" / "synthetic" / "mctformer_v2" / "seed0"
    assert len(list(labels.glob("*.png"))) == num_train
    run_dir = results / "runs" / "synthetic" / "mctformer_v2" / "seed0"
    seg = json.loads((run_dir / "seg_metrics.json").read_text())["seg"]
    assert seg["split"] == "val" and (run_dir / "segmenter.pt").is_file()
    assert run["seg_miou"] == pytest.approx(seg["miou"], abs=1e-6)
    pseudo = json.loads((run_dir / "pseudo_label_metrics.json").read_text())["pseudo_labels"]
    assert pseudo["miou"] == pytest.approx(run["cam_miou"], abs=1e-6)  # plain rule at the best t
    assert "seg mIoU (val)" in table

    again = _snakemake(project, "-n", "--configfile", smoke)
    assert "Nothing to be done" in again.stdout + again.stderr

    # Editing stage-2 training code reruns the segmenters and the table, nothing upstream.
    with open(project / "wsss" / "segmentation" / "train.py", "a") as f:
        f.write("\n# edited\n")
    counts = _job_counts(_snakemake(project, "-n", "--configfile", smoke).stdout)
    assert counts["segment"] == 2 and counts["table"] == 1
    assert not {"train", "cams", "evaluate_cams", "pseudo_labels"} & set(counts)

    # Editing evaluation code reruns evaluation and what reads its scores (the table, the
    # pseudo-labels at the best threshold, stage 2), not training or CAMs.
    with open(project / "wsss" / "evaluation" / "cam_eval.py", "a") as f:
        f.write("\n# edited\n")
    counts = _job_counts(_snakemake(project, "-n", "--configfile", smoke).stdout)
    assert counts["evaluate_cams"] == 2 and counts["pseudo_labels"] == 2
    assert counts["segment"] == 2 and counts["table"] == 1
    assert not {"train", "cams", "prepare_data"} & set(counts)


@pytest.mark.slow
def test_smoke_run_with_entropy_weights_from_the_baseline(project):
    """The smoke DAG with aream_entropy: the weights file of the trained baseline is made
    once per seed and its values are what the AReAM run trained with."""
    import torch

    override = project / "entropy.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "grid": {"methods": ["mctformer_v2", "aream_entropy"]},
                # the smoke model has 2 blocks: block 0 refines, block 1 gets the loss
                "method_params": {"aream": {"layer_index": 1, "cls_epochs": 1}},
            }
        )
    )
    args = ("--configfile", str(project / "configs" / "smoke.yaml"), str(override))
    _snakemake(project, *args)
    results = project / "results-smoke"
    weights_file = results / "runs/synthetic/train/mctformer_v2/seed0/entropy_weights.json"
    weights = json.loads(weights_file.read_text())
    assert weights["method"] == "mctformer_v2" and len(weights["weights"]) == weights["blocks"] == 2
    log = (results / "logs/entropy_weights/synthetic/mctformer_v2/seed0.log").read_text()
    assert "per-block entropy (bits)" in log and "per-block weights e_l" in log
    model = torch.load(
        results / "runs/synthetic/train/aream_entropy/seed0/model.pt", weights_only=True
    )
    assert model["config"]["method"]["params"]["entropy_weights"] == weights["weights"]
    assert "AReAM, entropy layer weights" in (results / "table.md").read_text()
    again = _snakemake(project, "-n", *args)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_sharded_cams_score_as_the_unsharded_split(project):
    """cam.shard_size cuts the smoke split (48 images) into 3 cams jobs per run; the merged
    evaluation gives the unsharded run's cam_metrics.json, value for value."""
    smoke = str(project / "configs" / "smoke.yaml")
    runs = [
        f"results-smoke/runs/synthetic/{m}/seed0/cam_metrics.json"  # smoke results_dir
        for m in ("mctformer_v2", "mctformer_v2_affinity")
    ]
    _snakemake(project, "--configfile", smoke, "--", *runs)
    unsharded = {run: json.loads((project / run).read_text()) for run in runs}
    for run in runs:
        (project / run).unlink()  # the trained models stay: only CAMs and scores rerun
    sharded = project / "shards.yaml"
    sharded.write_text(yaml.safe_dump({"cam": {"shard_size": 20}}))
    args = ("--configfile", smoke, str(sharded), "--", *runs)
    _snakemake(project, *args)
    for run in runs:
        assert json.loads((project / run).read_text()) == unsharded[run], run
    cams = project / "results-smoke/cams/synthetic/mctformer_v2/seed0"
    assert sorted(p.name for p in (cams / "train.shards").glob("*.npz")) == [
        "0.npz",
        "1.npz",
        "2.npz",
    ]
    index = json.loads((cams / "train.shards.json").read_text())
    assert [s["images"] for s in index["shards"]] == [20, 20, 8]
    again = _snakemake(project, "-n", *args)
    assert "Nothing to be done" in again.stdout + again.stderr

    # A deleted shard is rebuilt by the default target (issue 28, case 6: evaluation used
    # to fail on every rerun), and the scores come out the same.
    everything = ("--configfile", smoke, str(sharded))
    _snakemake(project, *everything)
    (cams / "train.shards/1.npz").unlink()
    _snakemake(project, *everything)
    assert (cams / "train.shards/1.npz").is_file()
    for run in runs:
        assert json.loads((project / run).read_text()) == unsharded[run], run

    # A plan rebuilt with the same content reruns nothing downstream (issue 28, case 6).
    # Touched: the shard and index jobs read it as ancient(), nothing is planned.
    plan = project / "results-smoke/cams/synthetic/train.shard_plan.json"
    plan.touch()
    again = _snakemake(project, "-n", *everything)
    assert "Nothing to be done" in again.stdout + again.stderr
    # Deleted: a run makes only the plan again (the same content). A dry run cannot know
    # that (the checkpoint has not run) and lists the plan's readers; the run re-evaluates
    # them, and the jobs below them (segment, plots, table), once the plan exists. Before,
    # both segmenters, plots and table reran (snakemake#3879, after_shard_plans).
    plan_bytes = plan.read_bytes()
    plan.unlink()
    result = _snakemake(project, *everything)
    ran = set(
        re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M)
    )
    assert ran <= {"cam_shard_plan", "all"}, ran
    assert plan.read_bytes() == plan_bytes
