"""Options a mode does not read are refused, not ignored.

`replay --route SET --policy esc` would otherwise print a route replay as if `--policy` had
been heard, and `calibrate --from-replay F --samples 8` a fit of every recorded sample. An
option counts as given when its value differs from the command's default (typer cannot tell
an explicit default from none, and such a value changes nothing anyway).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

import typer
from typer.models import OptionInfo


def option_flag(command: Callable[..., Any], name: str) -> str:
    """The option as a user types it: its first declaration, else typer's `--snake-case`."""
    hint = typing.get_type_hints(command, include_extras=True).get(name)
    for info in getattr(hint, "__metadata__", ()):
        if not isinstance(info, OptionInfo):
            continue
        # in `Annotated`, typer takes a first positional string as the declaration
        first = [info.default] if isinstance(info.default, str) else []
        decls = [*(info.param_decls or ()), *first]
        long = [d for d in decls if d.startswith("--")]
        if long:
            return "/".join(long)  # "--skip-empty/--no-skip-empty", whichever was typed
    return "--" + name.replace("_", "-")


def refuse_unread(
    command: Callable[..., Any], mode: str, values: Mapping[str, object], reads: Collection[str]
) -> None:
    """Exit 2 naming the first option given a non-default value that `mode` does not read."""
    params = inspect.signature(command).parameters
    for name, value in values.items():
        if name in reads or name not in params:
            continue
        if value != params[name].default:
            typer.echo(f"error: {option_flag(command, name)} does not apply with {mode}", err=True)
            raise typer.Exit(2)
