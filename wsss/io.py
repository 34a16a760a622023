"""Atomic file output: nothing half-written is ever visible under its final name.

Every artifact the pipeline writes goes through these helpers, so an interrupted
job leaves either the previous complete file or nothing, and Snakemake's
``--rerun-incomplete`` can resume cleanly. A write that fails because the device
is full or the folder is read-only says so, naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class NoSpaceError(OSError):
    """A write failed because the device (or the user's quota) is full; errno is ENOSPC."""


def write_error(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """The error to report for ``err`` raised while writing ``path``, naming the path and
    what to do; None when ``err`` is not a write failure this module explains.

    - ENOSPC or EDQUOT, and torch's ``unexpected pos`` (how ``torch.save`` reports a
      short write to a full device): :class:`NoSpaceError`, with the free space left;
    - EROFS, EACCES or EPERM: PermissionError naming the folder that cannot be written.
    """
    path = Path(path)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or (isinstance(err, RuntimeError) and "unexpected pos" in str(err)):
        folder = next((p for p in (path.parent, *path.parents) if p.exists()), path.parent)
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        return NoSpaceError(
            errno.ENOSPC,
            f"no space left on the device of {path} ({free} there; the write failed with: "
            f"{err}); free some space or move the output elsewhere, then rerun",
        )
    if isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = err.filename or path.parent
        return PermissionError(
            err.errno,
            f"cannot write {path}: {where} is not writable ({os.strerror(err.errno)}); "
            "make it writable or choose another location",
        )
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file (``.<stem>.<8 random characters><suffix>``, see
    :func:`remove_temporaries`) keeps the final suffix so that libraries choosing a
    format from the extension (PIL, numpy, torch) behave the same. Raises
    :class:`NoSpaceError` or PermissionError naming ``path`` (:func:`write_error`)
    when the write fails for lack of space or permission.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.stem}.", suffix=final.suffix, dir=final.parent
        )
    except OSError as err:
        translated = write_error(err, final)
        if translated is None:
            raise
        raise translated from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        translated = write_error(err, final)
        if isinstance(translated, NoSpaceError):
            raise translated from err
        raise


def remove_temporaries(*paths: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left beside each of ``paths`` when
    its process was killed mid-write; return what was deleted.

    Only for a job that owns ``paths``: a temporary of a concurrent writer of the same
    path would go too (Snakemake runs one job per output at a time).
    """
    removed = []
    for path in map(Path, paths):
        pattern = re.compile(rf"\.{re.escape(path.stem)}\.[a-z0-9_]{{8}}{re.escape(path.suffix)}")
        if not path.parent.is_dir():
            continue
        for candidate in path.parent.iterdir():
            if pattern.fullmatch(candidate.name) and candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically as strict JSON (indented, sorted keys; numpy
    scalars and arrays as plain numbers and lists).

    Raises ValueError naming the path when ``obj`` holds NaN or an infinity: Python's
    ``json`` would write a bare ``NaN``/``Infinity``, which strict parsers (jq, JSON
    Schema, browsers) reject; a value that is undefined must be written as None.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    except ValueError as err:
        raise ValueError(
            f"{path}: not written, the data holds NaN or an infinity ({err}), which is not "
            "JSON; the writer must store an undefined value as null (None)"
        ) from err
    write_text(path, text + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed content of ``path``.

    Raises FileNotFoundError naming ``what`` and the path when it is missing, and
    ValueError with the path, line and column when it is not valid JSON (typically a
    file cut short by a killed writer that did not write atomically, or a full disk).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{what} {path} does not exist; run the stage that writes it"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} {path} is not UTF-8 text ({err}); delete it and rerun the stage that writes it"
        ) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
            f"{err.msg}; truncated?); delete it and rerun the stage that writes it"
        ) from err


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in metric dicts; keep this import local so
    # the module stays importable without numpy.
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it replaces ``path`` on success.

    For directory outputs (one file per image): the folder appears under its
    final name only when every file is written. A previous ``path`` is removed
    only after the new one is complete. Write failures are reported as by
    :func:`atomic_path`.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        translated = write_error(err, final)
        if translated is None:
            raise
        raise translated from err
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; files inside follow the umask
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        translated = write_error(err, final)
        if isinstance(translated, NoSpaceError):
            raise translated from err
        raise
