"""Subcommands of `deid-gateway`, one module per group; each exposes `register(app)`."""

from rich.console import Console

#: Consoles for command output; soft_wrap keeps long paths on one line when piped.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
