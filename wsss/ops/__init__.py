"""Low-level tensor operations shared by the methods and the stages: PAR, dense CRF,
multi-scale/flip inference geometry and per-class normalisation. Nothing here knows
about methods, datasets on disk or the pipeline."""
