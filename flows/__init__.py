"""Prefect flows that chain tasks, the `quanta` CLI, and deployments."""
from storage.settings import configure_prefect

configure_prefect()  # before anything imports prefect
