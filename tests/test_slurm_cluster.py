"""The SLURM profile against a real scheduler, and its launcher.

The slow tests start a one-node SLURM cluster on localhost (tests/slurm_cluster.py:
Debian's Slurm 22.05 packages, installed with apt-get when missing) and run the smoke
DAG through `workflow/profiles/slurm/snakemake-slurm`, the launcher the docs give:
- with job accounting (slurmdbd + MariaDB), where the plugin polls sacct, and each
  job's resources are read back from `scontrol show job` and sacct;
- without accounting, where sacct only answers "Slurm accounting storage is
  disabled" and the plugin's defaults wait forever; the launcher must switch to
  squeue, and a time limit turns a hang into a failure.
The fast tests drive the launcher's decision against fake `sacct`/`scontrol` commands.
"""

import importlib.machinery
import importlib.util
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import LocalSlurm, ensure_packages
from test_profiles import _expected_resources, _merged
from test_workflow import _copy_project

from wsss.config import rule_family

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = "workflow/profiles/slurm/snakemake-slurm"
# A hang shows up as a run past its limit (a hung run never ends, so a generous limit
# costs time only on failure). Measured on a 2-core machine under a load average of
# 10-16: 280-444 s with accounting (11 jobs), 78-116 s without (2 jobs).
LIMIT_ACCOUNTING_S, LIMIT_NO_ACCOUNTING_S = 1200, 600
# The model the no-accounting case trains (two jobs: prepare_data, then train).
MODEL = "results-smoke/runs/synthetic/train/mctformer_v2/seed0/model.pt"

pytest.importorskip(
    "snakemake_executor_plugin_slurm",
    reason='the SLURM executor plugin is in the test extra: pip install -e ".[test]"',
)


def _load_launcher():
    loader = importlib.machinery.SourceFileLoader("snakemake_slurm", str(REPO / LAUNCHER))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# -- the launcher's decision, against fake client commands --------------------------------

FAKE_TOOL = """#!/bin/sh
echo "$0 $*" >> {calls}
{body}
"""


def _fake_tools(tmp_path: Path, **bodies: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in bodies.items():
        tool = bin_dir / name
        tool.write_text(FAKE_TOOL.format(calls=tmp_path / "calls.log", body=body))
        tool.chmod(0o755)
    return bin_dir


SCONTROL_CONFIG = (
    "echo 'AccountingStorageType   = accounting_storage/none'\necho 'MinJobAge  = {age} sec'"
)
NO_ACCOUNTING = "echo 'Slurm accounting storage is disabled' >&2; exit 1"


@pytest.fixture
def launcher(monkeypatch):
    module = _load_launcher()

    def use(bin_dir: Path):
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return module

    return use


def test_launcher_keeps_sacct_when_it_answers(launcher, tmp_path):
    bin_dir = _fake_tools(tmp_path, sacct="exit 0", scontrol="exit 1")
    assert launcher(bin_dir).status_args(["--cores", "1"]) == []
    # The probe is the plugin's own query (sacct -X ... --format=JobIdRaw,State).
    assert "--format=JobIdRaw,State" in (tmp_path / "calls.log").read_text()


def test_launcher_switches_to_squeue_without_accounting(launcher, tmp_path, capsys):
    bin_dir = _fake_tools(tmp_path, sacct=NO_ACCOUNTING, scontrol=SCONTROL_CONFIG.format(age=300))
    assert launcher(bin_dir).status_args([]) == ["--slurm-status-command", "squeue"]
    err = capsys.readouterr().err
    assert "Slurm accounting storage is disabled" in err and "MinJobAge=300 s" in err


@pytest.mark.parametrize(
    "age, args, needed",
    [
        (120, [], 181),  # the plugin may poll 180 s apart: a job can leave squeue unseen
        (300, ["--slurm-init-seconds-before-status-checks=120"], 360),  # plugin reverts to sacct
    ],
)
def test_launcher_fails_fast_when_squeue_cannot_follow_the_jobs(
    launcher, tmp_path, age, args, needed
):
    bin_dir = _fake_tools(tmp_path, sacct=NO_ACCOUNTING, scontrol=SCONTROL_CONFIG.format(age=age))
    with pytest.raises(SystemExit) as failure:
        launcher(bin_dir).status_args(args)
    message = str(failure.value.code)
    assert f"MinJobAge={age} s" in message and f"MinJobAge >= {needed}" in message
    assert "slurmdbd" in message and "Slurm accounting storage is disabled" in message


def test_launcher_leaves_an_explicit_status_command_alone(launcher, tmp_path):
    bin_dir = _fake_tools(tmp_path, sacct=NO_ACCOUNTING, scontrol="exit 1")
    assert launcher(bin_dir).status_args(["--slurm-status-command", "sacct"]) == []
    assert not (tmp_path / "calls.log").exists()  # no probe at all


def test_launcher_outside_slurm_names_the_problem(launcher, tmp_path):
    bin_dir = _fake_tools(
        tmp_path, sacct=NO_ACCOUNTING, scontrol="echo 'no controller' >&2; exit 1"
    )
    with pytest.raises(SystemExit, match="scontrol show config.*no controller.*login node"):
        launcher(bin_dir).status_args([])


# -- a real cluster -----------------------------------------------------------------------


def _cluster(accounting: bool) -> LocalSlurm:
    reason = ensure_packages(accounting)
    if reason is not None:
        pytest.skip(f"no local SLURM cluster: {reason}")
    # slurmctld forgets a finished job after MinJobAge seconds (default 300); an hour
    # keeps every job of a slow run readable with `scontrol show job` at its end.
    return LocalSlurm(accounting=accounting, min_job_age=3600).start()


@pytest.fixture
def slurm(request):
    cluster = _cluster(request.param)
    yield cluster
    cluster.stop()
    assert not any(cluster.running().values()), cluster.running()
    cluster.remove()


def _launch(
    cluster: LocalSlurm, workdir: Path, *args: str, limit_s: float
) -> subprocess.CompletedProcess:
    """Run the launcher in `workdir` as a user would; fails the test past `limit_s`."""
    env = cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.setdefault("XDG_CACHE_HOME", str(workdir / ".cache"))
    env.pop("SLURM_JOB_ID", None)  # the plugin changes behaviour inside a SLURM job
    proc = subprocess.Popen(
        [str(workdir / LAUNCHER), *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to end all of it on a hang
    )
    try:
        out, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        # SIGTERM does not end a Snakemake that waits on a lost job: SIGKILL after 10 s.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise AssertionError(
            f"the launcher ran past {limit_s} s (a hang):\n{out[-3000:]}\n{err[-6000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _smoke_args(cluster: LocalSlurm, *configfiles: str) -> list[str]:
    return [
        "--default-resources",
        f"slurm_account={cluster.account}",
        f"slurm_partition={cluster.partition}",
        "--configfile",
        "configs/smoke.yaml",
        *configfiles,
        # Jobs take seconds here: poll soon after submitting, not after the default 40 s.
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "1",
        "--latency-wait",
        "5",
    ]


def _submitted(log: str) -> dict[str, str]:
    """{SLURM job id: rule} from Snakemake's log: each job block names its rule and
    Snakemake job id, and the plugin reports the SLURM id it got for that job."""
    rule_of, submitted, rule = {}, {}, None
    for line in log.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = rule_family(match.group(1))
        elif match := re.match(r"^jobid: (\d+)$", line.strip()):
            rule_of[match.group(1)] = rule
        elif match := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", line):
            submitted[match.group(2)] = rule_of[match.group(1)]
    return submitted


def _rule(job: dict[str, str]) -> str:
    # The plugin names the rule in the job's comment: rule_<name>[_wildcards_<values>].
    comment = job["Comment"]
    assert comment.startswith("rule_"), job
    return rule_family(comment[len("rule_") :].split("_wildcards_")[0])


def _time_limit(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


@pytest.mark.slow
@pytest.mark.parametrize("slurm", [True], ids=["accounting"], indirect=True)
def test_smoke_dag_on_a_real_cluster_with_accounting(slurm, tmp_path):
    project = _copy_project(tmp_path / "project")
    # A GPU preset's requests: one GPU for CAM training and for stage-2 segmentation,
    # more threads for training and evaluation. The node has one (fake) GPU.
    override = {
        "resources": {
            "train": {"gpu": 1, "threads": 2},
            "segment": {"gpu": 1},
            "evaluate_cams": {"threads": 2},
        }
    }
    (project / "cluster.yaml").write_text(yaml.safe_dump(override))
    # A rule family's partition (docs/real-data.md): `cams` reaches the per-run cams_<run>
    # rule; every other rule stays in the default partition.
    family = ["--set-resources", f"cams:slurm_partition={slurm.gpu_partition}"]
    start = time.monotonic()
    result = _launch(
        slurm, project, *_smoke_args(slurm, "cluster.yaml"), *family, limit_s=LIMIT_ACCOUNTING_S
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{slurm.logs()}"
    assert "polling with squeue" not in result.stderr  # sacct works: the plugin's default
    table = (project / "results-smoke" / "table.md").read_text()  # the smoke results_dir
    assert "MCTformer-V2" in table and "patch affinity" in table

    params = yaml.safe_load((project / "params.yaml").read_text())
    for layer in (yaml.safe_load((project / "configs" / "smoke.yaml").read_text()), override):
        params = _merged(params, layer)
    jobs = slurm.jobs()
    # The jobs SLURM ran are the ones Snakemake submitted, and no local rule went there.
    assert {job["JobId"]: _rule(job) for job in jobs} == _submitted(result.stderr)
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        by_rule.setdefault(_rule(job), []).append(job)
    # One training run (with its attention diagnostics) and one gallery serve both variants
    # (the affinity refiner is post hoc); table, plots and table_html are localrules.
    # one CAM job (per trained model and split) writes both variants' CAMs
    per_method = ("evaluate_cams", "pseudo_labels", "segment")
    expected_counts = {
        "prepare_data": 1,
        "train": 1,
        "cams": 1,
        "attention_diagnostics": 1,
        "gallery": 1,
    }
    expected_counts |= {rule: len(params["grid"]["methods"]) for rule in per_method}
    assert {rule: len(js) for rule, js in by_rule.items()} == expected_counts

    assert _expected_resources(params, "train")["gpu"] == 1
    for rule, rule_jobs in by_rule.items():
        want = _expected_resources(params, rule)
        for job in rule_jobs:
            assert job["JobState"] == "COMPLETED", job
            partition = slurm.gpu_partition if rule == "cams" else slurm.partition
            assert (job["Account"], job["Partition"]) == (slurm.account, partition), job
            assert job["CPUs/Task"] == str(want["threads"]), (rule, job)
            assert job["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, job)
            assert job["TimeLimit"] == _time_limit(want["runtime"]), (rule, job)
            # Requested (TresPerJob) and allocated (TRES) GPUs: the fake GRES.
            gpus = want["gpu"]
            assert job.get("TresPerJob") == (f"gres:gpu:{gpus}" if gpus else None), (rule, job)
            assert (f"gres/gpu={gpus}" in job["TRES"]) == bool(gpus), (rule, job)

    # The node has 8 CPUs and 64 GB but one GPU: only the GRES keeps GPU jobs apart.
    gpu_jobs = sorted(
        (job["StartTime"], job["EndTime"]) for job in jobs if "TresPerJob" in job
    )  # ISO times: sorting as text is sorting in time
    assert len(gpu_jobs) == 1 + len(params["grid"]["methods"])  # train + each segment
    for (_, end), (next_start, _) in itertools.pairwise(gpu_jobs):
        assert next_start >= end, gpu_jobs

    # Accounting saw every job finish: sacct is what the plugin polled.
    ids = ",".join(job["JobId"] for job in jobs)
    accounted = slurm.run(
        "sacct", "-X", "-n", "-P", "-j", ids, "--format=JobIdRaw,State,AllocTRES"
    ).stdout
    states = {line.split("|")[0]: line.split("|")[1:] for line in accounted.splitlines()}
    assert {job["JobId"] for job in jobs} == states.keys(), accounted
    for job in jobs:
        state, tres = states[job["JobId"]]
        assert state == "COMPLETED", (job["JobId"], state)
        assert ("gres/gpu=1" in tres) == bool(_expected_resources(params, _rule(job))["gpu"])
    print(f"real SLURM with accounting: {len(jobs)} sbatch jobs, {elapsed:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("slurm", [False], ids=["no_accounting"], indirect=True)
def test_smoke_dag_on_a_real_cluster_without_accounting_does_not_hang(slurm, tmp_path):
    project = _copy_project(tmp_path / "project")
    probe = slurm.run("sacct", "-X", "-n", check=False)
    assert probe.returncode != 0 and "accounting storage is disabled" in probe.stderr

    # Two dependent jobs (prepare_data, then train) are enough to show the run follows
    # jobs to their end: with the plugin's defaults it waits forever on the first one.
    start = time.monotonic()
    result = _launch(slurm, project, *_smoke_args(slurm), MODEL, limit_s=LIMIT_NO_ACCOUNTING_S)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{slurm.logs()}"
    assert f"polling with squeue (MinJobAge={slurm.min_job_age} s)" in result.stderr
    assert (project / MODEL).is_file()
    jobs = slurm.jobs()
    assert {job["JobId"]: _rule(job) for job in jobs} == _submitted(result.stderr)
    assert sorted(_rule(job) for job in jobs) == ["prepare_data", "train"]
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs

    # With a MinJobAge too short for squeue, the launcher stops before any submission.
    submitted = {job["JobId"] for job in jobs}
    conf = slurm.conf.read_text().replace(f"MinJobAge={slurm.min_job_age}", "MinJobAge=60")
    slurm.conf.write_text(conf)
    slurm.run("scontrol", "reconfigure")
    # (--forceall: had it gone on, Snakemake would have submitted both jobs again.)
    refused = _launch(slurm, project, *_smoke_args(slurm), "--forceall", MODEL, limit_s=60)
    assert refused.returncode != 0 and "Building DAG" not in refused.stderr  # no Snakemake
    assert "MinJobAge=60 s" in refused.stderr and "MinJobAge >= 181" in refused.stderr
    assert {job["JobId"] for job in slurm.jobs()} <= submitted
    print(f"real SLURM without accounting: {len(jobs)} sbatch jobs, {elapsed:.1f} s")
