"""Loading and validating ``params.yaml``, and resolving one job's settings from it.

``params.yaml`` is the single source of truth. Snakemake validates it through
:func:`validate_params` before any job starts; each rule then passes a job the
settings it reads, built in one place (:mod:`wsss.config.jobs`, ``job_config``), so
Snakemake's params trigger reruns exactly the jobs whose settings changed.

- :mod:`wsss.config.schema`: the schema, :class:`ParamsError`, :func:`deep_merge`;
- :mod:`wsss.config.loading`: reading the params file and its overrides;
- :mod:`wsss.config.validation`: every check, before any job;
- :mod:`wsss.config.resolve`: a run's merged blocks, training runs, CAM rule names;
- :mod:`wsss.config.jobs`: every job's ``--config`` and every rule's resources.
"""

from wsss.config.jobs import (
    EXECUTION_KEYS,
    JOBS,
    TRAIN_OFF_DEFAULTS,
    attention_config,
    attention_figure_config,
    cam_config,
    cam_group_config,
    cam_shards_config,
    conversion_config,
    conversion_family,
    conversion_stage,
    decoder_config,
    entropy_config,
    evaluate_config,
    execution,
    gallery_config,
    job_config,
    job_resources,
    plots_config,
    prepare_config,
    pretrain_config,
    pseudo_label_config,
    rule_resources,
    run_label,
    segmentation_config,
    table_config,
    training_config,
)
from wsss.config.loading import load_params
from wsss.config.resolve import (
    build_variant_methods,
    cam_groups,
    cam_rule_name,
    dataset_block,
    dataset_config,
    model_depth,
    rule_family,
    shard_size,
    training_key,
    training_variant,
    upstream_inputs,
    variant_block,
    variant_label,
    variant_spec,
)
from wsss.config.schema import ParamsError, deep_merge, normalise_params, results_dir
from wsss.config.validation import ParamsSources, validate_params

__all__ = [
    "EXECUTION_KEYS",
    "JOBS",
    "TRAIN_OFF_DEFAULTS",
    "ParamsError",
    "ParamsSources",
    "attention_config",
    "attention_figure_config",
    "build_variant_methods",
    "cam_config",
    "cam_group_config",
    "cam_groups",
    "cam_rule_name",
    "cam_shards_config",
    "conversion_config",
    "conversion_family",
    "conversion_stage",
    "dataset_block",
    "dataset_config",
    "decoder_config",
    "deep_merge",
    "entropy_config",
    "evaluate_config",
    "execution",
    "gallery_config",
    "job_config",
    "job_resources",
    "plots_config",
    "load_params",
    "model_depth",
    "normalise_params",
    "prepare_config",
    "pretrain_config",
    "pseudo_label_config",
    "results_dir",
    "rule_family",
    "rule_resources",
    "run_label",
    "segmentation_config",
    "shard_size",
    "table_config",
    "training_config",
    "training_key",
    "training_variant",
    "upstream_inputs",
    "validate_params",
    "variant_block",
    "variant_label",
    "variant_spec",
]
