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


def set_threads(threads: int | None) -> None:
    """Limit intra-op threads. Set through the environment too, so that a job that
    imports torch later (or never: evaluation) does not start a full thread pool."""
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
