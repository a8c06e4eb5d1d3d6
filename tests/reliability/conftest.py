"""The reliability suite's fixture: the `quanta` command line run in this process (fast; on Prefect's session test
server when a test asks for `prefect_server`), with its exit code and captured output."""
from __future__ import annotations

import pytest

from reliability_cli import CliResult


@pytest.fixture
def quanta(capfd):
    """quanta(*argv) -> CliResult: `quanta argv...` run in this process, its exit code and captured output."""
    from flows.cli import main

    def run(*argv: str) -> CliResult:
        capfd.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            rc = int(e.code or 0)
        out, err = capfd.readouterr()
        return CliResult(rc, out, err)

    return run
