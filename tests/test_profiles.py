"""The Snakemake profiles in workflow/profiles/.

There is no SLURM cluster in CI, so the SLURM profile is driven against fake client
commands written into a temporary bin directory: `sbatch` records its arguments and
job script, runs the job on the spot and answers like the real one; `sacct`/`squeue`
report the recorded outcome; `srun` runs its command. The real executor plugin does
everything else (building the sbatch flags from the rules' resources, polling,
the job-step executor inside each job).
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import _copy_project

from wsss.config import rule_family

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = "workflow/profiles/slurm"
ACCOUNT, PARTITION = "wsss_test", "gpu_test"
# Rules of the default DAG that take gpu/mem_mb/runtime from params.yaml `resources:`
# (the key is the rule's name); the slow test checks every submitted rule.
PARAMS_RESOURCE_RULES = {
    "prepare_data",
    "train",
    "cams",
    "evaluate_cams",
    "segment",
    "entropy_weights",
}

pytest.importorskip(
    "snakemake_executor_plugin_slurm",
    reason='the SLURM executor plugin is in the test extra: pip install -e ".[test]"',
)

# One script serves every fake command; it dispatches on the name it was called by.
FAKE_SLURM = r'''#!{python}
"""Fake SLURM client for tests: see tests/test_profiles.py."""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

STATE = Path({state!r})
ACCOUNTS = {accounts!r}
PARTITIONS = {partitions!r}


def option(args, *names):
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def append(name, record):
    with open(STATE / name, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")


def records(name):
    path = STATE / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def new_job_id():
    with open(STATE / "job_id.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = STATE / "last_job_id"
        job_id = int(counter.read_text()) + 1 if counter.exists() else 1000
        counter.write_text(str(job_id))
    return job_id


def sbatch(args):
    wrapped = option(args, "--wrap")
    script = "#!/bin/sh\n" + wrapped + "\n" if wrapped is not None else sys.stdin.read()
    job_id = new_job_id()
    append("sbatch.jsonl", {{"job_id": job_id, "argv": args, "script": script}})
    workdir = Path(option(args, "-D", "--chdir") or os.getcwd())
    log = workdir / (option(args, "--output", "-o") or "slurm-%j.out").replace("%j", str(job_id))
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SLURM_JOB_ID=str(job_id))
    with open(log, "w") as out:
        code = subprocess.run(
            ["/bin/sh", "-c", script], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    state = "COMPLETED" if code == 0 else "FAILED"
    append("jobs.jsonl", {{"job_id": job_id, "name": option(args, "--job-name", "-J"), "state": state}})
    print(job_id if "--parsable" in args else f"Submitted batch job {{job_id}}")


def job_states(args):
    name = option(args, "--name")
    for job in records("jobs.jsonl"):
        if name is None or job["name"] == name:
            print(f"{{job['job_id']}}|{{job['state']}}")


def srun(args):
    # Job steps are run in place; srun's own options (all --x=y or -n1 style) are dropped.
    command = args[next(i for i, arg in enumerate(args) if not arg.startswith("-")) :]
    append("srun.jsonl", {{"argv": args}})
    os.execvp(command[0], command)


def main():
    tool, args = Path(sys.argv[0]).name, sys.argv[1:]
    if tool == "sbatch":
        sbatch(args)
    elif tool == "srun":
        srun(args)
    elif tool == "sacct" and "--format=JobIdRaw,State" in args:
        job_states(args)
    elif tool == "squeue":
        job_states(args)
    elif tool == "sacctmgr":
        print("\n".join(ACCOUNTS))
    elif tool == "sinfo":
        print("PARTITION\n" + "\n".join(PARTITIONS))
    elif tool == "scancel":
        append("scancel.jsonl", {{"argv": args}})
    elif tool != "sacct":  # sacct's account guess gets no answer, as on a fresh account
        sys.exit(f"fake SLURM: {{tool}} is not faked")


main()
'''
FAKE_TOOLS = ("sbatch", "srun", "sacct", "squeue", "sacctmgr", "sinfo", "scancel")


def _snakemake(workdir: Path, *args: str, path_prefix: Path | None = None):
    dirs = [str(path_prefix)] if path_prefix else []
    dirs += [str(Path(sys.executable).parent), os.environ["PATH"]]
    env = dict(os.environ, PATH=os.pathsep.join(dirs))
    env.setdefault("XDG_CACHE_HOME", str(workdir / ".cache"))
    env.pop("SLURM_JOB_ID", None)  # the plugin changes behaviour inside a SLURM job
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def _install_fake_slurm(root: Path) -> tuple[Path, Path]:
    """Write the fake SLURM commands; returns (bin dir, state dir)."""
    bin_dir, state = root / "bin", root / "state"
    bin_dir.mkdir(parents=True)
    state.mkdir()
    script = bin_dir / "fake_slurm"
    script.write_text(
        FAKE_SLURM.format(
            python=sys.executable,
            state=str(state),
            accounts=[ACCOUNT],
            partitions=[f"{PARTITION}*"],
        )
    )
    script.chmod(0o755)
    for tool in FAKE_TOOLS:
        (bin_dir / tool).symlink_to(script.name)
    return bin_dir, state


def _records(state: Path, name: str) -> list[dict]:
    path = state / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag` (as `flag value` or `flag=value`) in an argument list."""
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1 :])
    return values


def _expected_resources(params: dict, rule: str) -> dict:
    spec = params["resources"]
    return {**spec["default"], **spec.get(rule, {})}


def _merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merged(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule (rule_family), resources) of every job block a dry run prints."""
    jobs = []
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            jobs.append((rule_family(match.group(1)), {}))
        elif jobs and line.strip().startswith("resources:"):
            items = line.strip()[len("resources:") :].split(", ")
            jobs[-1][1].update(item.strip().split("=", 1) for item in items if "=" in item)
    return jobs


@pytest.fixture
def project(tmp_path):
    return _copy_project(tmp_path / "project")


def test_slurm_profile_leaves_default_resources_to_the_command_line():
    profile = yaml.safe_load((REPO / SLURM_PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # The README's `--default-resources slurm_account=... slurm_partition=...` replaces
    # a profile's whole default-resources key, so the profile must not rely on one:
    # per-rule values come from params.yaml.
    assert "default-resources" not in profile


def test_dry_run_with_the_slurm_profile_lists_the_jobs_with_params_resources(project):
    # the full grid: its aream_entropy variant has the entropy_weights jobs
    full = "configs/full.yaml"
    result = _snakemake(project, "-n", "--workflow-profile", SLURM_PROFILE, "--configfile", full)
    assert f"Using workflow specific profile {SLURM_PROFILE}" in result.stdout + result.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    params = _merged(params, yaml.safe_load((project / full).read_text()))
    grid = params["grid"]
    jobs = _dry_run_jobs(result.stdout)
    runs = len(grid["datasets"]) * len(grid["methods"]) * len(grid["seeds"])
    assert sum(rule == "evaluate_cams" for rule, _ in jobs) == runs
    assert sum(rule == "table" for rule, _ in jobs) == 1
    for rule, resources in jobs:
        if rule in PARAMS_RESOURCE_RULES:
            # gpu, mem_mb and runtime come from params.yaml, not the cluster's defaults.
            expected = _expected_resources(params, rule)
            for key in ("gpu", "mem_mb", "runtime"):
                assert resources.get(key) == str(expected[key]), (rule, key, resources)
    assert PARAMS_RESOURCE_RULES <= {rule for rule, _ in jobs}


@pytest.mark.slow
def test_smoke_run_through_the_slurm_executor_asks_for_params_resources(project, tmp_path):
    """The smoke DAG (one method, to keep it short) runs job by job through the plugin."""
    bin_dir, state = _install_fake_slurm(tmp_path / "slurm")
    # As a GPU preset does: one GPU for the training rules (CAM training and stage-2
    # segmentation), more threads for evaluation. One method keeps the DAG short.
    override = {
        "grid": {"methods": ["mctformer_v2"]},
        "resources": {
            "train": {"gpu": 1, "threads": 2},
            "segment": {"gpu": 1},
            "evaluate_cams": {"threads": 2},
        },
    }
    (project / "cluster.yaml").write_text(yaml.safe_dump(override))
    start = time.monotonic()
    _snakemake(
        project,
        "--workflow-profile",
        SLURM_PROFILE,
        "--default-resources",
        f"slurm_account={ACCOUNT}",
        f"slurm_partition={PARTITION}",
        "--configfile",
        "configs/smoke.yaml",
        "cluster.yaml",
        # The fake sbatch returns once the job is done: poll at once, not after 40 s.
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "1",
        "--latency-wait",
        "5",
        path_prefix=bin_dir,
    )
    elapsed = time.monotonic() - start

    # The jobs really ran: the table the local rule writes is there.
    assert "MCTformer-V2" in (project / "results-smoke" / "table.md").read_text()
    jobs = _records(state, "jobs.jsonl")
    assert jobs and all(job["state"] == "COMPLETED" for job in jobs), jobs

    params = yaml.safe_load((project / "params.yaml").read_text())
    for layer in (yaml.safe_load((project / "configs" / "smoke.yaml").read_text()), override):
        params = _merged(params, layer)
    submissions = _records(state, "sbatch.jsonl")
    by_rule: dict[str, list[list[str]]] = {}
    for submission in submissions:
        argv = submission["argv"]
        (comment,) = _flag_values(argv, "--comment")
        rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", comment).group(1)
        by_rule.setdefault(rule_family(rule), []).append(argv)
        # The job script runs one job of this workflow through the job-step executor.
        script = shlex.split(submission["script"].split("\n", 1)[1])
        assert _flag_values(script, "--executor") == ["slurm-jobstep"], script
        assert [target.split(":")[0] for target in _flag_values(script, "--target-jobs")] == [rule]
    for rule in ("prepare_data", "train", "cams", "evaluate_cams"):
        assert len(by_rule.get(rule, [])) == 1, (rule, sorted(by_rule))
    assert not {"all", "table"} & by_rule.keys(), "local rules run on the login node"

    # sbatch flags from params.yaml: exactly one GPU for training, none for evaluation.
    assert _expected_resources(params, "train")["gpu"] == 1
    evaluate = _expected_resources(params, "evaluate_cams")
    assert (evaluate["gpu"], evaluate["threads"]) == (0, 2)
    for rule, calls in by_rule.items():
        expected = _expected_resources(params, rule)
        gpus = [str(expected["gpu"])] if expected["gpu"] else []
        for argv in calls:
            assert _flag_values(argv, "--gpus") == gpus, (rule, argv)
            assert not _flag_values(argv, "--gres"), (rule, argv)
            assert _flag_values(argv, "--mem") == [str(expected["mem_mb"])], (rule, argv)
            assert _flag_values(argv, "-t") == [str(expected["runtime"])], (rule, argv)
            assert _flag_values(argv, "--cpus-per-task") == [str(expected["threads"])], (rule, argv)
            assert _flag_values(argv, "-A") == [ACCOUNT], (rule, argv)
            assert _flag_values(argv, "-p") == [PARTITION], (rule, argv)

    # Inside each job the job step asks srun for the same GPUs.
    steps = [record["argv"] for record in _records(state, "srun.jsonl")]
    assert len(steps) == len(submissions)
    for argv in steps:
        (target,) = _flag_values(argv, "--target-jobs")
        expected_gpu = _expected_resources(params, target.split(":")[0])["gpu"]
        gpus = [arg for arg in argv if arg.startswith("--gpus")]
        assert gpus == ([f"--gpus={expected_gpu}"] if expected_gpu else []), argv
    print(f"SLURM smoke run: {len(submissions)} sbatch jobs, {elapsed:.1f} s")


def test_multi_gpu_training_rules_launch_torchrun_on_one_node(project):
    """resources.<rule>.gpu > 1: train and segment start one process per GPU with torchrun
    (wsss.distributed); other commands, and gpu <= 1, stay plain `wsss`."""
    override = {
        "grid": {"methods": ["mctformer_v2"]},
        "resources": {"train": {"gpu": 2, "threads": 8}, "segment": {"gpu": 4, "threads": 4}},
    }
    (project / "multi_gpu.yaml").write_text(yaml.safe_dump(override))
    result = _snakemake(
        project, "-n", "-p", "--configfile", "configs/smoke.yaml", "multi_gpu.yaml", "--forceall"
    )
    commands = [line.strip().removeprefix("Shell command: ") for line in result.stdout.splitlines()]
    train = [c for c in commands if " train --config" in c]
    segment = [c for c in commands if " segment --config" in c]
    assert train and all(
        c.startswith("torchrun --standalone --nproc_per_node=2 -m wsss.cli train ") for c in train
    ), train
    assert segment and all(
        c.startswith("torchrun --standalone --nproc_per_node=4 -m wsss.cli segment ")
        for c in segment
    ), segment
    assert any(c.startswith("wsss cams ") for c in commands)
    jobs = dict(_dry_run_jobs(result.stdout))
    assert (jobs["train"]["gpu"], jobs["train"]["nodes"]) == ("2", "1")

    # A rule that uses one GPU cannot ask for more.
    (project / "multi_gpu.yaml").write_text(yaml.safe_dump({"resources": {"cams": {"gpu": 2}}}))
    with pytest.raises(AssertionError, match=r"resources\.cams\.gpu: 2, but the cams job uses one"):
        _snakemake(project, "-n", "--configfile", "configs/smoke.yaml", "multi_gpu.yaml")


def test_the_slurm_plugin_asks_for_the_gpus_on_one_node_in_one_task():
    """What snakemake-executor-plugin-slurm emits for a 2-GPU training job with the rule's
    resources: --gpus=2 and --nodes=1, one task (no --ntasks/--ntasks-per-gpu: torchrun
    starts the processes inside it) with the job's threads as --cpus-per-task."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(
        resources=Resources(gpu=2, nodes=1, mem_mb=32000, runtime=600), threads=16
    )
    params = {
        "run_uuid": "u",
        "slurm_logfile": "log",
        "comment_str": "rule_train",
        "account": "-A a",
        "partition": "-p p",
        "workdir": "/w",
    }
    argv = shlex.split(get_submit_command(job, params) + set_gres_string(job))
    assert "--gpus=2" in argv and "--nodes=1" in argv and "--cpus-per-task=16" in argv, argv
    assert not [a for a in argv if a.startswith("--ntasks")], argv


def test_the_documented_slurm_log_options_are_the_plugins():
    """docs/real-data.md's options for keeping SLURM logs are settings of the installed
    executor plugin (a renamed option would be silently wrong advice)."""
    import dataclasses

    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm import ExecutorSettings

    docs = (Path(__file__).resolve().parents[1] / "docs" / "real-data.md").read_text()
    section = docs.split("### Keeping the SLURM job logs")[1].split("\n### ")[0]
    options = set(re.findall(r"--slurm-([a-z-]+)", section))
    settings = {f.name.replace("_", "-") for f in dataclasses.fields(ExecutorSettings)}
    assert options == {"keep-successful-logs", "delete-logfiles-older-than", "logdir"}
    assert options <= settings, options - settings


def _shipped_set_resources(partition: str) -> str:
    """The commented `set-resources:` block of the shipped SLURM profile, uncommented, with
    `partition` for its placeholder."""
    lines = (REPO / SLURM_PROFILE / "config.yaml").read_text().splitlines()
    start = lines.index("# set-resources:")
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line)
    return "\n".join(line[2:] for line in block).replace("<gpu partition>", partition) + "\n"


def test_rule_family_resources_reach_every_per_run_rule(project):
    """`cams` in a profile's set-resources or in --set-resources reaches every cams_<run> rule
    (one per trained run); a cams_<run> entry wins over its family's; a name that is no rule
    or family stops the run, listing the known names (Snakemake alone ignores it)."""
    two_runs = {"grid": {"methods": ["mctformer_v2", "mctformer_v2_affinity", "doei"]}}
    (project / "two_runs.yaml").write_text(yaml.safe_dump(two_runs))
    profile = project / "gpu-profile"
    profile.mkdir()
    shipped = (REPO / SLURM_PROFILE / "config.yaml").read_text()
    (profile / "config.yaml").write_text(shipped + _shipped_set_resources("gpu_test"))
    args = ("-n", "--forceall", "--configfile", "configs/smoke.yaml", "two_runs.yaml")
    result = _snakemake(project, *args, "--workflow-profile", str(profile))
    cam_rules = set(re.findall(r"^rule (cams_\w+):$", result.stdout, re.M))
    assert cam_rules == {"cams_mctformer_v2", "cams_doei"}, cam_rules
    jobs = _dry_run_jobs(result.stdout)
    gpu_rules = {"train", "cams"}
    assert gpu_rules <= {rule for rule, _ in jobs}
    for rule, resources in jobs:
        want = "gpu_test" if rule in gpu_rules | {"segment"} else None
        assert resources.get("slurm_partition") == want, (rule, resources)

    # The command line: the family for all, one run's own entry wins for that run.
    result = _snakemake(
        project,
        *args,
        "--set-resources",
        "cams:slurm_partition=gpu",
        "cams:mem_mb=1234",
        "cams_doei:slurm_partition=big",
        "--set-threads",
        "cams=2",
        "--cores",
        "4",
    )
    blocks = re.findall(r"^rule (cams_\w+):$(.*?)(?=^\S|\Z)", result.stdout, re.M | re.S)
    seen = {}
    for name, body in blocks:
        resources = dict(_dry_run_jobs(f"rule {name}:\n{body}"))["cams"]
        assert resources["mem_mb"] == "1234" and "threads: 2" in body, (name, body)
        seen[name] = resources["slurm_partition"]
    assert seen == {"cams_mctformer_v2": "gpu", "cams_doei": "big"}, seen

    for option, entry in (
        ("--set-resources", "cam:slurm_partition=gpu"),
        ("--set-threads", "cam=2"),
    ):
        with pytest.raises(AssertionError) as failure:
            _snakemake(project, *args, option, entry)
        message = str(failure.value)
        assert f"{option} (command line or profile) names cam: no rule" in message
        assert "cams, cams_shard" in message and "cams_mctformer_v2" in message
