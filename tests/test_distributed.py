"""Data-parallel training (wsss.distributed): the global-batch sampler and the batch split on
hand-checkable cases, and on the smoke configuration, 2 CPU processes (torchrun, gloo) that
train, write from rank 0 only, resume exactly, and follow the 1-process loss curve."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

import wsss
from wsss import distributed
from wsss.cli import main
from wsss.config import load_params, segmentation_config, training_config
from wsss.data.datasets import open_dataset, prepare_dataset
from wsss.data.palette import save_label_png
from wsss.runtime import set_threads

REPO = Path(wsss.__file__).resolve().parents[1]
STARTUP_LIMIT_S = 300  # two processes importing torch on a loaded CI machine
# Largest difference allowed between the per-epoch mean losses of a 2-process and a
# 1-process run with the same global batch. Measured on the smoke configuration (CPU,
# 3 epochs): 0 at train_log.tsv's 6 significant digits, 4e-9 in final_loss (full precision;
# float reduction order only: the same batches, augmentation and lr); the weights end up to
# 1.5e-5 apart. The tolerance leaves margin for other CPUs' kernels.
CLASSIFIER_LOSS_TOL = 1e-5
# The segmenter's BatchNorm would normalize with each CPU process's own half batch (torch has
# no CPU SyncBatchNorm; GPUs use it): measured 2.4e-2 apart over 2 epochs in train mode. The
# test freezes BatchNorm (segmentation.freeze_bn, as configs/voc.yaml), so that what it checks
# is the split of the batches and the global-batch loss normalization.
SEGMENTER_LOSS_TOL = 1e-4


def ranks(rank, world_size=2):
    return distributed.Group(rank=rank, world_size=world_size, local_rank=rank)


# --- the sampler and the batch split, by hand ---------------------------------------------


def test_each_rank_gets_its_slice_of_every_global_batch():
    sampler = SequentialSampler(range(8))
    got = [
        list(distributed.GlobalBatchSampler(sampler, 4, True, ranks(r), "train.batch_size"))
        for r in (0, 1)
    ]
    assert got == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    # drop_last drops the short global batch [8, 9] for every rank alike
    sampler = SequentialSampler(range(10))
    shares = distributed.GlobalBatchSampler(sampler, 4, True, ranks(1), "train.batch_size")
    assert list(shares) == [[2, 3], [6, 7]] and len(shares) == 2


def test_ranks_together_see_the_one_process_batches_in_order():
    """The DataLoader draws its worker seed, then the permutation, from its generator: the
    ranks' loaders, on generators seeded alike, reproduce the 1-process loader's batches."""
    data = list(range(20))
    single = DataLoader(
        data, batch_size=4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3)
    )
    per_rank = []
    for r in (0, 1):
        generator = torch.Generator().manual_seed(3)
        kwargs = distributed.loader_batching(data, 4, True, generator, ranks(r), "key")
        per_rank.append(DataLoader(data, generator=generator, **kwargs))
    for _epoch in range(2):  # the generator carries over from epoch to epoch
        expected = [batch.tolist() for batch in single]
        got = [a.tolist() + b.tolist() for a, b in zip(*per_rank, strict=True)]
        assert got == expected


def test_a_single_process_loader_is_built_as_before():
    generator = torch.Generator()
    kwargs = distributed.loader_batching([0] * 5, 4, True, generator, distributed.SINGLE, "k")
    assert kwargs == {"batch_size": 4, "shuffle": True, "drop_last": True}


def test_a_batch_the_ranks_cannot_share_names_the_key():
    with pytest.raises(ValueError, match=r"segmentation\.batch_size: the global batch of 9"):
        distributed.per_rank_batch(9, ranks(0), "segmentation.batch_size")
    assert distributed.per_rank_batch(9, distributed.SINGLE, "k") == 9
    assert distributed.per_rank_batch(8, ranks(1, world_size=4), "k") == 2
    with pytest.raises(ValueError, match=r"train\.batch_size: 6 images leave a last global"):
        distributed.GlobalBatchSampler(
            SequentialSampler(range(6)), 4, False, ranks(0), "train.batch_size"
        )


def test_the_group_comes_from_torchrun_variables():
    assert distributed.from_environment({}) is distributed.SINGLE
    assert distributed.from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is distributed.SINGLE
    group = distributed.from_environment({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (group.rank, group.world_size, group.enabled, group.is_main) == (1, 2, True, False)
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.from_environment({"WORLD_SIZE": "2", "RANK": "1"})
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.from_environment({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_a_device_naming_one_gpu_is_refused_under_torchrun():
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        distributed._rank_device(torch.device("cuda", 1), ranks(0))
    assert distributed._rank_device(torch.device("cuda"), ranks(1)) == torch.device("cuda", 1)


def test_the_job_threads_are_shared_by_its_processes(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        set_threads(5)
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- 2 CPU processes on the smoke configuration -------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke configuration's training and segmentation job configs, its data under a
    temporary root, and the train split's masks standing in for pseudo-labels."""
    root = tmp_path_factory.mktemp("smoke")
    params = load_params(REPO / "params.yaml", REPO / "configs" / "smoke.yaml")
    params["datasets"]["synthetic"]["root"] = str(root / "data")
    train = training_config(params, "synthetic", "mctformer_v2")
    train["train"]["epochs"] = 3
    prepare_dataset(train["dataset"], progress=False)
    segment = segmentation_config(params, "synthetic")
    segment["segmentation"].update(epochs=2, freeze_bn=True)  # epoch 1 writes a checkpoint
    labels = root / "labels"
    labels.mkdir()
    dataset = open_dataset(segment["dataset"])
    for image_id in dataset.layout.split_ids(segment["dataset"]["train_split"]):
        save_label_png(labels / f"{image_id}.png", dataset.layout.load_mask(image_id))
    return {"train": train, "segment": segment, "labels": labels}


def train_args(config, out_dir):
    return ["train", "--config", json.dumps(config), "--seed", "0", "--out-dir", str(out_dir)]


def segment_args(config, labels, model):
    return [
        *("segment", "--config", json.dumps(config), "--labels", str(labels), "--seed", "0"),
        *("--model", str(model), "--metrics", str(model.with_name("seg_metrics.json"))),
    ]


def torchrun(args, log, processes=2):
    """``torchrun --standalone --nproc_per_node=PROCESSES -m wsss.cli ARGS`` on CPU (gloo),
    started in its own session. The log is the
    processes' stderr, as a rule's ``2> {log}`` (torchrun's parser would take ``--log`` for
    an abbreviation of its own options)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "wsss.cli", *args]
    command += ["--device", "cpu", "--no-progress", "--threads", str(processes)]
    sink = open(log, "w")  # closed by finish()
    return subprocess.Popen(
        command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
    ), sink


def finish(started):
    child, sink = started
    try:
        code = child.wait(timeout=STARTUP_LIMIT_S)
    finally:
        sink.close()
    assert code == 0, Path(sink.name).read_text()[-3000:]


def in_one_process(args, log):
    assert main([*args, "--device", "cpu", "--no-progress", "--log", str(log)]) == 0


def losses(path):
    lines = path.read_text().splitlines()
    column = lines[0].split("\t").index("loss")
    return [float(line.split("\t")[column]) for line in lines[1:]]


def max_weight_difference(a, b):
    a = torch.load(a, weights_only=True)["model"]
    b = torch.load(b, weights_only=True)["model"]
    return max(
        (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()
    )


@pytest.mark.slow
def test_two_processes_train_from_rank_0_and_follow_the_one_process_curve(smoke, tmp_path):
    config = smoke["train"]
    two, one = tmp_path / "two", tmp_path / "one"
    started = time.monotonic()
    finish(torchrun(train_args(config, two), tmp_path / "two.log"))
    seconds = time.monotonic() - started
    in_one_process(train_args(config, one), tmp_path / "one.log")

    # rank 0 alone writes: the outputs, no checkpoint left, one info log (rank 1: warnings)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == [
        "model.pt",
        "train_log.tsv",
        "train_metrics.json",
    ]
    log = (tmp_path / "two.log").read_text()
    assert log.count("INFO training mctformer_v2") == 1, log
    assert "data-parallel: 2 processes (gloo backend)" in log
    assert log.count("INFO epoch 3/3") == 1

    curve2, curve1 = losses(two / "train_log.tsv"), losses(one / "train_log.tsv")
    difference = max(abs(a - b) for a, b in zip(curve2, curve1, strict=True))
    weights = max_weight_difference(two / "model.pt", one / "model.pt")
    print(
        f"2 vs 1 process: loss max |diff| {difference:.3g}, weights {weights:.3g}, {seconds:.1f} s"
    )
    assert len(curve2) == 3 and difference < CLASSIFIER_LOSS_TOL, (curve2, curve1)
    metrics2 = json.loads((two / "train_metrics.json").read_text())
    metrics1 = json.loads((one / "train_metrics.json").read_text())
    assert abs(metrics2["final_loss"] - metrics1["final_loss"]) < CLASSIFIER_LOSS_TOL


def children(pid):
    """The PIDs of the processes ``pid`` started (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def kill_after_first_checkpoint(args, checkpoint, log):
    """Start a 2-process run and stop it with SIGTERM to torchrun once ``checkpoint`` exists,
    as SLURM does at a time limit (torchrun passes it on to its workers, which run in their
    own process groups). True when the stop landed before the run finished. Workers still
    alive 30 s later are killed by PID."""
    child, sink = torchrun(args, log)
    workers = []
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while not checkpoint.exists() and child.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.005)
        if child.poll() is not None:
            return False
        workers = children(child.pid)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
        return child.returncode != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        deadline = time.monotonic() + 30
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)
        sink.close()


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_to_the_same_bytes(smoke, tmp_path):
    config = smoke["train"]
    reference = tmp_path / "reference"
    finish(torchrun(train_args(config, reference), tmp_path / "reference.log"))
    run = tmp_path / "run"
    assert kill_after_first_checkpoint(
        train_args(config, run), run / "checkpoint.pt", tmp_path / "killed.log"
    ), "the run finished before the kill"
    assert not (run / "model.pt").exists()
    finish(torchrun(train_args(config, run), tmp_path / "resumed.log"))
    log = (tmp_path / "resumed.log").read_text()
    assert log.count("resuming") == 1, log  # rank 0 logs it; rank 1 resumes silently
    assert (run / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    assert (run / "train_log.tsv").read_bytes() == (reference / "train_log.tsv").read_bytes()
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_two_process_segmenter_writes_from_rank_0_and_follows_the_curve(smoke, tmp_path):
    config, labels = smoke["segment"], smoke["labels"]
    two, one = tmp_path / "two" / "segmenter.pt", tmp_path / "one" / "segmenter.pt"
    finish(torchrun(segment_args(config, labels, two), tmp_path / "two.log"))
    in_one_process(segment_args(config, labels, one), tmp_path / "one.log")
    assert sorted(p.name for p in two.parent.iterdir()) == ["seg_metrics.json", "segmenter.pt"]
    log = (tmp_path / "two.log").read_text()
    assert log.count("INFO seg epoch 2/2") == 1, log
    curve2 = [
        r["loss"]
        for r in json.loads(two.with_name("seg_metrics.json").read_text())["seg"]["train"][
            "history"
        ]
    ]
    curve1 = [
        r["loss"]
        for r in json.loads(one.with_name("seg_metrics.json").read_text())["seg"]["train"][
            "history"
        ]
    ]
    difference = max(abs(a - b) for a, b in zip(curve2, curve1, strict=True))
    print(f"segmenter 2 vs 1 process: loss max |diff| {difference:.3g}")
    assert len(curve2) == 2 and difference < SEGMENTER_LOSS_TOL, (curve2, curve1)


# --- batch-level loss normalisers: 1 and 2 gloo processes, the same gradient ---------------

# The methods whose loss divides a sum over the batch by a batch-level count (AReAM's
# balanced affinity loss, ClusterCAM's balanced segmentation loss), with MCTformer-V2, a
# plain per-image mean, as the reference. Each is run past its warm-up so that the
# batch-level term is in the loss.
GRADIENT_METHODS = {
    "mctformer_v2": ({}, 0),
    "aream": ({"cls_epochs": 0, "layer_index": 2}, 0),
    "clustercam": ({"decoder_channels": 8, "seg_start_epoch": 0}, 0),
}
# Largest relative gradient difference (max |g2 - g1| / max |g1|) allowed between 2 processes
# and 1. Measured on these tiny models (CPU, float32): float reduction order only, ~1e-7 for
# every method with the global counts (7e-8 MCTformer-V2 and AReAM, 1.6e-7 ClusterCAM); with
# the per-rank counts of before, AReAM differed by 1.1e-3 (the two half batches' normalisers
# differ).
GRADIENT_REL_TOL = 1e-5


def _gradient_batch():
    """The global batch of 4 images (seeded) and labels with several classes per image."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    labels = torch.tensor(
        [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]
    )
    return images, labels


def _method_gradients(name, images, labels, group):
    """Each parameter's gradient of ``name``'s training loss on ``images`` (this rank's share),
    averaged over ``group`` as the training loop does."""
    from conftest import TINY_MODEL

    from wsss.methods import TRAINING_METHODS

    params, epoch = GRADIENT_METHODS[name]
    method = TRAINING_METHODS.get(name)(params)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = method.build_model(dict(TINY_MODEL), 4).train()
    method.on_train_start(model, None, torch.device("cpu"))
    loss, _ = method.loss(model, images, labels, epoch)
    loss.backward()
    distributed.average_gradients(model, group)
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _gradient_worker(rank, init_file, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    group = ranks(rank)
    images, labels = _gradient_batch()
    share = slice(2 * rank, 2 * rank + 2)
    grads = {
        name: _method_gradients(name, images[share], labels[share], group)
        for name in GRADIENT_METHODS
    }
    if rank == 0:
        torch.save(grads, out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_one_process_gradient_for_every_method(tmp_path):
    """2 gloo processes with half the batch each, gradients averaged as in training, against
    one process with the whole batch: the same gradients for the methods whose losses are
    normalised by batch-level counts (global counts, wsss.distributed.global_count), as for
    MCTformer-V2's per-image mean."""
    import torch.multiprocessing as mp

    out = tmp_path / "grads.pt"
    mp.start_processes(
        _gradient_worker,
        args=(str(tmp_path / "init"), str(out)),
        nprocs=2,
        start_method="spawn",
    )
    two = torch.load(out, weights_only=True)
    images, labels = _gradient_batch()
    for name in GRADIENT_METHODS:
        one = _method_gradients(name, images, labels, distributed.SINGLE)
        assert sorted(one) == sorted(two[name])
        scale = max(g.abs().max().item() for g in one.values())
        difference = max((two[name][k] - g).abs().max().item() for k, g in one.items())
        print(f"{name}: 2 vs 1 process gradient, max |diff| / max |g| = {difference / scale:.2g}")
        assert difference / scale < GRADIENT_REL_TOL, name
