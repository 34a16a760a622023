"""The CAM artifact: streamed writing, lazy reading, shard indexes, old-format refusal."""

import json
import zipfile

import numpy as np
import pytest

from wsss.cam_store import (
    CamFile,
    CamReader,
    CamWriter,
    plan_shards,
    shard_ids,
    write_shard_index,
)


def _records(rng):
    return {
        "img_b": (np.array([4]), rng.integers(0, 256, (1, 3, 4), dtype=np.uint8)),
        "img_a": (np.array([1, 3]), rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)),
        "img_c": (np.array([], dtype=int), np.zeros((0, 2, 2), np.uint8)),
    }


def _write(path, records, num_classes=4):
    with CamWriter(path, num_classes) as writer:
        for image_id, (classes, cams) in records.items():
            writer.add(image_id, classes, cams)


def test_roundtrip_in_id_order(tmp_path):
    records = _records(np.random.default_rng(0))
    path = tmp_path / "cams.npz"
    _write(path, records)
    reader = CamReader(path)
    assert reader.ids == ["img_a", "img_b", "img_c"] and len(reader) == 3
    assert [r.image_id for r in reader] == ["img_a", "img_b", "img_c"]
    for image_id, (classes, cams) in records.items():
        record = reader.get(image_id)
        assert np.array_equal(record.cams, cams) and record.cams.dtype == np.uint8
        assert record.classes.tolist() == classes.tolist()
    assert reader.get("img_c").shape == (2, 2)
    with pytest.raises(KeyError, match="no CAM for image 'nope'"):
        reader.get("nope")
    # numpy opens it too: one .npy member per image plus the index
    with np.load(path) as archive:
        assert archive["ids"].tolist() == ["img_a", "img_b", "img_c"]
        assert np.array_equal(archive["cams/img_a"], records["img_a"][1])


def test_same_cams_same_bytes(tmp_path):
    records = _records(np.random.default_rng(0))
    _write(tmp_path / "a.npz", records)
    _write(tmp_path / "b.npz", records)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_reading_is_lazy(tmp_path, monkeypatch):
    """Opening reads only the index; a record reads only its own member."""
    records = _records(np.random.default_rng(0))
    path = tmp_path / "cams.npz"
    _write(path, records)
    opened = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    reader = CamReader(path)
    assert not [n for n in opened if n.startswith("cams/")]
    opened.clear()
    reader.get("img_b")
    assert opened == ["cams/img_b.npy"]


def test_writer_errors_and_atomicity(tmp_path):
    path = tmp_path / "cams.npz"
    with CamWriter(path, 4) as writer:
        writer.add("x", np.array([1]), np.zeros((1, 2, 2), np.uint8))
        with pytest.raises(ValueError, match="class labels must be in 1..4"):
            writer.add("bad", np.array([5]), np.zeros((1, 2, 2), np.uint8))
        with pytest.raises(ValueError, match="expected uint8 k x H x W"):
            writer.add("bad", np.array([1]), np.zeros((1, 2, 2), np.float32))
        with pytest.raises(ValueError, match="'x' added twice"):
            writer.add("x", np.array([2]), np.zeros((1, 2, 2), np.uint8))
    before = path.read_bytes()
    # A failure mid-split leaves the previous file and no temporary file.
    with pytest.raises(RuntimeError, match="boom"), CamWriter(path, 4) as writer:
        writer.add("y", np.array([1]), np.zeros((1, 2, 2), np.uint8))
        raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cams.npz"]


def test_unreadable_files_are_named_with_the_fix(tmp_path):
    path = tmp_path / "cams.npz"
    _write(path, _records(np.random.default_rng(0)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        ValueError, match=r"not a readable CAM file.*make run. \(or .snakemake.\) extracts it again"
    ):
        CamReader(path)
    with pytest.raises(FileNotFoundError, match="run the cams stage"):
        CamReader(tmp_path / "missing.npz")


def test_version_1_file_is_refused_with_how_to_regenerate(tmp_path):
    """The old layout (one data array for the split) is not loaded whole any more."""
    old = tmp_path / "old.npz"
    with open(old, "wb") as f:
        np.savez_compressed(
            f,
            version=np.array(1),
            num_classes=np.array(4),
            ids=np.array(["a"]),
            shapes=np.array([[2, 2]], np.int32),
            class_offsets=np.array([0, 1]),
            classes=np.array([1], np.int16),
            data=np.zeros(4, np.uint8),
        )
    with pytest.raises(ValueError, match=r"version-1 CAM file.*delete it and rerun: .make run."):
        CamReader(old)


def test_shard_index_reads_as_one_split(tmp_path):
    rng = np.random.default_rng(1)
    records = _records(rng)
    items = list(records.items())
    shard_dir = tmp_path / "train.shards"
    _write(shard_dir / "0.npz", dict(items[:2]))
    _write(shard_dir / "1.npz", dict(items[2:]))
    index = write_shard_index(tmp_path / "train.json", [shard_dir / "0.npz", shard_dir / "1.npz"])
    assert index["images"] == 3 and [s["file"] for s in index["shards"]] == [
        "train.shards/0.npz",
        "train.shards/1.npz",
    ]
    reader = CamReader(tmp_path / "train.json")
    assert reader.ids == ["img_a", "img_b", "img_c"] and len(reader.parts) == 2
    assert [len(p) for p in reader.parts] == [2, 1]
    assert sorted(r.image_id for r in reader) == reader.ids
    assert np.array_equal(reader.get("img_c").cams, records["img_c"][1])
    # moved together with its shards, the index still reads (paths are relative)
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "train.json").rename(moved / "train.json")
    shard_dir.rename(moved / "train.shards")
    assert len(CamReader(moved / "train.json")) == 3


def test_shard_index_errors(tmp_path):
    records = _records(np.random.default_rng(2))
    _write(tmp_path / "0.npz", records)
    _write(tmp_path / "1.npz", {"img_a": records["img_a"]})
    with pytest.raises(ValueError, match="'img_a' is in two shards"):
        write_shard_index(tmp_path / "index.json", [tmp_path / "0.npz", tmp_path / "1.npz"])
    assert not (tmp_path / "index.json").exists()
    _write(tmp_path / "2.npz", {"other": records["img_b"]}, num_classes=5)
    with pytest.raises(ValueError, match="has 5 classes"):
        write_shard_index(tmp_path / "index.json", [tmp_path / "0.npz", tmp_path / "2.npz"])
    # an index whose shard was rewritten with other images
    write_shard_index(tmp_path / "index.json", [tmp_path / "1.npz"])
    _write(tmp_path / "1.npz", records)
    with pytest.raises(ValueError, match="holds 3 images, the index says 1"):
        CamReader(tmp_path / "index.json")
    (tmp_path / "junk.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="neither a CAM file nor a shard index"):
        CamReader(tmp_path / "junk.json")


def test_cam_file_checks_member_against_index(tmp_path):
    path = tmp_path / "cams.npz"
    _write(path, _records(np.random.default_rng(0)))
    part = CamFile(path)
    part.shapes[0] = (9, 9)  # as if the index disagreed with the stored block
    with pytest.raises(ValueError, match="its index says"):
        part.record(0)


def test_shard_plan_cuts_the_split_in_order():
    ids = [f"i{n}" for n in range(10)]
    plan = plan_shards(ids, 4)
    assert (plan["images"], plan["shard_size"], plan["shards"]) == (10, 4, 3)
    assert [shard_ids(ids, i, plan, "s") for i in range(3)] == [ids[:4], ids[4:8], ids[8:]]
    assert plan_shards(ids, 10)["shards"] == 1 and plan_shards(ids, 0)["shards"] == 1
    assert shard_ids(ids, 0, plan_shards(ids, 0), "s") == ids
    assert plan_shards([], 4)["shards"] == 1
    with pytest.raises(
        ValueError, match=r"not the image list its shard plan was made from \(10 images\)"
    ):
        shard_ids(ids[::-1], 0, plan, "split 'train'")
    with pytest.raises(ValueError, match="shard 3 does not exist"):
        shard_ids(ids, 3, plan, "s")
