"""AReAM's entropy weights as a pipeline step: `wsss entropy-weights`, then `wsss train
--upstream entropy_weights=FILE` for a method whose params say `entropy_weights: baseline`."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import tiny_synthetic_dataset, tiny_train_config

from wsss.cli import main
from wsss.data.datasets import prepare_dataset
from wsss.methods.aream import AReAM, load_entropy_weights
from wsss.methods.entropy_weights import ResizedImages, baseline_entropy_weights
from wsss.runtime import config_digest
from wsss.stages.train import with_upstream

DEPTH = 3


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("entropy") / "data"
    return tiny_synthetic_dataset(root, num_train=12, num_val=4, image_size=32)


def _train_config(dataset_config, tiny_model_config, method, params=None):
    return tiny_train_config(
        dataset_config,
        method,
        params,
        tiny_model_config,
        epochs=1,
        warmup_epochs=0,
        num_workers=0,
        device="cpu",
        cache_images=True,
    )


def _aream_params(entropy_weights):
    return {
        "cls_epochs": 0,
        "layer_index": 2,
        "cam_flip": False,
        "entropy_weights": entropy_weights,
    }


@pytest.fixture(scope="module")
def baseline(dataset_config, tmp_path_factory):
    """A tiny MCTformer-V2 trained for one epoch through the CLI, as the train rule runs it.

    One epoch leaves PatchCAM near zero: every block's response is then uniform
    to float32 precision (exactly log2(16) bits), and the min-max would only
    see rounding. The PatchCAM head is scaled up (x1000) so that the blocks'
    entropies differ by hundredths of a bit, as a trained model's do.
    """
    from conftest import TINY_MODEL

    out_dir = tmp_path_factory.mktemp("baseline")
    config = _train_config(dataset_config, copy.deepcopy(TINY_MODEL), "mctformer_v2")
    args = ["--config", json.dumps(config), "--seed", "0", "--out-dir", str(out_dir)]
    assert main(["train", *args, "--no-progress"]) == 0
    path = out_dir / "model.pt"
    state = torch.load(path, weights_only=False)
    for name in ("patch_head.weight", "patch_head.bias"):
        state["model"][name] = state["model"][name] * 1000
    torch.save(state, path)
    return path


def _entropy_config(dataset_config, batch_size=5):
    return {"dataset": dataset_config, "batch_size": batch_size}


def _entropy_cli(config, model, out, *extra):
    """`wsss entropy-weights` as the rule calls it; its exit status."""
    args = ["--config", json.dumps(config), "--model", str(model), "--out", str(out)]
    return main(["entropy-weights", *args, "--no-progress", *extra])


def test_cli_writes_normalised_weights_from_a_trained_baseline(dataset_config, baseline, tmp_path):
    out = tmp_path / "entropy" / "entropy_weights.json"
    assert _entropy_cli(_entropy_config(dataset_config), baseline, out, "--threads", "1") == 0
    result = json.loads(out.read_text())
    weights = np.array(result["weights"])
    assert weights.shape == (DEPTH,) and result["blocks"] == DEPTH
    assert weights.min() == 0.0 and weights.max() == 1.0 and ((0 <= weights) & (weights <= 1)).all()
    assert np.allclose(load_entropy_weights(out), weights)  # what the train rule reads
    entropy = np.array(result["entropy_bits"])  # raw, at most log2(16 patches) = 4 bits
    assert ((0 < entropy) & (entropy <= 4 + 1e-6)).all()
    assert (result["images"], result["split"], result["img_size"]) == (12, "train", 32)
    assert result["method"] == "mctformer_v2" and result["seed"] == 0
    assert not list(out.parent.glob(".*"))  # written atomically: no temporary left behind


def test_weights_are_compute_entropy_weights_on_the_resized_split(dataset_config, baseline):
    from wsss.data.datasets import open_dataset
    from wsss.methods.aream import compute_entropy_weights
    from wsss.methods.cam_inference import load_trained

    one = baseline_entropy_weights(_entropy_config(dataset_config, 1), baseline, progress=False)
    all_ = baseline_entropy_weights(_entropy_config(dataset_config, 12), baseline, progress=False)
    assert np.allclose(one["entropy_bits"], all_["entropy_bits"], atol=1e-5)  # batch-independent
    assert np.ptp(all_["entropy_bits"]) > 1e-3  # well above float32 rounding of ~4 bits
    model, method, _ = load_trained(baseline, torch.device("cpu"))
    images = ResizedImages(open_dataset(dataset_config), "train", 32)
    loader = torch.utils.data.DataLoader(images, batch_size=len(images))
    reference = compute_entropy_weights(model, method, loader, "cpu")
    assert np.allclose(all_["weights"], reference, atol=1e-4)


def test_images_are_resized_to_the_training_input_and_normalised(dataset_config):
    from wsss.data.datasets import open_dataset

    images = ResizedImages(open_dataset(dataset_config), "train", 24)
    image, labels = images[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert labels.shape == (len(open_dataset(dataset_config).class_names),) and labels.sum() >= 1
    assert -3 < image.min() < image.max() < 3  # ImageNet-normalised, not 0..255


def test_cli_rejects_a_model_of_other_classes(dataset_config, baseline, tmp_path, capsys):
    other = dict(dataset_config, generator={**dataset_config["generator"], "num_classes": 3})
    other["root"] = str(tmp_path / "other")
    prepare_dataset(other, progress=False)
    out = tmp_path / "w.json"
    assert _entropy_cli(_entropy_config(other), baseline, out) == 1
    assert "classes" in capsys.readouterr().err and not out.exists()


def test_train_with_baseline_and_no_file_fails_clearly(
    dataset_config, tiny_model_config, tmp_path, capsys
):
    config = _train_config(dataset_config, tiny_model_config, "aream", _aream_params("baseline"))
    args = ["--config", json.dumps(config), "--seed", "0", "--out-dir", str(tmp_path / "run")]
    assert main(["train", *args, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "method_params.aream.entropy_weights reads the entropy_weights artifact" in err
    assert "--upstream entropy_weights=FILE" in err and "entropy_weights rule" in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_train_uses_the_file_and_saves_its_values(
    dataset_config, tiny_model_config, baseline, tmp_path
):
    weights = tmp_path / "entropy_weights.json"
    assert _entropy_cli(_entropy_config(dataset_config), baseline, weights) == 0
    train = _train_config(dataset_config, tiny_model_config, "aream", _aream_params("baseline"))
    out_dir = tmp_path / "run"
    args = ["--config", json.dumps(train), "--seed", "0", "--out-dir", str(out_dir)]
    assert main(["train", *args, "--upstream", f"entropy_weights={weights}", "--no-progress"]) == 0
    saved = torch.load(out_dir / "model.pt", weights_only=False)["config"]["method"]["params"]
    assert saved["entropy_weights"] == pytest.approx(json.loads(weights.read_text())["weights"])
    # The trained model's CAMs need no weights file: the values travel in model.pt.
    from wsss.methods.cam_inference import load_trained

    _, method, _ = load_trained(out_dir / "model.pt", torch.device("cpu"))
    assert method.entropy(DEPTH) == pytest.approx(saved["entropy_weights"])


def with_entropy_weights(config, path):
    return with_upstream(config, {} if path is None else {"entropy_weights": str(path)})


def test_a_file_without_baseline_is_refused(dataset_config, tiny_model_config, tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps([0.0, 1.0, 0.5]))
    plain = _train_config(dataset_config, tiny_model_config, "aream", _aream_params(None))
    with pytest.raises(
        ValueError, match="declares no upstream artifact.*the file would be ignored"
    ):
        with_entropy_weights(plain, path)
    assert with_entropy_weights(plain, None) is plain
    mct = _train_config(dataset_config, tiny_model_config, "mctformer_v2")
    assert with_entropy_weights(mct, None) is mct


def test_baseline_without_a_file_names_the_option(dataset_config, tiny_model_config):
    config = _train_config(dataset_config, tiny_model_config, "aream", _aream_params("baseline"))
    with pytest.raises(ValueError, match="--upstream entropy_weights=FILE"):
        with_entropy_weights(config, None)


def test_resume_digest_covers_the_weights_values(dataset_config, tiny_model_config, tmp_path):
    """A checkpoint trained with one weights file is not resumed with another."""
    config = _train_config(dataset_config, tiny_model_config, "aream", _aream_params("baseline"))
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"weights": [0.0, 1.0, 0.5]}))
    b.write_text(json.dumps({"weights": [0.0, 1.0, 0.25]}))
    c.write_text(json.dumps({"weights": [0.0, 1.0, 0.5], "note": "same values, other file"}))
    digests = [
        config_digest({"config": with_entropy_weights(config, p), "seed": 0}) for p in (a, b, c)
    ]
    assert digests[0] != digests[1] and digests[0] == digests[2]
    assert config["method"]["params"]["entropy_weights"] == "baseline"  # the input is not changed


def test_upstream_declaration():
    assert AReAM({"entropy_weights": "baseline"}).upstream()[0].run == "mctformer_v2"
    assert AReAM({"entropy_weights": "baseline", "entropy_baseline": "b"}).upstream()[0].run == "b"
    assert AReAM({"entropy_weights": None}).upstream() == []
    assert AReAM({"entropy_weights": [0.0, 1.0]}).upstream() == []
