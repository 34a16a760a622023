"""Exact resume: a training job killed with SIGKILL after its first checkpoint and rerun
writes the same bytes as an uninterrupted run, for every training method and the stage-2
segmenter; an unreadable checkpoint is set aside; identical runs give identical files."""

import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, tiny_synthetic_dataset, tiny_train_config

import wsss
from wsss.cli import main
from wsss.data.datasets import open_dataset
from wsss.data.palette import save_label_png

PACKAGE_ROOT = Path(wsss.__file__).resolve().parents[1]  # the code under test, for the child
EPOCHS = 6
STARTUP_LIMIT_S = 300  # a loaded CI machine imports torch slowly; training itself takes ~1 s

# Parameters that make every part of each method's loss run within EPOCHS tiny epochs
# (AReAM's affinity loss and ClusterCAM's segmentation loss start after epoch 1).
METHOD_PARAMS = {
    "mctformer_v2": {},
    "aream": {"cls_epochs": 1, "layer_index": 2, "cam_flip": True, "label_pass_bf16": False},
    "doei": {},
    "clustercam": {
        "seg_start_epoch": 1,
        "decoder_channels": 8,
        "cam_scales": [1.0, 0.75],
        "pseudo_class_layers": 2,
    },
    "aream_doei": {"cls_epochs": 1, "layer_index": 2, "label_pass_bf16": False},
}

SEGMENTER = {
    "backbone": "resnet18",
    "pretrained": False,
    "weights": None,
    "out_index": 1,
    "output_stride": None,
    "overrides": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1], "stem_width": 4},
    "head": "aspp",
    "head_channels": 16,
    "dilations": [1, 2],
    "dropout": 0.5,  # dropout draws from the global RNG, which the checkpoint must carry
    "epochs": EPOCHS,
    "batch_size": 4,
    "crop_size": 32,
    "scale_range": [0.75, 1.25],
    "optimizer": "sgd",
    "lr": 1e-2,
    "eval_batch_size": 8,
}


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "data"
    return tiny_synthetic_dataset(root, num_train=24, num_val=4, image_size=32)


def train_config(dataset_config, method, epochs=EPOCHS):
    # drop path on, so that every step draws from the global RNG
    model = dict(copy.deepcopy(TINY_MODEL), drop_path_rate=0.1)
    return tiny_train_config(
        dataset_config,
        method,
        METHOD_PARAMS[method],
        model,
        epochs=epochs,
        batch_size=4,
        num_workers=0,
        device="cpu",
        cache_images=True,
    )


def train_args(config, out_dir):
    return ["train", "--config", json.dumps(config), "--seed", "0", "--out-dir", str(out_dir)]


def segment_args(config, labels, model):
    return [
        "segment",
        *("--config", json.dumps(config), "--labels", str(labels), "--seed", "0"),
        *("--model", str(model), "--metrics", str(model.with_name("seg_metrics.json"))),
    ]


def run_in_process(args, log):
    assert main([*args, "--device", "cpu", "--no-progress", "--log", str(log)]) == 0


def kill_after_checkpoint(args, checkpoint, log, epoch_line, seed):
    """Run ``wsss ARGS`` in a child process and SIGKILL it at a seeded random point after its
    first checkpoint: once epoch k (random, 1..EPOCHS-2) is logged and a checkpoint exists,
    after a random fraction of an epoch. The line is logged just before checkpoint k is
    written, so the kill lands while it is written or later, and the rerun resumes from
    epoch k - 1 (>= 1) or later. Returns k, or None when the child finished first (this
    process was not scheduled in time on a loaded machine)."""
    rng = random.Random(seed)
    epoch = rng.randint(1, EPOCHS - 2)
    fraction = rng.random()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), *sys.path]))
    command = [sys.executable, "-m", "wsss.cli", *args, "--device", "cpu", "--no-progress"]
    command += ["--threads", "1", "--log", str(log)]
    stderr = log.with_suffix(".stderr")
    with open(stderr, "w") as sink:  # a file, not a pipe nobody drains while it runs
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        seconds = None
        while seconds is None:
            text = log.read_text() if log.exists() else ""
            lines = [line for line in text.splitlines() if f"{epoch_line} {epoch}/" in line]
            if lines and checkpoint.exists():
                seconds = epoch_seconds(lines[0])
            elif child.poll() is not None:
                pytest.fail(
                    f"the child ended ({child.returncode}) before the kill: {stderr.read_text()}"
                )
            elif time.monotonic() > deadline:
                pytest.fail(f"no checkpoint after epoch {epoch} within {STARTUP_LIMIT_S} s")
            else:
                time.sleep(0.002)
        time.sleep(fraction * seconds)
        os.kill(child.pid, signal.SIGKILL)  # a child that already exited is a zombie until wait
        child.wait()
    finally:
        if child.poll() is None:  # the test failed before the kill
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    if child.returncode == 0:
        return None
    assert child.returncode == -signal.SIGKILL
    return epoch


def interrupt(args_for, final, checkpoint_name, tmp_path, epoch_line, seed):
    """Kill a run (:func:`kill_after_checkpoint`) in a fresh folder, up to 3 times until a
    kill lands before the end; (run folder, k)."""
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        log = tmp_path / f"killed{attempt}.log"
        epoch = kill_after_checkpoint(
            args_for(run), run / checkpoint_name, log, epoch_line, seed * 1000 + attempt
        )
        if epoch is not None:
            assert not (run / final).exists()
            return run, epoch
    pytest.fail("the child finished before each of 3 kills")


def epoch_seconds(line: str) -> float:
    """The duration in a log line of either loop ("... seconds=0.05 ..." or "... 0.1s")."""
    found = re.search(r"seconds=([0-9.e+-]+)", line) or re.search(r" ([0-9.]+)s$", line)
    assert found, line
    return float(found.group(1))


def assert_same_file(resumed: Path, reference: Path):
    a = torch.load(resumed, weights_only=True)["model"]
    b = torch.load(reference, weights_only=True)["model"]
    differ = [name for name in b if not torch.equal(a[name], b[name])]
    assert not differ, f"{len(differ)} of {len(b)} tensors differ after resuming: {differ[:5]}"
    assert resumed.read_bytes() == reference.read_bytes()


def resumed_from(log: Path) -> int:
    found = re.findall(r"resuming \S+ from epoch (\d+)", log.read_text())
    assert len(found) == 1, log.read_text()
    return int(found[0])


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_a_killed_training_resumes_to_the_same_bytes(dataset_config, method, tmp_path):
    config = train_config(dataset_config, method)
    reference = tmp_path / "reference"
    run_in_process(train_args(config, reference), tmp_path / "reference.log")

    seed = zlib.crc32(method.encode())
    run, epoch = interrupt(
        lambda run: train_args(config, run), "model.pt", "checkpoint.pt", tmp_path, "epoch", seed
    )
    resumed_log = tmp_path / "resumed.log"
    run_in_process(train_args(config, run), resumed_log)
    assert resumed_from(resumed_log) >= max(1, epoch - 1)
    assert_same_file(run / "model.pt", reference / "model.pt")
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())


@pytest.fixture(scope="module")
def pseudo_labels(dataset_config, tmp_path_factory):
    """The ground-truth masks of the train split, standing in for pseudo-labels."""
    labels = tmp_path_factory.mktemp("labels")
    dataset = open_dataset(dataset_config)
    for image_id in dataset.layout.split_ids("train"):
        save_label_png(labels / f"{image_id}.png", dataset.layout.load_mask(image_id))
    return labels


@pytest.mark.slow
def test_a_killed_segmenter_resumes_to_the_same_bytes(dataset_config, pseudo_labels, tmp_path):
    config = {"dataset": dataset_config, "segmentation": SEGMENTER, "scales": [1.0]}
    reference = tmp_path / "reference" / "segmenter.pt"
    run_in_process(segment_args(config, pseudo_labels, reference), tmp_path / "reference.log")

    run, epoch = interrupt(
        lambda run: segment_args(config, pseudo_labels, run / "segmenter.pt"),
        "segmenter.pt",
        "segmenter_checkpoint.pt",
        tmp_path,
        "seg epoch",
        1,
    )
    model, checkpoint = run / "segmenter.pt", run / "segmenter_checkpoint.pt"
    resumed_log = tmp_path / "resumed.log"
    run_in_process(segment_args(config, pseudo_labels, model), resumed_log)
    assert resumed_from(resumed_log) >= max(1, epoch - 1)
    assert_same_file(model, reference)
    assert not checkpoint.exists()


@pytest.mark.slow
def test_two_runs_write_identical_model_files(dataset_config, tmp_path):
    config = train_config(dataset_config, "mctformer_v2", epochs=2)
    for name in ("a", "b"):
        run_in_process(train_args(config, tmp_path / name), tmp_path / f"{name}.log")
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind


@pytest.mark.slow
def test_an_unreadable_checkpoint_is_set_aside_and_training_starts_over(dataset_config, tmp_path):
    config = train_config(dataset_config, "mctformer_v2", epochs=2)
    reference = tmp_path / "reference"
    run_in_process(train_args(config, reference), tmp_path / "reference.log")
    run = tmp_path / "run"
    run.mkdir()
    damaged = b"PK\x03\x04 a zip archive cut short"
    (run / "checkpoint.pt").write_bytes(damaged)
    (run / ".model.k3_x9a0b.pt").write_bytes(b"left by a killed run")
    log = tmp_path / "run.log"
    run_in_process(train_args(config, run), log)
    assert (run / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    assert (run / "checkpoint.pt.corrupt-1").read_bytes() == damaged
    assert f"training checkpoint {run / 'checkpoint.pt'} cannot be read" in log.read_text()
    assert not (run / "checkpoint.pt").exists() and not (run / ".model.k3_x9a0b.pt").exists()
