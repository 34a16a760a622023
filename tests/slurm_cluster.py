"""A throwaway one-node SLURM cluster on localhost, for tests.

`LocalSlurm` writes every configuration, state, spool and log file under one
directory, starts the daemons in the foreground as child processes (munged,
then for accounting mariadbd and slurmdbd, then slurmctld and slurmd), records
each daemon's PID, and on `stop()` terminates exactly those processes. Clients
reach it through the environment `env()` returns (SLURM_CONF points at its
slurm.conf, which also names its munge socket).

Written for Debian's Slurm 22.05 packages (`ensure_packages` installs them with
apt-get when missing). Settings a one-node test cluster needs, found the hard way:
- slurmd 22.05 loads a cgroup plugin even with proctrack/linuxproc and task/none,
  so cgroup.conf names one (`CgroupPlugin=cgroup/v1`) and leaves the mounts alone
  (`CgroupAutomount=no`);
- a GPU generic resource needs a device file in gres.conf, or slurmd registers the
  node without it and slurmctld marks it INVAL; `/dev/null` stands in for a GPU;
- the node declares more CPUs and memory than the host has (the jobs ask for what
  params.yaml says a real cluster gives them), which slurmd only accepts with
  `SlurmdParameters=config_overrides`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Command -> Debian package providing it.
DAEMON_PACKAGES = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
}
ACCOUNTING_PACKAGES = {"slurmdbd": "slurmdbd", "mariadbd": "mariadb-server"}
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin")


def _which(command: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(command, path=path)


def ensure_packages(accounting: bool) -> str | None:
    """Install the Debian packages of a local cluster that are missing.

    Returns None when every command is there (installed now or before), else the
    reason it cannot be (not root, no apt-get, apt-get failed) for a test to skip on.
    The cluster itself needs root too: slurmd starts each job as its user.
    In a container (a policy-rc.d that says no, or no init) the packages start no
    services; on a host whose init starts them on installation, they keep running
    on the default ports and files, and the test neither uses nor stops them: the
    cluster runs its own daemons on its own ports and files.
    """
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (to install its packages, and for slurmd)"
    wanted = dict(DAEMON_PACKAGES, **(ACCOUNTING_PACKAGES if accounting else {}))
    missing = sorted({pkg for cmd, pkg in wanted.items() if _which(cmd) is None})
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"SLURM packages missing ({', '.join(missing)}) and no apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    still = sorted({pkg for cmd, pkg in wanted.items() if _which(cmd) is None})
    return f"installed {missing} but still missing {still}" if still else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalSlurm:
    """One-node cluster: node `NODE` with `cpus` CPUs, `mem_mb` MB and, with `gpu`, one
    fake GPU, in partition `partition` (the default one) and in `gpu_partition` (a second
    partition on the same node, for per-rule partitions). With `accounting`, a MariaDB
    server and slurmdbd keep the job records, and `account` exists with root in it.
    `root` holds every file; Unix socket paths are limited to 108 bytes, so the default
    is a short directory under the system's temporary folder."""

    accounting: bool
    cpus: int = 8
    mem_mb: int = 64000
    gpu: bool = True
    partition: str = "gpu_test"
    gpu_partition: str = "gpu_second"
    account: str = "wsss_test"
    cluster: str = "wsss"
    min_job_age: int = 300
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wsss-slurm-")))
    pids: dict[str, int] = field(default_factory=dict)

    NODE = "wsss-node"

    def __post_init__(self):
        self.root = Path(self.root)
        self._procs: dict[str, subprocess.Popen] = {}
        for sub in ("etc", "bin", "state", "spool", "log", "run", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"

    # -- configuration -------------------------------------------------------------
    def _write_configs(self) -> None:
        host = socket.gethostname().split(".")[0]
        self.ports = {
            "slurmctld": _free_port(),
            "slurmd": _free_port(),
            "slurmdbd": _free_port(),
            "mariadb": _free_port(),
        }
        r = self.root
        lines = [
            f"ClusterName={self.cluster}",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={self.ports['slurmctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            f"PlugStackConfig={r / 'etc' / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            f"MinJobAge={self.min_job_age}",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={self.ports['slurmdbd']}",
                # Connections to slurmdbd take their munge socket from here, not AuthInfo.
                f"AccountingStoragePass={self.munge_socket}",
                # Record GPU allocations in each job's TRES (scontrol, sacct), not only
                # requests; slurmctld refuses this TRES without slurmdbd.
                "AccountingStorageTRES=gres/gpu",
            ]
        else:
            lines.append("AccountingStorageType=accounting_storage/none")
        gres = " Gres=gpu:1" if self.gpu else ""
        lines += [
            f"NodeName={self.NODE} NodeAddr=127.0.0.1 NodeHostname={host} "
            f"CPUs={self.cpus} RealMemory={self.mem_mb}{gres} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.NODE} Default=YES "
            "MaxTime=INFINITE State=UP",
            f"PartitionName={self.gpu_partition} Nodes={self.NODE} MaxTime=INFINITE State=UP",
        ]
        etc = r / "etc"
        self.conf.write_text("\n".join(lines) + "\n")
        (etc / "plugstack.conf").write_text("")
        (etc / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")
        if self.gpu:  # a GPU needs a device file; /dev/null stands in
            (etc / "gres.conf").write_text(f"NodeName={self.NODE} Name=gpu File=/dev/null\n")
        if self.accounting:
            dbd = etc / "slurmdbd.conf"
            dbd.write_text(
                "\n".join(
                    [
                        "AuthType=auth/munge",
                        f"AuthInfo=socket={self.munge_socket}",
                        "DbdHost=localhost",
                        "DbdAddr=127.0.0.1",
                        f"DbdPort={self.ports['slurmdbd']}",
                        "SlurmUser=root",
                        f"LogFile={r / 'log' / 'slurmdbd.log'}",
                        f"PidFile={r / 'run' / 'slurmdbd.pid'}",
                        "StorageType=accounting_storage/mysql",
                        "StorageHost=127.0.0.1",
                        f"StoragePort={self.ports['mariadb']}",
                        "StorageUser=slurm",
                        "StoragePass=wsss-test",
                        "StorageLoc=slurm_acct_db",
                    ]
                )
                + "\n"
            )
            dbd.chmod(0o600)  # slurmdbd refuses a config others can read (it holds a password)

        # Inside a job, the executor plugin's job step (snakemake-executor-plugin-slurm-
        # jobstep) calls srun with every SLURM_* variable but the job's identity removed,
        # SLURM_CONF included, so srun looks for /etc/slurm/slurm.conf, where a real
        # cluster keeps it. This cluster keeps its files in its own directory; an srun
        # first on the jobs' PATH puts SLURM_CONF back and runs the real one.
        srun = self.root / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_which("srun")} "$@"\n')
        srun.chmod(0o755)

    def env(self) -> dict[str, str]:
        """The environment for client commands (sbatch, squeue, ...) and Snakemake."""
        path = os.pathsep.join([str(self.root / "bin"), os.environ.get("PATH", ""), *SBIN_DIRS])
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=path)

    # -- processes -----------------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> None:
        log = self.root / "log" / f"{name}.out"  # what it prints before its log file opens
        with open(log, "w") as out:
            proc = subprocess.Popen(
                argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT, cwd=self.root
            )
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _wait_for(self, what: str, check, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                        + self.logs()
                    )
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}:\n" + self.logs())

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a client command against this cluster."""
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        return result

    def _ok(self, *argv: str) -> bool:
        try:
            return self.run(*argv, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.root / "munge").chmod(0o700)
        self._start(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",  # the socket's folder is private (0700), which munged refuses
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'run' / 'munged.pid'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
            ],
        )
        self._wait_for("the munge socket", self.munge_socket.exists, timeout=20)

    def _start_database(self) -> None:
        data, sock = self.root / "mysql", self.root / "run" / "mysqld.sock"
        install = subprocess.run(
            [
                _which("mariadb-install-db") or _which("mysql_install_db"),
                "--no-defaults",
                f"--datadir={data}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
                "--user=root",
            ],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}{install.stderr}")
        self._start(
            "mariadbd",
            [
                _which("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={self.ports['mariadb']}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
                f"--log-error={self.root / 'log' / 'mariadbd.log'}",
                "--user=root",
            ],
        )
        client = [_which("mariadb") or _which("mysql"), "--no-defaults", f"--socket={sock}"]
        client += ["--user=root"]  # root's socket authentication: no password
        self._wait_for("mariadbd", lambda: self._ok(*client, "-e", "SELECT 1"))
        sql = (
            "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'wsss-test';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        self.run(*client, "-e", sql)

    def start(self) -> LocalSlurm:
        """Start the daemons; returns self once the node is idle and (with accounting)
        the account exists. Raises RuntimeError/TimeoutError with the daemons' logs."""
        self._write_configs()
        try:
            self._start_munge()
            if self.accounting:
                self._start_database()
                self._start("slurmdbd", [_which("slurmdbd"), "-D"])
                self._wait_for("slurmdbd", lambda: self._ok("sacctmgr", "-n", "list", "cluster"))
                # slurmctld would add its cluster on first contact; adding it first lets the
                # account and the user association be created before slurmctld starts.
                self.run("sacctmgr", "-i", "add", "cluster", self.cluster)
                self.run(
                    "sacctmgr", "-i", "add", "account", self.account, f"Cluster={self.cluster}"
                )
                self.run("sacctmgr", "-i", "add", "user", "root", f"Account={self.account}")
            self._start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait_for("slurmctld", lambda: self._ok("scontrol", "ping"))
            self._start("slurmd", [_which("slurmd"), "-D", "-N", self.NODE, "-f", str(self.conf)])
            self._wait_for("the node to be idle", self._node_idle)
        except BaseException:
            self.stop()
            raise
        return self

    def _node_idle(self) -> bool:
        result = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
        # one line per partition the node is in
        states = result.stdout.split()
        return result.returncode == 0 and bool(states) and set(states) == {"idle"}

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel the jobs this cluster still holds (slurmstepd and the job's processes
        would outlive slurmd), then terminate the daemons this object started (SIGTERM,
        then SIGKILL), newest first."""
        if self.running().get("slurmctld"):
            try:
                queued = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
                if queued:
                    self.run("scancel", *queued, check=False)
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline and self._active_jobs():
                        time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass  # stop the daemons regardless
        for name in reversed(list(self._procs)):
            proc = self._procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _active_jobs(self) -> list[str]:
        states = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"
        return self.run("squeue", "-h", "-t", states, "-o", "%i", check=False).stdout.split()

    def remove(self) -> None:
        """Delete the cluster's directory (configuration, state, logs); after stop()."""
        if any(self.running().values()):
            raise RuntimeError(f"daemons still running: {self.running()}")
        shutil.rmtree(self.root)

    def running(self) -> dict[str, bool]:
        """{daemon: still running} for every daemon started."""
        return {name: proc.poll() is None for name, proc in self._procs.items()}

    def logs(self, tail: int = 3000) -> str:
        """The last characters of every daemon log, for error messages."""
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace")[-tail:]
            parts.append(f"--- {log.name}\n{text}")
        return "\n".join(parts)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld holds (finished ones for MinJobAge seconds), each as
        {field: value} from `scontrol show job -o` (values without spaces only)."""
        out = self.run("scontrol", "show", "job", "-o").stdout
        return [
            dict(item.split("=", 1) for item in line.split() if "=" in item)
            for line in out.splitlines()
            if line.startswith("JobId=")
        ]
