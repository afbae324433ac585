"""The `t2serve` typer app. Each command group lives in its own module and registers itself."""

import typer

from cli import calibrate, replay, scaling, serve

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs wrap as prose, not at source lines
    help="Budget-aware test-time scaling server.",
)

for group in (serve, scaling, replay, calibrate):
    group.register(app)


if __name__ == "__main__":
    app()
