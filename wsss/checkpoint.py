"""Saving and loading model files and resumable training checkpoints, for the
classifier (``model.pt``, ``checkpoint.pt``) and the stage-2 segmenter.

Everything stored is tensors and plain JSON-compatible data (the config is the
job's resolved ``--config``), so every load uses ``torch.load(...,
weights_only=True)``: a file someone sent cannot run code. Files are written
atomically from an in-memory archive, so identical tensors give identical bytes
(``torch.save`` to a path stores that path's random temporary name inside).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from wsss.io import atomic_path

log = logging.getLogger("wsss")


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, with bytes that depend only on ``state``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load(path: str | Path, device: torch.device | str = "cpu", what: str = "model file") -> dict:
    """A state saved by :func:`save`, loaded with ``weights_only=True``.

    Raises FileNotFoundError (naming ``what`` and the path) when it is missing,
    and ValueError naming the path when it cannot be read (truncated, not a
    torch archive, or holding pickled objects other than tensors and plain data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=device, weights_only=True)
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


def save_checkpoint(
    path: Path,
    digest: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
) -> None:
    """The state a rerun resumes from after ``epoch`` finished epochs, written atomically."""
    save(
        path,
        {
            "digest": digest,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": history,
        },
    )


def resume_checkpoint(
    path: Path,
    digest: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
) -> tuple[int, list[dict[str, Any]]]:
    """(epochs done, history) from ``path`` when it was written by the same configuration
    (``digest``), restoring model, optimizer and RNG; (0, []) otherwise."""
    if not path.exists():
        return 0, []
    state = load(path, device, what="training checkpoint")
    if state.get("digest") != digest:
        log.info("ignoring %s: written by a different configuration", path)
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming %s from epoch %d", path, state["epoch"])
    return state["epoch"], state["history"]
