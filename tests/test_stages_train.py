"""The classifier training loop's options: layer-wise lr decay, frozen blocks, CPU bf16."""

import pytest
import torch
from conftest import TINY_MODEL, tiny_synthetic_dataset, tiny_train_config

from wsss.methods.base import TRAINING_METHODS
from wsss.runtime import native_bf16, seed_everything
from wsss.stages import train as train_stage

DEPTH = TINY_MODEL["overrides"]["depth"]


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune") / "data"
    return tiny_synthetic_dataset(root, num_train=12, num_val=4, image_size=32)


def _config(dataset_config, **train):
    return tiny_train_config(dataset_config, **train)


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records (layer, lr) of every group at every step."""

    steps: list[list[tuple[int, float]]] = []

    def step(self, closure=None):
        RecordingAdamW.steps.append([(g["layer"], g["lr"]) for g in self.param_groups])
        return super().step(closure)


def _initial_model(config):
    """The model the training run starts from (train() seeds, then builds it first)."""
    seed_everything(0)
    method = TRAINING_METHODS.get("mctformer_v2")({})
    return method.build_model(config["model"], 6)


def test_layer_decay_scales_each_groups_lr_and_frozen_blocks_do_not_move(
    dataset_config, tmp_path, monkeypatch
):
    RecordingAdamW.steps = []
    monkeypatch.setattr(train_stage.torch.optim, "AdamW", RecordingAdamW)
    config = _config(dataset_config, layer_decay=0.5, freeze_blocks=1)
    train_stage.train(config, 0, tmp_path, progress=False)
    assert len(RecordingAdamW.steps) == 4  # 2 epochs x 2 batches of 6
    for groups in RecordingAdamW.steps:
        layers = {layer for layer, _ in groups}
        # embeddings (layer 0) and block 0 (layer 1) are frozen: in no group
        assert layers == {2, 3, DEPTH + 1}
        full = next(lr for layer, lr in groups if layer == DEPTH + 1)
        for layer, lr in groups:
            assert lr == pytest.approx(full * 0.5 ** (DEPTH + 1 - layer), rel=1e-12)
    # the head's lr follows the schedule: warm-up from min_lr, then cosine
    heads = [next(lr for layer, lr in g if layer == DEPTH + 1) for g in RecordingAdamW.steps]
    assert (
        heads[0] == pytest.approx(1e-5) and heads[1] > heads[0] and heads[2] == pytest.approx(1e-3)
    )

    trained = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    initial = _initial_model(config).state_dict()
    for name, value in initial.items():
        frozen = name.startswith(("patch_embed.", "patch_pos_embed", "blocks.0."))
        assert torch.equal(trained[name], value) == frozen, name


def test_defaults_give_one_scale_and_freeze_nothing(dataset_config, tmp_path, monkeypatch):
    RecordingAdamW.steps = []
    monkeypatch.setattr(train_stage.torch.optim, "AdamW", RecordingAdamW)
    train_stage.train(_config(dataset_config, epochs=1), 0, tmp_path, progress=False)
    for groups in RecordingAdamW.steps:
        assert {layer for layer, _ in groups} == set(range(DEPTH + 2))
        assert len({lr for _, lr in groups}) == 1


def test_freezing_more_blocks_than_the_model_has_names_the_key(dataset_config, tmp_path):
    with pytest.raises(ValueError, match=r"train.freeze_blocks must be in 0..3"):
        train_stage.train(_config(dataset_config, freeze_blocks=4), 0, tmp_path, progress=False)


def test_train_metrics_record_the_training_platform_and_threads(dataset_config, tmp_path):
    import json

    train_stage.train(_config(dataset_config, epochs=1), 0, tmp_path, progress=False)
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    platform = metrics["platform"]  # top level, as the README names it
    assert platform["torch_threads"] == torch.get_num_threads()
    assert platform["device"] == "cpu" and platform["processes"] == 1
    assert platform["versions"]["torch"] and "cpu" in platform


NATIVE_BF16 = pytest.mark.skipif(
    not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 (avx512_bf16/AMX)"
)


@NATIVE_BF16
def test_cpu_bf16_runs_the_step_in_bf16_and_is_deterministic(dataset_config, tmp_path, monkeypatch):
    """train.cpu_bf16: the loss is computed under bf16 autocast (the weights stay fp32), the
    weights differ from the fp32 run's, and two runs with one seed give the same bytes."""
    dtypes = []
    method_class = TRAINING_METHODS.get("mctformer_v2")
    original = method_class.loss

    def recording_loss(self, model, images, labels, epoch):
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return original(self, model, images, labels, epoch)

    monkeypatch.setattr(method_class, "loss", recording_loss)
    weights = {}
    for name, bf16 in (("a", True), ("b", True), ("fp32", False)):
        train_stage.train(
            _config(dataset_config, epochs=1, cpu_bf16=bf16), 0, tmp_path / name, False
        )
        weights[name] = (tmp_path / name / "model.pt").read_bytes()
    assert dtypes == [torch.bfloat16] * 4 + [None] * 2  # 1 epoch x 2 batches per run
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["fp32"]
    state = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_cpu_bf16_is_refused_on_a_cpu_without_native_bf16(dataset_config, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(
        ValueError, match=r"train.cpu_bf16 is true, but this CPU has no native bf16"
    ):
        train_stage.train(_config(dataset_config, cpu_bf16=True), 0, tmp_path, progress=False)
    assert not (tmp_path / "model.pt").exists()


def test_step_autocast_follows_amp_on_cuda_and_cpu_bf16_on_a_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert train_stage.step_autocast({"amp": True, "cpu_bf16": False}, cuda)
    assert not train_stage.step_autocast({"amp": False, "cpu_bf16": True}, cuda)
    assert not train_stage.step_autocast({"amp": True}, cpu)  # train.amp is CUDA-only
