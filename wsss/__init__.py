"""wsss: a reproducible experiment pipeline for transformer-based WSSS.

Data flows ``wsss.data`` -> ``wsss.models`` -> ``wsss.methods`` (CAMs, stored by
``wsss.cam_store``) -> ``wsss.evaluation`` -> ``wsss.report``; ``wsss.stages`` are
the pipeline's steps and ``wsss.cli`` the thin entry point that the Snakemake rules
call. The layers are the import-linter contracts in pyproject.toml.
"""

__version__ = "0.1.0"
