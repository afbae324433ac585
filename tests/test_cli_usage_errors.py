"""Usage errors of every `t2serve` command are one plain line and exit 2, as the CLI's own
errors are: an option out of its range (`--perms 0`, `--seed -1`, `--port 70000`), a value that
is not a number, an unknown option or command. typer drew them in a rich box under the usage."""

from __future__ import annotations

import typing

import pytest
from typer.models import OptionInfo
from typer.testing import CliRunner

from cli.app import app
from cli.mode_options import option_flag

runner = CliRunner()


def _out_of_range() -> list[tuple[str, str, str]]:
    """(command, option, value) for each side of every option's `min`/`max`, on every command:
    a range added later is covered without a line here."""
    cases = []
    for command in app.registered_commands:
        callback = command.callback
        assert callback is not None
        hints = typing.get_type_hints(callback, include_extras=True)
        for name, hint in hints.items():
            for info in getattr(hint, "__metadata__", ()):
                if not isinstance(info, OptionInfo):
                    continue
                flag = option_flag(callback, name)
                if info.min is not None:
                    cases.append((command.name or callback.__name__, flag, f"{info.min - 1:g}"))
                if info.max is not None:
                    cases.append((command.name or callback.__name__, flag, f"{info.max + 1:g}"))
    return cases


RANGES = _out_of_range()


def one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_the_ranges_are_found() -> None:
    """The walk finds the ranges the issue names (and so is not vacuous)."""
    found = {(command, flag) for command, flag, _ in RANGES}
    assert {
        ("replay", "--perms"),
        ("replay", "--seed"),
        ("replay", "--tune-perms"),
        ("calibrate", "--samples"),
        ("serve", "--port"),
        ("fit", "--starts"),
    } <= found


@pytest.mark.parametrize(("command", "flag", "value"), RANGES)
def test_an_option_out_of_its_range_is_one_line_naming_it(
    command: str, flag: str, value: str
) -> None:
    line = one_line_error([command, flag, value])
    assert f"'{flag}'" in line and ("greater than" in line or "less than" in line)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["replay", "--perms", "abc"], "'--perms'"),
        (["replay", "--bogus"], "No such option: --bogus"),
        (["bogus"], "No such command 'bogus'"),
        (["--bogus"], "No such option: --bogus"),
        (["predict", "--curves"], "'--curves' requires an argument"),
    ],
)
def test_other_usage_errors_are_one_line_too(args: list[str], says: str) -> None:
    assert says in one_line_error(args)


def test_help_is_still_help() -> None:
    assert runner.invoke(app, ["replay", "--help"]).exit_code == 0
    shown = runner.invoke(app, [])  # no_args_is_help: the help, not an error line
    assert "Usage" in shown.stdout + shown.stderr and "error:" not in shown.stderr
