# Helpers shared by the rules: validation, the grid, per-job settings, code inputs.
import json
import sys
from pathlib import Path

# Import the package from this checkout even when it is not installed.
sys.path.insert(0, str(Path(workflow.basedir).parent))

from wsss import config as wsss_config  # noqa: E402

# Fails before any job starts, naming the key (schema + method registry).
wsss_config.validate_params(config, source="params.yaml (with any --configfile overrides)")

GRID = config["grid"]
DATASETS = GRID["datasets"]
METHODS = GRID["methods"]
SEEDS = GRID["seeds"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    seed=r"\d+",


def code(*parts):
    """Package source files a rule depends on: Snakemake does not see edits to
    imported modules by itself (workflow-notes 3.3b), so they are listed as inputs."""
    root = Path(workflow.basedir).parent / "wsss"
    files = set()
    for part in ("__init__.py", "io.py", "runtime.py", "registry.py", "cli.py", *parts):
        path = root / part
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return sorted(str(f.relative_to(root.parent)) for f in files)


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def train_key(wildcards):
    return wsss_config.training_key(config, wildcards.method)


def train_keys():
    return sorted({wsss_config.training_key(config, m) for m in METHODS})


def entropy_weights_path(wildcards):
    """AReAM's entropy weights for a training run whose method params say
    entropy_weights: baseline (made by the entropy_weights rule); none otherwise."""
    if wsss_config.needs_entropy_weights(config, wildcards.train):
        return f"results/runs/{wildcards.dataset}/entropy/seed{wildcards.seed}/entropy_weights.json"
    return []


def entropy_baseline_model(wildcards):
    """The trained baseline (same dataset and seed) the entropy weights are computed from."""
    run = wsss_config.entropy_baseline_run()
    return f"results/runs/{wildcards.dataset}/train/{run}/seed{wildcards.seed}/model.pt"


def eval_split(dataset):
    return config["datasets"][dataset]["eval_split"]


def model_path(wildcards):
    return f"results/runs/{wildcards.dataset}/train/{train_key(wildcards)}/seed{wildcards.seed}/model.pt"


def decoder_methods():
    """Grid methods whose training method has its own segmentation decoder."""
    from wsss.methods import TRAINING_METHODS

    return [m for m in METHODS if TRAINING_METHODS.get(config["methods"][m]["train"]).has_decoder]


def run_meta(wildcards):
    return {
        "dataset": wildcards.dataset,
        "method": wildcards.method,
        "seed": int(wildcards.seed),
        "label": wsss_config.variant_label(config, wildcards.method),
    }


def rule_resources(rule_name):
    """Resources of a rule from params.yaml (falling back to resources.default)."""
    spec = {**config["resources"]["default"], **config["resources"].get(rule_name, {})}
    return spec
