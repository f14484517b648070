"""Output conventions shared by every command.

Data goes to stdout (tables or one JSON object), messages go to stderr as one line each, errors
map to the exit codes of ``bknr_cluster.errors`` (0 ok, 1 operational, 2 usage/validation,
3 no leader); ``status`` adds 4 for a degraded cluster (cluster.py ``ClusterState.exit_code``).
``NO_COLOR`` is honoured by rich itself; we also drop markup styling when it is set so piped
output stays plain.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bknr_cluster.errors import BknrError, ConfigError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def stdout_console() -> Console:
    # Created per call so CliRunner's replaced sys.stdout is picked up.
    return Console(file=sys.stdout, no_color=_no_color(), highlight=False, soft_wrap=True,
                   width=None if sys.stdout.isatty() else 160)


def stderr_console() -> Console:
    return Console(file=sys.stderr, no_color=_no_color(), highlight=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    """One JSON object on stdout: the machine-readable answer of a command."""
    typer.echo(json.dumps(obj, sort_keys=True, default=str))


def info(message: str) -> None:
    """A one-line human message on stderr."""
    typer.echo(message, err=True)


def error_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"error: {text}"


def exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, BknrError):
        return int(getattr(exc, "exit_code", 1))
    return 1


def guarded(fn: F) -> F:
    """Map the project's errors to one stderr line and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ConfigError as exc:
            # Every problem with its path, one per line: the operator fixes the file in one pass.
            for path, msg in exc.problems:
                info(f"error: {path}: {msg}" if path else f"error: {msg}")
            raise typer.Exit(exc.exit_code) from None
        except BknrError as exc:
            info(error_line(exc))
            raise typer.Exit(exit_code_of(exc)) from None
        except KeyboardInterrupt:
            info("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:
            info(f"error: {exc}")
            raise typer.Exit(1) from None
        except Exception as exc:  # e.g. an SSH channel dying mid-command: one line, exit 1
            if os.environ.get("BKNRCTL_DEBUG"):
                raise
            info(f"error: {type(exc).__name__}: {error_line(exc)[len('error: '):]} "
                 "(BKNRCTL_DEBUG=1 for a traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive action; ``--yes`` skips, and without a TTY we never prompt."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} -- refusing without a terminal; pass --yes to confirm")
    if not typer.confirm(question, default=False, err=True):
        raise UsageError("aborted by the operator")


def confirm_typed(question: str, expected: str, yes: bool) -> None:
    """The escalated confirmation: the operator types ``expected`` back."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} -- refusing without a terminal; pass --yes to confirm")
    answer = typer.prompt(f"{question}\nType {expected!r} to continue", default="", err=True,
                          show_default=False)
    if answer.strip() != expected:
        raise UsageError("confirmation did not match; nothing was done")


@contextmanager
def progress(description: str, total: float | None = None, quiet: bool = False) -> Iterator[Any]:
    """A rich progress bar (or spinner without ``total``) on stderr, hidden when not a TTY/quiet."""
    console = stderr_console()
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns.append(BarColumn())
    columns.append(TimeElapsedColumn())
    disable = quiet or not console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=disable) as prog:
        task = prog.add_task(description, total=total)

        class Handle:
            def update(self, completed: float | None = None, description: str | None = None,
                       total: float | None = None) -> None:
                kw: dict[str, Any] = {}
                if completed is not None:
                    kw["completed"] = completed
                if description is not None:
                    kw["description"] = description
                if total is not None:
                    kw["total"] = total
                prog.update(task, **kw)

        yield Handle()
