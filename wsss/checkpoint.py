"""Saving and loading model files and resumable training checkpoints, for the
classifier (``model.pt``, ``checkpoint.pt``) and the stage-2 segmenter.

Everything stored is tensors and plain JSON-compatible data (the config is the
job's resolved ``--config``), so every load uses ``torch.load(...,
weights_only=True)``: a file someone sent cannot run code. Files are written
atomically from an in-memory archive, so identical tensors give identical bytes
(``torch.save`` to a path stores that path's random temporary name inside).

A checkpoint carries every state the rest of training depends on (weights,
optimizer moments, RNG states; the learning rate is a function of the step), so a
run killed at any point and rerun gives the same bytes as an uninterrupted one. A
checkpoint that cannot be read is renamed out of the way and training restarts.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from wsss.io import atomic_path
from wsss.models.pretrained import torch_load_plain

log = logging.getLogger("wsss")


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, with bytes that depend only on ``state``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load(path: str | Path, device: torch.device | str = "cpu", what: str = "model file") -> dict:
    """A state saved by :func:`save`, loaded with ``weights_only=True`` (numpy scalars
    and dtypes, plain data that other tools store as metadata, are accepted).

    Raises FileNotFoundError (naming ``what`` and the path) when it is missing,
    and ValueError naming the path when it cannot be read (truncated, not a
    torch archive, or holding pickled objects other than tensors and plain data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch_load_plain(path, map_location=device)
    except (RuntimeError, OSError, EOFError, ValueError, TypeError) as err:
        raise ValueError(
            f"{what} {path} cannot be read ({type(err).__name__}: {err}); delete it and rerun "
            "the stage that writes it"
        ) from err
    except Exception as err:  # pickle.UnpicklingError: not plain data
        raise ValueError(
            f"{what} {path} holds objects other than tensors and plain data, which are not "
            f"loaded ({err}); regenerate it with this version of wsss"
        ) from err


RESUME_KEYS = ("digest", "model", "optimizer", "rng", "epoch", "history")


def rng_state(shuffle: torch.Generator | None = None) -> dict[str, Any]:
    """Every random-number state a training epoch draws from, as tensors.

    ``torch``: the global CPU generator (drop path, dropout, ``torch.rand`` in a
    method); ``cuda``: each CUDA device's generator, when CUDA is in use;
    ``shuffle``: the DataLoader's own generator, which draws the sample order
    and the workers' base seed. Augmentation needs nothing here: it draws from
    a generator seeded by (seed, epoch, image index) for each sample.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if shuffle is not None:
        state["shuffle"] = shuffle.get_state()
    return state


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved (KeyError when ``shuffle`` is given but
    the state has none). The states may come loaded onto the training device
    (``map_location``); generators take CPU byte tensors."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if devices == len(state["cuda"]):
            torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
        else:  # resumed on another machine: it cannot continue bit for bit anyway
            log.warning(
                "the checkpoint holds the RNG states of %d CUDA devices, this machine has %d: "
                "the resumed run will not match an uninterrupted one bit for bit",
                len(state["cuda"]),
                devices,
            )
    if shuffle is not None:
        shuffle.set_state(state["shuffle"].cpu())


def save_checkpoint(
    path: Path,
    digest: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    shuffle: torch.Generator | None = None,
) -> None:
    """The state a rerun resumes from after ``epoch`` finished epochs, written atomically:
    weights, optimizer moments and every RNG state (:func:`rng_state`), so that the
    rerun continues exactly as the interrupted run would have."""
    save(
        path,
        {
            "digest": digest,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(shuffle),
            "epoch": epoch,
            "history": history,
        },
    )


def set_aside(path: Path) -> Path:
    """Rename an unusable file to ``<name>.corrupt-<n>`` (the first free n >= 1), out of
    the way of the next run but kept for inspection; return the new path."""
    n = 1
    while (target := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(path, target)
    return target


def resume_checkpoint(
    path: Path,
    digest: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    shuffle: torch.Generator | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """(epochs done, history) from the checkpoint at ``path``, restoring model, optimizer
    and RNG states (``shuffle``: the DataLoader's generator, when it is not reseeded per
    epoch); (0, []) to start from scratch.

    Starts from scratch, leaving ``model`` and ``optimizer`` untouched, when there is no
    checkpoint; when it was written by another configuration (``digest``) or another
    version of this code (missing states, other parameter shapes), logging why (the next
    epoch's checkpoint replaces it); and when it cannot be read (truncated, corrupt),
    logging a warning with its path after renaming it with :func:`set_aside`.
    """
    if not path.exists():
        return 0, []
    try:
        state = load(path, device, what="training checkpoint")
    except ValueError as err:
        moved = set_aside(path)
        log.warning("%s; moved it to %s and training from scratch", err, moved)
        return 0, []
    problem = _resume_problem(state, digest, model, shuffle)
    if problem:
        log.warning("not resuming from %s: %s; training from scratch", path, problem)
        return 0, []
    optimizer.load_state_dict(state["optimizer"])  # checks the groups before changing anything
    model.load_state_dict(state["model"])
    set_rng_state(state["rng"], shuffle)
    log.info("resuming %s from epoch %d", path, state["epoch"])
    return state["epoch"], state["history"]


def _resume_problem(
    state: Any, digest: str, model: torch.nn.Module, shuffle: torch.Generator | None
) -> str | None:
    """Why ``state`` cannot be resumed into ``model`` exactly, or None."""
    if not isinstance(state, dict) or state.get("digest") != digest:
        return "it was written by a different configuration"
    missing = [key for key in RESUME_KEYS if key not in state]
    if shuffle is not None and "shuffle" not in state.get("rng", {}):
        missing.append("rng.shuffle")
    if missing:
        return f"it lacks {', '.join(missing)} (written by another version of wsss)"
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in state["model"].items()}
    if saved != expected:
        differ = sorted(set(saved) ^ set(expected)) or sorted(
            name for name in saved if saved[name] != expected[name]
        )
        return f"its model parameters differ from this model's ({', '.join(differ[:3])})"
    return None
