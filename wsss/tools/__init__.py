"""Commands that read ``params.yaml`` themselves (above :mod:`wsss.config`), outside the DAG:
checking params, running the DAG with recovery (``wsss run``), tuning a refiner on a
held-out split. Same interface as :mod:`wsss.stages`."""
