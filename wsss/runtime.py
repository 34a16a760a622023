"""Seeding, devices, threads, logging: what every stage sets up the same way."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Execution:
    """How a job runs, not what it computes: the device, DataLoader workers and image caching.

    Set once per process by the CLI (``--device``, ``--workers``, ``--cache-images``) from
    ``train.device``, ``train.num_workers`` and ``*.cache_images`` in ``params.yaml``, which
    the rules pass outside each job's params. Workers and caching do not change results
    (augmentation is seeded per sample and epoch); the device does change floating-point
    results (CPU vs GPU kernels), as does the CPU model, so it is recorded with each run's
    platform rather than made a param: the same params run on a laptop and a cluster.
    """

    device: str = "auto"
    workers: int = 0
    cache_images: bool = True


EXECUTION = Execution()


def set_execution(device: str = "auto", workers: int = 0, cache_images: bool = True) -> None:
    EXECUTION.device, EXECUTION.workers, EXECUTION.cache_images = device, workers, cache_images


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch. Every stochastic step in a stage derives from this."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels where torch has them; CPU runs are then bitwise repeatable.
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str | None = None):
    """A torch device from a name; None: the job's execution device (:class:`Execution`)."""
    import torch

    name = EXECUTION.device if name is None else name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device is 'cuda' (train.device) but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    return torch.device(name)


def native_bf16(device) -> bool:
    """Whether bf16 matmuls run natively on ``device`` (any GPU: assumed; CPU: avx512_bf16 or
    AMX). Without it, CPU autocast emulates bf16, which is slower than fp32."""
    import torch

    if device.type != "cpu":
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def set_threads(threads: int | None) -> None:
    """Limit intra-op threads. Set through the environment too, so that a job that
    imports torch later (or never: evaluation) does not start a full thread pool.

    ``threads`` is the job's CPUs: under torchrun (``LOCAL_WORLD_SIZE`` processes on this
    node, :mod:`wsss.distributed`) each process takes ``threads // LOCAL_WORLD_SIZE``, at
    least 1."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if threads and processes > 1:
        threads = max(1, threads // processes)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def config_digest(config: Any) -> str:
    """Stable short hash of a JSON-able config (to refuse resuming from a different config)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to the rule's log file."""
    logger = logging.getLogger("wsss")
    logger.setLevel(level)
    logger.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def progress(iterable=None, **kwargs):
    """tqdm that stays readable in a rule's log file: when stderr is not a terminal
    it redraws at most every 10 s instead of on every step."""
    from tqdm import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(iterable, **kwargs)


# CPU flags that decide which SIMD kernels oneDNN, MKL, OpenBLAS and ATen run: float
# reductions are summed in a different order (and round differently) per kernel.
KERNEL_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
    "sve",
)


def _cpuinfo() -> tuple[str | None, list[str]]:
    """CPU model name and flags from /proc/cpuinfo (Linux); (None, []) where it is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, []
    model, flags = None, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if model is None and key in ("model name", "Model", "cpu model"):
            model = value.strip()
        elif not flags and key in ("flags", "Features"):
            flags = value.split()
        if model is not None and flags:
            break
    return model, flags


def _version(package: str) -> str | None:
    """Installed version of a distribution without importing it (torch alone takes ~4 s)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def platform_info(device: str | None = None) -> dict[str, Any]:
    """Where a run's numbers were computed: CPU, the ISA features that select kernels,
    library versions, device and threads (a JSON-ready dict for the metrics files).

    Float results of training and CAM extraction depend on these: the same seed and
    params give bitwise-equal outputs only on the same platform. Keys:

    - ``cpu``: the model name (/proc/cpuinfo, else ``platform.processor()``);
      ``machine``: the architecture; ``system``: the OS name (``Linux``) and ``libc``
      (``glibc 2.36``; its libm computes ``exp``/``log``);
    - ``isa``: the flags of :data:`KERNEL_ISA_FLAGS` that the CPU reports;
    - ``torch_cpu_capability``: ``torch.backends.cpu.get_cpu_capability()`` (the ATen
      kernel set, e.g. ``AVX512``), ``torch_threads``: ``torch.get_num_threads()``;
      both ``None`` in a job that never imported torch (evaluation runs on numpy; importing
      torch only to report them would cost seconds a job);
    - ``thread_env``: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` as the job saw them;
    - ``versions``: python, numpy, torch, timm (installed distributions; ``None`` if absent);
    - ``device``: the device string given by the caller (e.g. ``cpu``, ``cuda:0``).

    The record goes into tracked, DVC-cached files, so it holds only what selects the
    numbers. What differs between hosts of the same kind without changing a number (the
    kernel release, e.g. ``6.18.44-fc-v657`` on one VM and ``-fc-v1147`` on the next, and
    the count of CPUs the process may use) is written to the job's log instead: in the
    metrics file it changed the bytes of every ``cam_metrics.json`` between two runs whose
    metrics were identical (issue 28, case 9).
    """
    import platform

    model, flags = _cpuinfo()
    torch = sys.modules.get("torch")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count()
    logging.getLogger("wsss").info("host: %s, %s CPUs available", platform.platform(), cpus)
    libc, libc_version = platform.libc_ver()
    return {
        "cpu": model or platform.processor() or None,
        "machine": platform.machine(),
        "system": platform.system(),
        "libc": f"{libc} {libc_version}" if libc else None,
        "isa": [flag for flag in KERNEL_ISA_FLAGS if flag in set(flags)],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "thread_env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in ("numpy", "torch", "timm")},
        },
        "device": device,
    }
