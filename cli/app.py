"""The `t2serve` typer app. Each command group lives in its own module and registers itself."""

from typing import Annotated

import typer

from cli import calibrate, replay, scaling, serve
from cli.errors import OneLineUsageErrors
from server import __version__

app = typer.Typer(
    cls=OneLineUsageErrors,  # a bad option is one line and exit 2, as every other error
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs wrap as prose, not at source lines
    help="Budget-aware test-time scaling server.",
)

for group in (serve, scaling, replay, calibrate):
    group.register(app)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"t2serve {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Budget-aware test-time scaling server."""


if __name__ == "__main__":
    app()
