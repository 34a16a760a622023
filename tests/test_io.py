import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from wsss.io import atomic_path, read_json, write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temporary left behind


def test_atomic_write_uses_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    from wsss.io import atomic_directory

    final = tmp_path / "labels"
    final.mkdir()
    (final / "old.png").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "new.png").write_text("half")
            raise RuntimeError("interrupted")
    assert [p.name for p in final.iterdir()] == ["old.png"]  # the old folder survives
    old_umask = os.umask(0o022)
    try:
        with atomic_directory(final) as tmp:
            assert tmp.parent == final.parent and not list(tmp.iterdir())
            (tmp / "new.png").write_text("new")
            assert not (final / "new.png").exists()  # nothing visible before the end
    finally:
        os.umask(old_umask)
    assert [p.name for p in final.iterdir()] == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]  # no temporary left
    assert stat.S_IMODE(final.stat().st_mode) == 0o755  # the umask's mode, not mkdtemp's 0700


def test_remove_temporaries_takes_only_what_atomic_path_leaves(tmp_path):
    from wsss.io import remove_temporaries

    left = tmp_path / ".model.k3_x9a0b.pt"  # mkstemp: 8 characters of [a-z0-9_]
    keep = [".model.pt.bak", ".other.k3_x9a0b.pt", ".model.k3_x9a0b.json", "model.pt"]
    for name in [left.name, *keep]:
        (tmp_path / name).write_text("x")
    assert remove_temporaries(tmp_path / "model.pt", tmp_path / "missing" / "a.pt") == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# ---------------------------------------------------------------- errors that name the file


def test_read_json_names_a_missing_or_truncated_file(tmp_path):
    path = tmp_path / "cam_metrics.json"
    write_json(path, {"cam": {"miou": 0.5, "threshold": 0.3}})
    path.write_text(path.read_text()[:20])  # cut short
    with pytest.raises(ValueError, match=rf"metrics {path} is not valid JSON \(line 3, column"):
        read_json(path, what="metrics")
    with pytest.raises(ValueError, match="delete it and rerun the stage that writes it"):
        read_json(path)
    with pytest.raises(FileNotFoundError, match=rf"JSON file {tmp_path / 'none.json'} does not"):
        read_json(tmp_path / "none.json")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_reported_with_the_path(tmp_path, monkeypatch):
    from wsss.io import NoSpaceError

    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    monkeypatch.setattr(Path, "write_text", _no_space)
    with pytest.raises(NoSpaceError, match=rf"no space left on the device of {path} \(.* free"):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert read_json(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == [path.name]
    # torch.save straight to a file reports a short write on a full device this way
    with pytest.raises(NoSpaceError, match=rf"no space left on the device of {path}"):
        with atomic_path(path):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . unexpected pos 77952 vs 77840"
            )
    with pytest.raises(RuntimeError, match="other"):  # other errors pass unchanged
        with atomic_path(path):
            raise RuntimeError("other")


def test_a_full_disk_while_writing_a_folder_is_reported(tmp_path):
    from wsss.io import NoSpaceError, atomic_directory

    with pytest.raises(
        NoSpaceError, match=rf"no space left on the device of {tmp_path / 'labels'}"
    ):
        with atomic_directory(tmp_path / "labels"):
            _no_space()
    assert not list(tmp_path.iterdir())


def test_a_read_only_folder_is_named(tmp_path, monkeypatch):
    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(
        PermissionError, match=rf"cannot write {tmp_path / 'a.json'}: {tmp_path} is"
    ):
        write_json(tmp_path / "a.json", {})


def test_generating_a_dataset_in_a_read_only_place_names_the_root(tmp_path, monkeypatch):
    from wsss.data.datasets import prepare_dataset

    root = tmp_path / "ro" / "synthetic"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    config = {"kind": "synthetic", "name": "smoke", "root": str(root), "train_split": "train"}
    with pytest.raises(PermissionError) as err:
        prepare_dataset({**config, "generator": {"num_train": 2, "num_val": 1}}, progress=False)
    message = str(err.value)
    assert f"cannot generate dataset 'smoke' at {root} (datasets.smoke.root)" in message
    assert "Read-only file system" in message and "set datasets.smoke.root to a writable" in message
    assert "Errno 30" not in message.split("]", 1)[1]  # said in words, not as a raw errno


def test_unreadable_images_and_masks_say_what_to_do(tmp_path):
    from conftest import tiny_synthetic_dataset

    from wsss.data.datasets import open_dataset

    dataset = open_dataset(tiny_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1))
    layout = dataset.layout
    image, mask = layout.image_path("train_00000"), layout.mask_path("train_00000")
    image.write_bytes(image.read_bytes()[:60])
    mask.write_bytes(mask.read_bytes()[:60])
    advice = "delete its root and rerun prepare-data"
    with pytest.raises(ValueError, match=rf"cannot read image {image}: .*{advice}"):
        layout.load_image("train_00000")
    with pytest.raises(ValueError, match=rf"cannot read label PNG {mask}: .*{advice}"):
        layout.load_mask("train_00000")
    mask.unlink()
    with pytest.raises(FileNotFoundError, match=rf"mask {mask} does not exist; .*{advice}"):
        layout.load_mask("train_00000")


def test_write_json_refuses_nan_naming_the_file(tmp_path):
    """A bare NaN is not JSON (strict parsers reject it): the writer refuses it instead of
    writing a file that only Python reads back."""
    import numpy as np

    path = tmp_path / "metrics.json"
    for bad in (float("nan"), float("inf"), np.float64("nan")):
        with pytest.raises(ValueError, match=r"metrics\.json.*NaN or an infinity.*null"):
            write_json(path, {"precision": bad})
        assert not path.exists()
    write_json(path, {"precision": None, "miou": np.float32(0.5)})
    assert read_json(path) == {"precision": None, "miou": 0.5}
