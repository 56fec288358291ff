"""The `stm` command line: every user-facing step, with `--help`, `--json` where scripts
consume the output, and one clear line (no traceback) for any pipeline error."""

from pipeline.cli import audit, curate, deploy, experiment, report, run  # noqa: F401  (registers)
from pipeline.cli.app import cli, main

__all__ = ["cli", "main"]
