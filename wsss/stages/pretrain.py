"""Stage ``pretrain``: the proxy backbone, pretrained on the generic synthetic corpus.

Writes a timm-layout state dict (``.pth``) and a summary beside it (``.json``:
the config, corpus size, objective, whether it uses masks, the loss history and
the time taken), which ``model.pretrained: true`` + ``model.weights: <file>``
load for every method and seed, as an ImageNet checkpoint would be. The corpus
is generated in memory from its seed; nothing else is read. Not part of the
default grid, which trains from scratch (``docs/synthetic.md``).
"""

from __future__ import annotations

import argparse
import json

from wsss.pretrain import pretrain
from wsss.stages import json_arg

HELP = "pretrain the proxy ViT on the generic synthetic corpus (timm-layout .pth + .json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="the pretrain block of params.yaml: corpus, model, objective, epochs, seed, ...",
    )
    p.add_argument("--out", required=True, help="weights to write (.pth); the summary goes beside")
    # Not add_common: pretraining runs on the CPU only (wsss.pretrain picks no device), so it
    # takes no --device/--workers that it would ignore.
    p.add_argument("--log", help="also write the log to this file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    if not args.out.endswith(".pth"):
        raise ValueError(
            f"--out {args.out}: expected a .pth file (the summary is written as .json)"
        )
    summary = pretrain(args.config, args.out, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "history")}))
    return 0
