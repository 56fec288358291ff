"""Where the pipeline's log records go. `pipeline` and `models` log through stdlib loggers
named under "stm" (`stm.ingest`, `stm.pruning`, ...). Inside a Prefect flow run, Prefect
attaches its run-log handler to that hierarchy, so the records appear in the run's logs
and UI; outside one, the CLI prints them on stderr. No Prefect import here: Prefect is
told by a setting it reads when it configures its logging."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping

from rich.console import Console
from rich.logging import RichHandler

from pipeline.errors import ConfigError

ROOT_LOGGER = "stm"
LEVEL_VARIABLE = "STM_LOG_LEVEL"
EXTRA_LOGGERS_VARIABLE = "PREFECT_LOGGING_EXTRA_LOGGERS"
LEVEL_NAMES = ("DEBUG", "INFO", "WARNING", "ERROR")


def route_to_prefect(environ: MutableMapping[str, str]) -> None:
    """Before Prefect is imported: have it attach its run-log handler to the "stm" loggers
    (alongside any extra loggers the user named), and drop rather than warn about the stm
    records logged outside a run, which the console shows already."""
    named = [name.strip() for name in environ.get(EXTRA_LOGGERS_VARIABLE, "").split(",")]
    named = [name for name in named if name]
    if ROOT_LOGGER not in named:
        environ[EXTRA_LOGGERS_VARIABLE] = ",".join([*named, ROOT_LOGGER])
    environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def console_level(verbose: int, configured: str | None, default: int) -> int:
    """The console's threshold: `configured` (STM_LOG_LEVEL, a name or a number) or the
    command's default, one level lower per `-v`, never below DEBUG."""
    base = default if configured is None else parse_level(configured)
    return max(logging.DEBUG, base - 10 * verbose)


def parse_level(text: str) -> int:
    if text.strip().isdigit():
        return int(text)
    name = text.strip().upper()
    if name not in LEVEL_NAMES:
        raise ConfigError(
            f"{LEVEL_VARIABLE}={text}: not a log level (one of {', '.join(LEVEL_NAMES)})"
        )
    return logging.getLevelName(name)


class ConsoleHandler(RichHandler):
    """The one console handler of the stm loggers: on stderr, so stdout stays clean for
    `--json`, whichever stream sys.stderr is at the time of the write (a test runner's).
    Rich's layout on a terminal; one plain line per record elsewhere (a file, a CI log),
    where wrapping at 80 columns would only break lines apart."""

    def __init__(self, level: int) -> None:
        super().__init__(
            level=level,
            console=Console(stderr=True),
            show_time=False,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
        )

    def emit(self, record: logging.LogRecord) -> None:
        if self.console.is_terminal:
            super().emit(record)
            return
        try:
            self.console.file.write(f"{record.levelname:<8} {self.format(record)}\n")
        except Exception:  # a handler must not raise into the code that logged
            self.handleError(record)


def log_to_console(level: int) -> None:
    """Show stm records at `level` and above on stderr, replacing any console handler set
    before. The stm loggers still pass INFO to the other handlers (Prefect's run logs)
    when the console shows less. They stop propagating to the root logger, whose own
    console handler (Prefect installs one) would print every line a second time."""
    stm = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in stm.handlers if isinstance(h, ConsoleHandler)]:
        stm.removeHandler(handler)
    stm.addHandler(ConsoleHandler(level))
    stm.setLevel(min(level, logging.INFO))
    stm.propagate = False


def print_through(console: Console) -> None:
    """Print stm records through `console` from now on: a live display on it redraws
    around them, where another console's writes would cut through it."""
    for handler in logging.getLogger(ROOT_LOGGER).handlers:
        if isinstance(handler, ConsoleHandler):
            handler.console = console
