"""wsss: a reproducible experiment pipeline for transformer-based WSSS.

Data flows ``wsss.data`` -> ``wsss.models`` -> ``wsss.methods`` -> ``wsss.cams``
-> ``wsss.evaluation`` -> ``wsss.report``; ``wsss.cli`` is the thin entry point
that the Snakemake rules call.
"""

__version__ = "0.1.0"
