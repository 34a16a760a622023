"""The benchmark harness (``python benchmarks/bench.py``): the measured cost of every stage, as ratios taken in one run.

Absolute seconds depend on the machine; ratios measured side by side in the
same process do not (much). Training and evaluation time their candidates in
turn, round after round, and report the median per-round ratio with its range
(on a shared machine the load drifts; the range says how much). Each stage is
timed against its physical floor and against the way the official
repositories do the same work:

- training: images/s per method vs a plain forward+backward of the same timm
  backbone (fused attention, one CLS token, no CAM head);
- CAM extraction: batched multi-scale+flip extraction vs plain inference
  forward passes over the same scales and flips; reference: one image at a time;
- evaluation: confusion matrices over the 2,913 real VOC masks vs only
  decoding the PNGs; reference: the per-class boolean loops of the official
  ``evaluation.py``;
- threshold sweep: the whole sweep from one histogram vs one threshold;
  reference: re-reading per-image ``.npy`` CAM dicts for every threshold;
- artifact size: our CAM file vs per-image ``.npy`` dicts, per image and
  extrapolated to VOC train_aug (10,582 images).

Each section runs in a fresh process so its peak resident memory is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

VOC_TRAIN_AUG = 10_582

# --quick: a check that every section runs, in seconds, not a measurement. The model keeps
# the grid's depth (methods name blocks) with a narrow width and small input; sections run
# in this process (their peak RSS is then the process's so far).
QUICK_MODEL = {"img_size": 32, "embed_dim": 32, "num_heads": 2}
_IN_PROCESS = False


def _timeit(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of each of ``fns`` per round, the functions taking turns within a round.

    On a shared machine the load drifts over seconds; timing the candidates in
    turn keeps each ratio a comparison under (nearly) the same load, and the
    spread of the per-round ratios shows how noisy the machine was.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _ratio(times: dict[str, list[float]], name: str, reference: str) -> dict[str, float]:
    """Median and range over rounds of ``time[name] / time[reference]``."""
    ratios = np.asarray(times[name]) / np.asarray(times[reference])
    return {
        "median": float(np.median(ratios)),
        "min": float(ratios.min()),
        "max": float(ratios.max()),
    }


def _with_baseline_ratio(
    entry: dict[str, Any], times: dict[str, list[float]], name: str, baseline: str = "mctformer_v2"
) -> dict[str, Any]:
    """``entry`` plus the median and range of ``name``'s time over the baseline's, when timed."""
    if baseline in times:
        ratio = _ratio(times, name, baseline)
        entry[f"ratio_to_{baseline}"] = ratio["median"]
        entry[f"ratio_to_{baseline}_range"] = [ratio["min"], ratio["max"]]
    return entry


def _in_subprocess(target: Callable[..., dict], *args: Any) -> dict:
    """Run one section in a fresh process; add its peak RSS (MiB). (--quick: in this one.)"""
    if _IN_PROCESS:
        return _run_section(target, args)
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_run_section, (target, args))


def _run_section(target: Callable[..., dict], args: tuple) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = target(*args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ------------------------------------------------------------------ training


def _training_loader(dataset_config: dict, model_config: dict, train: dict, batch: int):
    """The training loop's own data pipeline (cached images, random crops and flips)."""
    from torch.utils.data import DataLoader

    from wsss.data.classification import ClassificationDataset
    from wsss.data.datasets import open_dataset

    dataset = open_dataset(dataset_config)
    data = ClassificationDataset(
        dataset,
        dataset_config["train_split"],
        img_size=model_config["img_size"],
        crop_scale=tuple(train["crop_scale"]),
        hflip=train["hflip"],
        cache_images=True,
        seed=0,
    )
    batch = min(batch, len(data))
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        drop_last=len(data) > batch,
        generator=torch.Generator().manual_seed(0),
    )
    return dataset, data, loader


def _timed_methods(method_specs: dict[str, dict], model_config: dict, num_classes: int, data):
    from wsss.methods import TRAINING_METHODS

    built = {}
    for name, spec in method_specs.items():
        method = TRAINING_METHODS.get(spec["name"])(spec.get("params", {}))
        model = method.build_model(model_config, num_classes)
        method.on_train_start(model, data, torch.device("cpu"))
        built[name] = (method, model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    return built


def _random_batch(batch: int, size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (batch, 3, size, size) and multi-hot labels (batch, num_classes): each
    class present with probability 0.3, class 0 always (from the caller's torch seed)."""
    images = torch.randn(batch, 3, size, size)
    labels = (torch.rand(batch, num_classes) < 0.3).float()
    labels[:, 0] = 1.0
    return images, labels


def bench_training(
    model_config: dict,
    method_specs: dict[str, dict],
    num_classes: int,
    batch: int,
    steps: int,
    rounds: int = 5,
    data: dict | None = None,
) -> dict:
    """Training steps on one batch, every method past its warm-up (the full loss).

    ``data``: ``{"dataset": <dataset config>, "train": <train block>}`` to take the
    batch from the training data pipeline (realistic labels: the pseudo-label
    methods' cost grows with the number of classes per image); None: random
    images with random labels.
    """
    from wsss.models.mct_vit import ModelConfig, create_backbone

    torch.manual_seed(0)
    size = model_config["img_size"]
    if data is None:
        images, labels = _random_batch(batch, size, num_classes)
        source = "random images and labels"
    else:
        _, _, loader = _training_loader(data["dataset"], model_config, data["train"], batch)
        images, labels = next(iter(loader))
        batch = images.shape[0]
        source = f"one training batch of {data['dataset']['name']}"

    backbone = create_backbone(ModelConfig.from_dict(model_config))
    head = torch.nn.Linear(backbone.embed_dim, num_classes)
    floor_opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=1e-4)

    def floor_step():
        for _ in range(steps):
            logits = head(backbone.forward_features(images)[:, 0])
            loss = F.multilabel_soft_margin_loss(logits, labels)
            floor_opt.zero_grad()
            loss.backward()
            floor_opt.step()

    candidates: dict[str, Callable[[], None]] = {"floor": floor_step}
    built = _timed_methods(method_specs, model_config, num_classes, None)
    for name, spec in method_specs.items():
        method, model, opt = built[name]
        epoch = spec.get("epoch", 10**6)  # past any warm-up: the full loss

        def step(method=method, model=model, opt=opt, epoch=epoch):
            for _ in range(steps):
                loss, _ = method.loss(model, images, labels, epoch)
                opt.zero_grad()
                loss.backward()
                opt.step()

        candidates[name] = step

    times = _interleaved(candidates, rounds=rounds)
    floor = float(np.median(times["floor"]))
    result: dict[str, Any] = {
        "batch": batch,
        "batch_source": source,
        "classes_per_image": float((labels > 0).sum(dim=1).float().mean()),
        "steps": steps,
        "rounds": rounds,
        "img_size": size,
        "floor_images_per_s": batch * steps / floor,
        "methods": {},
    }
    for name in method_specs:
        entry = {
            "images_per_s": batch * steps / float(np.median(times[name])),
            "ratio_to_floor": _ratio(times, name, "floor")["median"],
        }
        result["methods"][name] = _with_baseline_ratio(entry, times, name)
    return result


def bench_stacked_seeds(
    model_config: dict, num_classes: int, batch: int, seeds: int, steps: int = 2, rounds: int = 5
) -> dict:
    """``seeds`` independent floor models (plain ViT of the proxy's shape + linear head,
    AdamW) trained one after another against the same models stacked into one vectorised
    step (``torch.func.stack_module_state`` + ``vmap`` of ``functional_call``; one AdamW over
    the stacked tensors, which is ``seeds`` independent AdamWs since AdamW is elementwise).
    Each model gets its own batch. Before timing, one step of each is run from the same
    weights and the stacked gradients are checked against the one-at-a-time ones
    (``max_rel_grad_diff``), so the timing compares the same computation."""
    import copy

    from torch.func import functional_call, stack_module_state

    from wsss.models.mct_vit import ModelConfig, create_backbone

    torch.manual_seed(0)
    size = model_config["img_size"]
    batches = [_random_batch(batch, size, num_classes) for _ in range(seeds)]
    images = torch.stack([b[0] for b in batches])
    labels = torch.stack([b[1] for b in batches])

    class Floor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = create_backbone(ModelConfig.from_dict(model_config))
            self.head = torch.nn.Linear(self.backbone.embed_dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone.forward_features(x)[:, 0])

    models = [Floor() for _ in range(seeds)]
    singles = [copy.deepcopy(m) for m in models]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in singles]
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    stacked_opt = torch.optim.AdamW(list(params.values()), lr=1e-4)
    template = copy.deepcopy(models[0]).to("meta")
    # torch has no vmap batching rule for the CPU's fused attention kernel (it falls back to
    # a loop over the stacked models): the stacked step uses timm's explicit attention.
    for module in template.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False

    def loss_of(p, b, x, y):
        logits = functional_call(template, (p, b), (x,))
        return F.multilabel_soft_margin_loss(logits, y)

    vectorised = torch.func.vmap(loss_of)

    def one_at_a_time(update: bool = True):
        for k, (model, opt) in enumerate(zip(singles, opts, strict=True)):
            loss = F.multilabel_soft_margin_loss(model(images[k]), labels[k])
            opt.zero_grad()
            loss.backward()
            if update:
                opt.step()

    def stacked(update: bool = True):
        loss = vectorised(params, buffers, images, labels).sum()
        stacked_opt.zero_grad()
        loss.backward()
        if update:
            stacked_opt.step()

    # Same weights, same batches: the stacked gradients are the one-at-a-time ones.
    one_at_a_time(update=False)
    stacked(update=False)
    worst = 0.0
    for name, grad in ((n, p.grad) for n, p in params.items()):
        for k, model in enumerate(singles):
            ref = dict(model.named_parameters())[name].grad
            worst = max(worst, float((grad[k] - ref).abs().max() / (ref.abs().max() + 1e-12)))

    def run_sequential():
        for _ in range(steps):
            one_at_a_time()

    def run_stacked():
        for _ in range(steps):
            stacked()

    times = _interleaved({"one_at_a_time": run_sequential, "stacked": run_stacked}, rounds=rounds)
    ratio = _ratio(times, "stacked", "one_at_a_time")
    return {
        "seeds": seeds,
        "batch": batch,
        "steps": steps,
        "rounds": rounds,
        "img_size": size,
        "one_at_a_time_images_per_s": seeds
        * batch
        * steps
        / float(np.median(times["one_at_a_time"])),
        "ratio": ratio["median"],
        "range": [ratio["min"], ratio["max"]],
        "max_rel_grad_diff": worst,
    }


def bench_cpu_bf16(
    model_config: dict,
    method_specs: dict[str, dict],
    num_classes: int,
    batch: int,
    steps: int,
    rounds: int = 5,
) -> dict:
    """Each method's training step under bf16 autocast (``train.cpu_bf16``) against its fp32
    step, in this process, the two taking turns within every round (random images and labels,
    every method past its warm-up). Per method: the median and range over rounds of the time
    ratio bf16 / fp32 (below 1: bf16 is faster)."""
    torch.manual_seed(0)
    images, labels = _random_batch(batch, model_config["img_size"], num_classes)
    built = _timed_methods(method_specs, model_config, num_classes, None)
    candidates: dict[str, Callable[[], None]] = {}
    for name, spec in method_specs.items():
        method, model, opt = built[name]
        epoch = spec.get("epoch", 10**6)  # past any warm-up: the full loss
        for precision in ("fp32", "bf16"):

            def step(method=method, model=model, opt=opt, epoch=epoch, bf16=precision == "bf16"):
                for _ in range(steps):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss, _ = method.loss(model, images, labels, epoch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

            candidates[f"{name}/{precision}"] = step
    times = _interleaved(candidates, rounds=rounds)
    result: dict[str, Any] = {"batch": batch, "steps": steps, "rounds": rounds, "methods": {}}
    for name in method_specs:
        ratio = _ratio(times, f"{name}/bf16", f"{name}/fp32")
        result["methods"][name] = {
            "fp32_images_per_s": batch * steps / float(np.median(times[f"{name}/fp32"])),
            "ratio": ratio["median"],
            "range": [ratio["min"], ratio["max"]],
        }
    return result


def bench_epochs(
    dataset_config: dict,
    model_config: dict,
    train: dict,
    method_specs: dict[str, dict],
    rounds: int = 3,
) -> dict:
    """Whole training epochs: the training loop's data pipeline and steps, per method.

    Every method runs past its warm-up (the full loss in every epoch, as in
    the step benchmark), so an AReAM or ClusterCAM epoch here is one of their
    expensive epochs; the methods take turns within each round.
    """
    torch.manual_seed(0)
    dataset, data, loader = _training_loader(
        dataset_config, model_config, train, train["batch_size"]
    )
    built = _timed_methods(method_specs, model_config, dataset.num_classes, data)
    candidates: dict[str, Callable[[], None]] = {}
    for name, spec in method_specs.items():
        method, model, opt = built[name]
        epoch = spec.get("epoch", 10**6)

        def one_epoch(method=method, model=model, opt=opt, epoch=epoch):
            model.train()
            for images, labels in loader:
                loss, _ = method.loss(model, images, labels, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        candidates[name] = one_epoch
    times = _interleaved(candidates, rounds=rounds)
    result: dict[str, Any] = {
        "images": len(data),
        "steps_per_epoch": len(loader),
        "rounds": rounds,
        "methods": {},
    }
    for name in method_specs:
        entry: dict[str, Any] = {"seconds_per_epoch": float(np.median(times[name]))}
        result["methods"][name] = _with_baseline_ratio(entry, times, name)
    return result


# ------------------------------------------------------------ CAM extraction


def bench_cams(
    model_config: dict,
    cam_config: dict,
    refiners: dict[str, dict],
    num_classes: int,
    images_n: int,
    height: int,
    width: int,
) -> dict:
    from wsss.data.classification import normalize
    from wsss.methods import CAM_REFINERS, TRAINING_METHODS
    from wsss.methods.cam_inference import CamSettings, cams_for_batch
    from wsss.ops.multiscale import pad_to_multiple

    torch.manual_seed(0)
    method = TRAINING_METHODS.get("mctformer_v2")()
    model = method.build_model(model_config, num_classes).eval()
    settings = CamSettings.from_dict(cam_config)
    images = torch.randint(0, 256, (images_n, 3, height, width), dtype=torch.uint8)
    labels = (torch.rand(images_n, num_classes) < 0.3).float()
    labels[:, 0] = 1.0
    batch = settings.batch_size

    @torch.inference_mode()
    def plain():
        for start in range(0, images_n, batch):
            x = normalize(images[start : start + batch])
            for scale in settings.scales:
                size = (round(height * scale), round(width * scale))
                xs = (
                    F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                    if scale != 1
                    else x
                )
                if settings.flip:
                    xs = torch.cat([xs, xs.flip(-1)])
                model(pad_to_multiple(xs, model.patch_size))

    floor = _timeit(plain)
    result: dict[str, Any] = {
        "images": images_n,
        "size": [height, width],
        "scales": settings.scales,
        "flip": settings.flip,
        "plain_forward_images_per_s": images_n / floor,
        "refiners": {},
    }
    for name, spec in refiners.items():
        refiner = CAM_REFINERS.get(spec["name"])(spec.get("params", {}))

        def ours(refiner=refiner):
            for start in range(0, images_n, batch):
                cams_for_batch(
                    model,
                    method,
                    refiner,
                    images[start : start + batch],
                    labels[start : start + batch],
                    settings,
                )

        seconds = _timeit(ours)
        result["refiners"][name] = {
            "images_per_s": images_n / seconds,
            "ratio_to_plain_forward": seconds / floor,
        }
    none = CAM_REFINERS.get("none")()

    def one_at_a_time():
        for i in range(images_n):
            cams_for_batch(model, method, none, images[i : i + 1], labels[i : i + 1], settings)

    reference = _timeit(one_at_a_time, repeat=1)
    baseline = result["refiners"].get("none", {}).get("images_per_s")
    result["reference_one_image_at_a_time"] = {
        "images_per_s": images_n / reference,
        "speedup_of_batched": (baseline * reference / images_n) if baseline else None,
    }
    if baseline:
        for entry in result["refiners"].values():
            entry["ratio_to_unrefined"] = baseline / entry["images_per_s"]
    return result


# ---------------------------------------------------------------- evaluation


def _voc_mask_paths(shared_data: Path, limit: int | None = None) -> list[Path]:
    folder = shared_data / "voc_masks" / "SegmentationClassAug"
    paths = sorted(folder.glob("*.png"))[:limit]
    if not paths:
        raise FileNotFoundError(
            f"no VOC masks under {folder}; set --shared-data to the folder holding voc_masks/"
        )
    return paths


def _derived_prediction(mask: np.ndarray) -> np.ndarray:
    """A deterministic, imperfect prediction made from the GT: shifted by 3 pixels, ignore -> bg."""
    pred = np.roll(mask, 3, axis=1).copy()
    pred[pred == 255] = 0
    return pred


def bench_evaluation(shared_data: str, rounds: int = 5, limit: int | None = None) -> dict:
    from wsss.data.palette import load_label_png
    from wsss.evaluation import ConfusionAccumulator

    paths = _voc_mask_paths(Path(shared_data), limit)
    # Predictions are made once, outside the timings: in the pipeline they are
    # the arrays the previous stage produced, so only reading the ground truth
    # and scoring belong to evaluation.
    predictions = [_derived_prediction(load_label_png(p)) for p in paths]

    def decode_only():
        for p in paths:
            load_label_png(p)

    def ours():
        acc = ConfusionAccumulator(21)
        for p, pred in zip(paths, predictions, strict=True):
            acc.update(load_label_png(p), pred)
        return acc.matrix

    def official_style():
        # Per image and per class boolean passes, as the official evaluation.py does.
        tp, p_count, t_count = np.zeros(21), np.zeros(21), np.zeros(21)
        for p, pred in zip(paths, predictions, strict=True):
            mask = load_label_png(p)
            valid = mask < 255
            for c in range(21):
                p_count[c] += np.sum((pred == c) & valid)
                t_count[c] += np.sum(mask == c)
                tp[c] += np.sum((mask == c) & (pred == c))
        return tp, p_count, t_count

    times = _interleaved({"decode": decode_only, "ours": ours}, rounds=rounds)
    decode, ours_s = float(np.median(times["decode"])), float(np.median(times["ours"]))
    ratio = _ratio(times, "ours", "decode")
    reference = _timeit(official_style, repeat=1)
    # The two must agree before their speeds are compared.
    conf = ours()
    tp, p_count, t_count = official_style()
    assert np.allclose(np.diag(conf), tp) and np.allclose(conf.sum(0), p_count)
    return {
        "masks": len(paths),
        "decode_masks_per_s": len(paths) / decode,
        "masks_per_s": len(paths) / ours_s,
        "ratio_to_decode": ratio["median"],
        "ratio_to_decode_range": [ratio["min"], ratio["max"]],
        "rounds": rounds,
        "target_ratio_to_decode": 1.5,
        "reference_masks_per_s": len(paths) / reference,
        "speedup_over_reference": reference / ours_s,
    }


def _fake_cams(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CAM-like maps for the GT classes of a real mask: a blurred indicator plus noise."""
    classes = np.array([c for c in np.unique(mask) if 0 < c < 255], dtype=np.int64)
    if len(classes) == 0:
        return classes, np.zeros((0, *mask.shape), np.float32)
    onehot = torch.from_numpy((mask[None] == classes[:, None, None]).astype(np.float32))[None]
    small = F.avg_pool2d(onehot, 8)
    blurred = F.interpolate(small, size=mask.shape, mode="bilinear", align_corners=False)[0].numpy()
    cams = np.clip(blurred + rng.normal(0, 0.05, blurred.shape), 0, 1).astype(np.float32)
    return classes, cams


def bench_sweep(
    shared_data: str, reference_images: int, steps: int, limit: int | None = None
) -> dict:
    from wsss.cam_store import CamReader, CamWriter, quantize
    from wsss.data.palette import load_label_png
    from wsss.evaluation import ThresholdSweep, confusion_matrix, threshold_grid

    paths = _voc_mask_paths(Path(shared_data), limit)
    rng = np.random.default_rng(0)
    thresholds = threshold_grid(0.0, (steps - 1) / 100, 0.01)
    masks = {p.stem: load_label_png(p) for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npy_dir = tmp / "npy"
        npy_dir.mkdir()
        npy_bytes = 0
        ours_path = tmp / "cams.npz"
        with CamWriter(ours_path, 20) as writer:
            for n, (image_id, mask) in enumerate(masks.items()):
                classes, cams = _fake_cams(mask, rng)
                writer.add(image_id, classes, quantize(cams))
                if n < reference_images:
                    # The official format: {class index (0-based): float32 HxW} pickled per image.
                    path = npy_dir / f"{image_id}.npy"
                    np.save(
                        path,
                        {int(c) - 1: cams[i] for i, c in enumerate(classes)},
                        allow_pickle=True,
                    )
                    npy_bytes += path.stat().st_size
        ours_bytes = ours_path.stat().st_size

        def sweep_with(ts):
            sweep = ThresholdSweep(21)
            for record in CamReader(ours_path):
                sweep.update(masks[record.image_id], record.cams, record.classes)
            return sweep.sweep(ts)

        one = _timeit(lambda: sweep_with(thresholds[:1]), repeat=3)
        full = _timeit(lambda: sweep_with(thresholds), repeat=3)

        reference_ids = list(masks)[:reference_images]

        def official_style():
            results = []
            for t in thresholds:
                conf = np.zeros((21, 21), np.int64)
                for image_id in reference_ids:
                    cam_dict = np.load(npy_dir / f"{image_id}.npy", allow_pickle=True).item()
                    mask = masks[image_id]
                    stack = np.zeros((21, *mask.shape), np.float32)
                    for c, cam in cam_dict.items():
                        stack[c + 1] = cam
                    stack[0] = t
                    conf += confusion_matrix(mask, stack.argmax(0), 21)
                results.append(conf)
            return results

        reference = _timeit(official_style, repeat=1, warmup=0)
        per_image_ours = full / len(masks)
        per_image_reference = reference / reference_images
    return {
        "images": len(masks),
        "thresholds": len(thresholds),
        "one_threshold_s": one,
        "full_sweep_s": full,
        "ratio_full_sweep_to_one_threshold": full / one,
        "target_ratio": 2.0,
        "reference_images": reference_images,
        "speedup_over_reference_per_image": per_image_reference / per_image_ours,
        "artifact": {
            "ours_bytes_per_image": ours_bytes / len(masks),
            "npy_dict_bytes_per_image": npy_bytes / reference_images,
            "ours_voc_train_aug_gib": ours_bytes / len(masks) * VOC_TRAIN_AUG / 2**30,
            "npy_dict_voc_train_aug_gib": npy_bytes / reference_images * VOC_TRAIN_AUG / 2**30,
        },
    }


# ------------------------------------------------------------ CAM memory

# VOC's image sizes, roughly: most are 500 x 375 or 375 x 500, the rest one side 500 and
# the other anywhere in 300..500 (the rare sizes are what batching by size must not hoard).
VOC_SIZES = ((375, 500), (500, 375))


def _voc_like_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random picture of a VOC size and a mask of 1-3 rectangles of random classes."""
    pick = rng.random()
    if pick < 0.6:
        h, w = VOC_SIZES[0]
    elif pick < 0.85:
        h, w = VOC_SIZES[1]
    else:
        h, w = (int(rng.integers(300, 501)), 500)
        h, w = (h, w) if rng.random() < 0.5 else (w, h)
    coarse = torch.from_numpy(rng.random((1, 3, 12, 16), dtype=np.float32) * 255)
    image = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    image = image[0].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).numpy()
    mask = np.zeros((h, w), np.uint8)
    for c in rng.choice(np.arange(1, 21), size=int(rng.integers(1, 4)), replace=False):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        mask[
            y0 : y0 + int(rng.integers(h // 8, h // 2)), x0 : x0 + int(rng.integers(w // 8, w // 2))
        ] = c
    return image, mask


def _voc_like_dataset(root: Path, images: int, seed: int = 0) -> dict:
    """A VOC-layout folder of ``images`` random VOC-size pictures and masks (split ``bench``)."""
    from PIL import Image

    from wsss.data.palette import voc_palette

    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"img_{n:06d}" for n in range(images)]
    for image_id in ids:
        image, mask = _voc_like_image(rng)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        png.save(root / "SegmentationClassAug" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/bench.txt").write_text("\n".join(ids) + "\n")
    return {
        "kind": "voc",
        "name": "voc_like",
        "root": str(root),
        "mask_dir": "SegmentationClassAug",
        "label_source": "mask",
        "train_split": "bench",
        "eval_split": "bench",
    }


def _extract(config: dict, model_path: str, out: str) -> dict:
    from wsss.methods.cam_extraction import extract_cams

    return extract_cams(config, model_path, "bench", out, progress=False)


def _evaluate(dataset: dict, cams: str) -> dict:
    from wsss.evaluation.cam_eval import evaluate_cams

    started = time.perf_counter()
    evaluate = {"thresholds": {"start": 0.0, "stop": 0.79, "step": 0.01}, "select": "exhaustive"}
    result = evaluate_cams(dataset, evaluate, cams, progress=False)
    seconds = time.perf_counter() - started
    return {"images": result["images"], "seconds": seconds, "miou": result["miou"]}


def bench_cam_memory(model_config: dict, cam: dict, sizes: tuple[int, ...], scratch: str) -> dict:
    """Peak RSS of CAM extraction and of evaluation, each in a fresh process, at several
    split sizes of VOC-size images (random weights: the cost, not the CAMs, is measured).

    ``split_cam_mib`` is the split's uint8 CAM data, what the earlier format held in
    memory whole (the writer before saving, the reader on opening)."""
    from wsss.cam_store import CamReader
    from wsss.methods import TRAINING_METHODS

    method = TRAINING_METHODS.get("mctformer_v2")()
    model = method.build_model(model_config, 20)
    model_path = Path(scratch) / "model.pt"
    torch.save(
        {
            "config": {"method": {"name": "mctformer_v2", "params": {}}, "model": model_config},
            "class_names": [str(c) for c in range(20)],
            "model": model.state_dict(),
        },
        model_path,
    )
    rows = {}
    for size in sizes:
        folder = Path(scratch) / f"voc_like_{size}"
        started = time.perf_counter()
        dataset = _voc_like_dataset(folder, size)
        made = time.perf_counter() - started
        cams_path = str(folder / "cams.npz")
        config = {"dataset": dataset, "cam": cam, "refiner": {"name": "none", "params": {}}}
        extraction = _in_subprocess(_extract, config, str(model_path), cams_path)
        evaluation = _in_subprocess(_evaluate, dataset, cams_path)
        with CamReader(cams_path) as reader:
            part = reader.parts[0]
            counts = np.diff(part.class_offsets) * part.shapes[:, 0] * part.shapes[:, 1]
        rows[str(size)] = {
            "images": size,
            "dataset_seconds": made,
            "cams": {
                "peak_rss_mib": extraction["peak_rss_mib"],
                "images_per_s": extraction["images_per_second"],
            },
            "evaluate": {
                "peak_rss_mib": evaluation["peak_rss_mib"],
                "images_per_s": evaluation["images"] / evaluation["seconds"],
            },
            "split_cam_mib": float(counts.sum()) / 2**20,
            "artifact_mib": Path(cams_path).stat().st_size / 2**20,
        }
    small, large = rows[str(min(sizes))], rows[str(max(sizes))]
    return {
        "model": model_config,
        "cam": cam,
        "sizes": rows,
        "peak_ratio_large_to_small": {
            stage: large[stage]["peak_rss_mib"] / small[stage]["peak_rss_mib"]
            for stage in ("cams", "evaluate")
        },
        "target_ratio": 1.2,
    }


def markdown_cam_memory(section: dict) -> str:
    """The CAM-memory section of bench.md."""
    m = section["model"]
    o = m["overrides"]
    rows = [
        "### CAM artifacts: peak memory vs split size",
        "",
        f"Random-weight {m['backbone']} shape (patch {o['patch_size']}, dim {o['embed_dim']}, "
        f"depth {o['depth']}), CAMs at scales {section['cam']['scales']}, flip "
        f"{section['cam']['flip']}, batch {section['cam']['batch_size']}, on VOC-size random "
        "images (500 x 375, 375 x 500 and rarer sizes); each stage in a fresh process.",
        "",
        "| images | cams peak RSS | cams img/s | evaluate peak RSS | evaluate img/s "
        "| split's uint8 CAMs (held whole before) | CAM file |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in section["sizes"].values():
        rows.append(
            f"| {row['images']} | {row['cams']['peak_rss_mib']:.0f} MiB "
            f"| {row['cams']['images_per_s']:.0f} | {row['evaluate']['peak_rss_mib']:.0f} MiB "
            f"| {row['evaluate']['images_per_s']:.0f} | {row['split_cam_mib']:.0f} MiB "
            f"| {row['artifact_mib']:.0f} MiB |"
        )
    r = section["peak_ratio_large_to_small"]
    rows += [
        "",
        f"Largest over smallest split: cams {r['cams']:.2f}x, evaluate {r['evaluate']:.2f}x "
        f"(target ≤ {section['target_ratio']:.1f}x).",
    ]
    return "\n".join(rows) + "\n"


# -------------------------------------------------------------------- driver


def aream_decomposition(train_specs: dict[str, dict]) -> dict[str, dict]:
    """Where AReAM's extra time goes: for each AReAM training spec, the same spec with
    one of its costly parts switched off (the flip pass; its bf16 autocast, i.e. the
    code's fp32; PAR), named ``key[knob=false]``. Step-benchmark rows only, never
    recipes the grid runs; a part already off gets no row."""
    from wsss.methods import TRAINING_METHODS

    rows = {}
    for key, spec in train_specs.items():
        if spec["name"] != "aream":
            continue
        settings = {**TRAINING_METHODS.get("aream").defaults, **spec["params"]}
        for knob in ("cam_flip", "label_pass_bf16", "par"):
            if settings[knob]:
                rows[f"{key}[{knob}=false]"] = {**spec, "params": {**spec["params"], knob: False}}
    return rows


def run_bench(params: dict, shared_data: str, quick: bool = False) -> dict:
    from wsss.config import cam_config, training_config, training_key, variant_spec
    from wsss.methods import TRAINING_METHODS
    from wsss.models import build_model

    global _IN_PROCESS
    _IN_PROCESS = quick
    grid = params["grid"]
    dataset = grid["datasets"][0]
    model_config = _model_config(params, dataset, quick)
    num_classes = params["datasets"][dataset].get("generator", {}).get("num_classes", 20)
    train_specs = {}
    depth = build_model(model_config, num_classes).depth
    for variant in grid["methods"]:
        key = training_key(params, variant)
        if key not in train_specs:
            spec = training_config(params, dataset, key)["method"]
            if TRAINING_METHODS.get(spec["name"])(spec["params"]).upstream():
                # The weights' values do not change the cost of a step: stand-ins in place of
                # the file the entropy_weights rule would compute from a trained baseline.
                spec = {**spec, "params": {**spec["params"], "entropy_weights": list(range(depth))}}
            train_specs[key] = spec
    step_specs = {**train_specs, **aream_decomposition(train_specs)}
    refiners = {}
    for variant in grid["methods"]:
        spec = variant_spec(params, variant)
        refiners.setdefault(
            spec["refine"], {"name": spec["refine"], "params": spec["refine_params"]}
        )
    cam = cam_config(params, dataset, grid["methods"][0])["cam"]
    size = model_config["img_size"]
    report: dict[str, Any] = {
        "machine": _machine(),
        "dataset": dataset,
        "model": model_config,
        "quick": quick,
    }
    with tempfile.TemporaryDirectory() as scratch:
        data = _bench_dataset(params, dataset, scratch, quick)
        report["training"] = _in_subprocess(
            bench_training,
            model_config,
            step_specs,
            num_classes,
            8 if quick else 32,
            1 if quick else 5,
            1 if quick else 5,
            data,
        )
        if data is not None:
            report["epochs"] = _in_subprocess(
                bench_epochs,
                data["dataset"],
                model_config,
                data["train"],
                train_specs,
                1 if quick else 3,
            )
    report["cams"] = _in_subprocess(
        bench_cams, model_config, cam, refiners, num_classes, 4 if quick else 128, size, size
    )
    masks = 8 if quick else None
    report["evaluation"] = _in_subprocess(bench_evaluation, shared_data, 1 if quick else 5, masks)
    report["sweep"] = _in_subprocess(
        bench_sweep, shared_data, 4 if quick else 100, 10 if quick else 80, masks
    )
    report["cam_memory"] = run_cam_memory(params, quick)
    return report


def run_cam_memory(params: dict, quick: bool = False, sizes: tuple[int, ...] | None = None) -> dict:
    """The CAM-memory section alone: the grid's first dataset's model shape with patch 16
    (the presets' patch; the smoke shape's patch 8 would spend the time on attention)."""
    from wsss.config import cam_config

    dataset = params["grid"]["datasets"][0]
    model_config = _model_config(params, dataset, quick)
    model_config["overrides"] = {**model_config.get("overrides", {}), "patch_size": 16}
    cam = {**cam_config(params, dataset, params["grid"]["methods"][0])["cam"], "batch_size": 8}
    if quick:
        cam["scales"] = [1.0]
    sizes = sizes or ((2, 4) if quick else (500, 5000))
    with tempfile.TemporaryDirectory() as scratch:
        return bench_cam_memory(model_config, cam, sizes, scratch)


def _model_config(params: dict, dataset: str, quick: bool) -> dict:
    """The dataset's model config with random weights; --quick: QUICK_MODEL's shape."""
    from wsss.config import dataset_block

    config = {**dataset_block(params, dataset, "model"), "pretrained": False, "weights": None}
    if quick:
        config["img_size"] = QUICK_MODEL["img_size"]
        config["overrides"] = {
            **config.get("overrides", {}),
            "embed_dim": QUICK_MODEL["embed_dim"],
            "num_heads": QUICK_MODEL["num_heads"],
        }
    return config


def _bench_dataset(params: dict, dataset: str, scratch: str, quick: bool) -> dict | None:
    """A fresh copy of the synthetic benchmark (same generator settings) in ``scratch``
    for the training benchmarks, or None for a real dataset (random batches then)."""
    from wsss.config import dataset_block, dataset_config
    from wsss.data.datasets import prepare_dataset
    from wsss.data.kinds import kind_of

    config = dataset_config(params, dataset, full=True)
    if not kind_of(config).generated:
        return None
    generator = dict(config.get("generator", {}))
    if quick:
        generator["num_train"] = min(generator.get("num_train", 96), 8)
        generator["num_val"] = min(generator.get("num_val", 8), 2)
    config = {**config, "root": str(Path(scratch) / dataset), "generator": generator}
    prepare_dataset(config, progress=False)
    return {"dataset": config, "train": dataset_block(params, dataset, "train")}


def _machine() -> dict:
    import os
    import platform

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown(report: dict) -> str:
    t, c, e, s = report["training"], report["cams"], report["evaluation"], report["sweep"]
    rows = ["| stage | measured | ratio | target |", "|---|---|---|---|"]
    for name, m in t["methods"].items():
        spread = _range_text(m.get("ratio_to_mctformer_v2_range")) if name != "mctformer_v2" else ""
        target = "(decomposition)" if "[" in name else "≤ 1.5x baseline"
        rows.append(
            f"| train {name} | {m['images_per_s']:.0f} img/s | {m['ratio_to_floor']:.2f}x plain fwd+bwd; {m.get('ratio_to_mctformer_v2', 1):.2f}x baseline{spread} | {target} |"
        )
    if "epochs" in report:
        ep = report["epochs"]
        for name, m in ep["methods"].items():
            spread = (
                _range_text(m.get("ratio_to_mctformer_v2_range")) if name != "mctformer_v2" else ""
            )
            rows.append(
                f"| epoch {name} ({ep['images']} images, loss past warm-up) | {m['seconds_per_epoch']:.2f} s/epoch | {m.get('ratio_to_mctformer_v2', 1):.2f}x baseline epoch{spread} | ≤ 1.5x baseline |"
            )
    for name, m in c["refiners"].items():
        rows.append(
            f"| CAMs, refiner {name} | {m['images_per_s']:.0f} img/s | {m['ratio_to_plain_forward']:.2f}x plain forward; {m.get('ratio_to_unrefined', 1):.2f}x unrefined | ≤ 1.3x plain; refiner ≤ 1.5x |"
        )
    ref = c["reference_one_image_at_a_time"]
    rows.append(
        f"| CAMs one image at a time (reference) | {ref['images_per_s']:.0f} img/s | batched is {ref['speedup_of_batched']:.1f}x faster | |"
    )
    rows.append(
        f"| evaluation, {e['masks']} VOC masks | {e['masks_per_s']:.0f} masks/s | {e['ratio_to_decode']:.2f}x PNG decoding{_range_text(e.get('ratio_to_decode_range'))}; {e['speedup_over_reference']:.1f}x faster than per-class loops | ≤ 1.5x |"
    )
    rows.append(
        f"| {s['thresholds']}-step sweep, {s['images']} masks | {s['full_sweep_s']:.1f} s | {s['ratio_full_sweep_to_one_threshold']:.2f}x one threshold; {s['speedup_over_reference_per_image']:.0f}x faster than re-reading .npy per threshold | ≤ 2x |"
    )
    a = s["artifact"]
    rows.append(
        f"| CAM storage | {a['ours_bytes_per_image'] / 1024:.0f} KiB/image | .npy dicts {a['npy_dict_bytes_per_image'] / 1024:.0f} KiB/image; VOC train_aug {a['ours_voc_train_aug_gib']:.2f} vs {a['npy_dict_voc_train_aug_gib']:.2f} GiB | |"
    )
    mem = " / ".join(
        f"{k} {report[k]['peak_rss_mib']:.0f}"
        for k in ("training", "epochs", "cams", "evaluation", "sweep")
        if k in report
    )
    rows.append(f"| peak RSS (MiB) | {mem} | | |")
    text = "\n".join(rows) + "\n"
    if report.get("quick"):
        text = (
            "**--quick: a check that every section runs (smallest sizes, one process), "
            "not a measurement.**\n\n" + text
        )
    if "cam_memory" in report:
        text += "\n" + markdown_cam_memory(report["cam_memory"])
    return text


def _range_text(span: list[float] | None) -> str:
    return f" ({span[0]:.2f}–{span[1]:.2f} over rounds)" if span else ""


def write_bench(report: dict, out_dir: str | Path) -> None:
    from wsss.io import write_json, write_text

    write_json(Path(out_dir) / "bench.json", report)
    write_text(Path(out_dir) / "bench.md", markdown(report))


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench.py [params.yaml] [--configfile F] [--out-dir results]``."""
    import argparse

    from wsss.config import load_params
    from wsss.runtime import set_threads, setup_logging

    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description="measure every stage as ratios")
    parser.add_argument("params", nargs="?", default="params.yaml")
    parser.add_argument("--configfile", action="append", default=[])
    parser.add_argument(
        "--shared-data",
        default=str(repo.parent / "shared" / "data"),
        help="folder with voc_masks/ (the real VOC masks the evaluation benchmark reads)",
    )
    parser.add_argument("--out-dir", default="results")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every section at the smallest size, in this process, in seconds "
        "(a check that it runs, not a measurement)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--section",
        choices=["cam-memory"],
        help="run only this section; print its markdown and JSON, write nothing",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="cam-memory: split sizes (default 500 5000)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    set_threads(args.threads)
    params = load_params(args.params, *args.configfile)
    if args.section == "cam-memory":
        section = run_cam_memory(params, args.quick, tuple(args.sizes) if args.sizes else None)
        print(markdown_cam_memory(section))
        print(json.dumps({"cam_memory": section}, indent=2, sort_keys=True))
        return 0
    report = run_bench(params, args.shared_data, quick=args.quick)
    write_bench(report, args.out_dir)
    print(markdown(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
