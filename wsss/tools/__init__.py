"""Commands that read ``params.yaml`` themselves (above :mod:`wsss.config`), outside the DAG:
checking params, tuning a refiner on a held-out split. Same interface as :mod:`wsss.stages`."""
