import os
import stat

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
