"""Prefect tasks: the computations. Each task body calls a plain, testable function of the same module."""
from storage.settings import configure_prefect

configure_prefect()  # before anything imports prefect
