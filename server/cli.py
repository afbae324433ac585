"""The `t2serve` command line. Each command group lives in server/commands/ and registers
itself here."""

import typer

from server.commands import replay, scaling, serve

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Budget-aware test-time scaling server."
)

for group in (serve, scaling, replay):
    group.register(app)
