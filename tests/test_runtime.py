"""Platform provenance recorded beside each run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.runtime import KERNEL_ISA_FLAGS, _cpuinfo, platform_info


def test_platform_info_names_cpu_kernels_versions_and_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    info = platform_info(device="cpu")
    json.dumps(info)  # JSON-ready
    assert info["device"] == "cpu"
    assert info["versions"]["numpy"] == np.__version__
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # torch is imported here (conftest), so its kernel set and thread count are read
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["thread_env"]["OMP_NUM_THREADS"] == "3"
    assert set(info["isa"]) <= set(KERNEL_ISA_FLAGS)
    assert info["machine"] and info["system"]


def test_isa_flags_come_from_cpuinfo():
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this OS")
    model, flags = _cpuinfo()
    info = platform_info()
    assert info["isa"] == [f for f in KERNEL_ISA_FLAGS if f in flags]
    if model is not None:
        assert info["cpu"] == model


def test_the_recorded_platform_is_the_same_on_two_hosts_of_one_kind(monkeypatch, caplog):
    """Issue 28, case 9: results/runs changed bytes between runs with identical metrics.
    The platform record sits in tracked files (cam_metrics.json, train_metrics.json); the
    kernel release (it differs from VM to VM of one kind) and the CPUs available go to the
    job's log instead, so they no longer change a tracked file."""
    import logging
    import os
    import platform

    records = []
    for release, cpus in (("6.18.44-fc-v657", {0, 1}), ("6.18.44-fc-v1147", {0, 1, 2, 3})):
        monkeypatch.setattr(platform, "platform", lambda *a, r=release, **k: f"Linux-{r}-x86_64")
        monkeypatch.setattr(platform, "release", lambda r=release: r)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cpus: c, raising=False)
        with caplog.at_level(logging.INFO, logger="wsss"):
            records.append(json.dumps(platform_info(device="cpu"), sort_keys=True))
        assert f"host: Linux-{release}-x86_64, {len(cpus)} CPUs available" in caplog.text
    assert records[0] == records[1]
    assert "fc-v" not in records[0]
    assert json.loads(records[0])["system"] == platform.system()
