"""Model files and checkpoints: plain data only (weights_only loads), stable bytes, errors
that name the file."""

import errno
import logging
from pathlib import Path

import pytest
import torch

from wsss import checkpoint
from wsss.io import NoSpaceError


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


def test_numpy_scalar_metadata_loads(tmp_path):
    """Other tools store metadata such as an epoch or a score as numpy scalars: plain
    data, loaded (a raw UnpicklingError traceback before)."""
    import numpy as np

    path = tmp_path / "model.pt"
    torch.save({**_state(), "epoch": np.int64(3), "best_map": np.float32(0.5)}, path)
    state = checkpoint.load(path)
    assert state["epoch"] == 3 and state["best_map"] == np.float32(0.5)


# ---------------------------------------------------------------- resumable checkpoints


def _training_state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer


def _step(model, optimizer, shuffle):
    """One training step that draws from the global RNG (dropout) and the shuffle generator."""
    order = torch.randperm(8, generator=shuffle)
    loss = model(torch.arange(24.0).reshape(8, 3)[order]).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.fixture
def wsss_log(caplog):
    """The package logger's records (it does not propagate once the CLI set it up)."""
    logger = logging.getLogger("wsss")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="wsss")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_a_resumed_checkpoint_continues_every_random_stream(tmp_path, wsss_log):
    path = tmp_path / "checkpoint.pt"
    model, optimizer = _training_state()
    shuffle = torch.Generator().manual_seed(7)
    _step(model, optimizer, shuffle)
    checkpoint.save_checkpoint(path, "d", model, optimizer, 1, [{"epoch": 1}], shuffle)
    _step(model, optimizer, shuffle)  # what an uninterrupted run does next
    expected = [p.detach().clone() for p in model.parameters()]

    resumed, resumed_optimizer = _training_state(seed=1)  # other weights, other RNG state
    resumed_shuffle = torch.Generator().manual_seed(0)
    epoch, history = checkpoint.resume_checkpoint(
        path, "d", resumed, resumed_optimizer, "cpu", resumed_shuffle
    )
    assert (epoch, history) == (1, [{"epoch": 1}])
    _step(resumed, resumed_optimizer, resumed_shuffle)
    for a, b in zip(resumed.parameters(), expected, strict=True):
        assert torch.equal(a, b)
    assert f"resuming {path} from epoch 1" in wsss_log.text
    assert set(torch.load(path, weights_only=True)["rng"]) >= {"torch", "shuffle"}


def test_an_unreadable_checkpoint_is_set_aside_and_training_starts_over(tmp_path, wsss_log):
    path = tmp_path / "checkpoint.pt"
    model, optimizer = _training_state()
    before = [p.detach().clone() for p in model.parameters()]
    for n in (1, 2):
        checkpoint.save_checkpoint(path, "d", model, optimizer, 3, [])
        damaged = path.read_bytes()[:-50]  # cut short
        path.write_bytes(damaged)
        assert checkpoint.resume_checkpoint(path, "d", model, optimizer, "cpu") == (0, [])
        assert not path.exists()
        assert (tmp_path / f"checkpoint.pt.corrupt-{n}").read_bytes() == damaged
        assert f"training checkpoint {path} cannot be read" in wsss_log.text
        assert f"moved it to {tmp_path / f'checkpoint.pt.corrupt-{n}'}" in wsss_log.text
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("change", ["digest", "no rng", "no shuffle", "shapes"])
def test_a_checkpoint_it_cannot_continue_exactly_is_not_resumed(tmp_path, wsss_log, change):
    path = tmp_path / "checkpoint.pt"
    model, optimizer = _training_state()
    shuffle = torch.Generator().manual_seed(0)
    checkpoint.save_checkpoint(path, "d", model, optimizer, 2, [], shuffle)
    state = torch.load(path, weights_only=True)
    if change == "no rng":  # written before the RNG states were saved
        del state["rng"]
    elif change == "no shuffle":
        del state["rng"]["shuffle"]
    elif change == "shapes":
        state["model"]["0.weight"] = torch.zeros(5, 3)
    torch.save(state, path)
    other, other_optimizer = _training_state(seed=1)
    before = [p.detach().clone() for p in other.parameters()]
    digest = "other" if change == "digest" else "d"
    result = checkpoint.resume_checkpoint(path, digest, other, other_optimizer, "cpu", shuffle)
    assert result == (0, [])
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), before, strict=True))
    assert path.exists()  # readable: the next epoch's checkpoint replaces it
    reason = {
        "digest": "different configuration",
        "no rng": "lacks rng",
        "no shuffle": "lacks rng.shuffle",
        "shapes": "parameters differ from this model's (0.weight)",
    }[change]
    assert f"not resuming from {path}: it" in wsss_log.text and reason in wsss_log.text


def test_a_full_disk_is_reported_as_such(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    checkpoint.save(path, _state())
    before = path.read_bytes()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(NoSpaceError, match=rf"no space left on the device of {path} \(") as err:
        checkpoint.save(path, {"model": {"w": torch.zeros(1000)}})
    assert err.value.errno == errno.ENOSPC and "free some space" in str(err.value)
    assert path.read_bytes() == before  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left
