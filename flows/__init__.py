"""Prefect flows, one module per study (each reads like its pipeline map), the study registry, the `quanta` CLI and
the deployments. Nothing here configures Prefect on import: `flows.prefect_home.configure_prefect()` does, called by
the CLI, the deployments and the test fixtures before Prefect is imported."""
