"""Model files and checkpoints: plain data only (weights_only loads), stable bytes, errors
that name the file."""

import pytest
import torch

from wsss import checkpoint


def _state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return {
        "model": model.state_dict(),
        "config": {"method": {"name": "mctformer_v2", "params": {"entropy_weights": [0.0, 1.0]}}},
        "seed": 0,
        "class_names": ["a", "b"],
    }


def test_saved_files_load_with_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(path, _state())
    state = torch.load(path, weights_only=True)  # what every load in the package uses
    assert state["config"]["method"]["params"]["entropy_weights"] == [0.0, 1.0]
    assert torch.equal(state["model"]["weight"], _state()["model"]["weight"])
    assert checkpoint.load(path)["class_names"] == ["a", "b"]


def test_identical_tensors_give_identical_bytes(tmp_path):
    a, b = tmp_path / "a" / "model.pt", tmp_path / "b" / "other.pt"
    checkpoint.save(a, _state())
    checkpoint.save(b, _state())
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind


def test_unreadable_files_name_the_path(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(path, _state())
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=rf"trained model {path} cannot be read"):
        checkpoint.load(path, what="trained model")
    with pytest.raises(FileNotFoundError, match=rf"model file {tmp_path / 'missing.pt'}"):
        checkpoint.load(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"config": _Evil()}, path)
    with pytest.raises(ValueError, match="objects other than tensors and plain data"):
        checkpoint.load(path)
