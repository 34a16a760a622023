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
    assert info["cpus_available"] >= 1


def test_isa_flags_come_from_cpuinfo():
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this OS")
    model, flags = _cpuinfo()
    info = platform_info()
    assert info["isa"] == [f for f in KERNEL_ISA_FLAGS if f in flags]
    if model is not None:
        assert info["cpu"] == model
