"""The CLI's errors: one plain line, `error: <what>`, and exit 2.

`fail` is how a command says what is wrong with its input. typer draws a usage error (an
option out of its `min`/`max` range, a value that is not a number, an unknown or missing
option, an unknown command) in a rich box under the usage line instead; `OneLineUsageErrors`
is the app's command group, so every command and option prints those as one line too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` on stderr and exit `code` (2: the input is wrong)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def is_usage_error(exc: BaseException) -> bool:
    """Click's UsageError (typer ≥ 0.2x carries its own copy of click, hence by name), but not
    the help that `no_args_is_help` shows through one."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "UsageError" in names and "NoArgsIsHelpError" not in names


@contextmanager
def one_line() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not is_usage_error(exc):
            raise
        message = " ".join(getattr(exc, "format_message", exc.__str__)().split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


class OneLineUsageErrors(TyperGroup):
    """The app's group: its own options and command names, and everything a command parses,
    run inside it (a command's context is made by the group's `invoke`)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line():
            return super().invoke(ctx)
