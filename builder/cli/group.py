"""The `builder` click group, which also lists commands it builds only when they run or their help is asked."""
from __future__ import annotations

from gettext import gettext as _
from typing import Any, Callable, Optional

import click

from builder.core.version import __version__


class LazyGroup(click.Group):
    """A group that also knows commands it has not built yet: `lazy_command(name, attach)` registers a callback
    (its docstring is the help) and the function that attaches its options, and the command object is made on
    the first `get_command` of that name (running it, its --help, completion). Listing them builds none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[Callable[..., Any], Callable[[Callable[..., Any]], Callable[..., Any]]]] = {}

    def lazy_command(self, name: str, attach: Callable[[Callable[..., Any]], Callable[..., Any]]):
        def register(callback: Callable[..., Any]) -> Callable[..., Any]:
            self.lazy[name] = (callback, attach)
            return callback

        return register

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: Optional[click.Context], cmd_name: str) -> Optional[click.Command]:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            callback, attach = self.lazy[cmd_name]
            callback.__dict__.pop("__click_params__", None)  # what a failed earlier attempt left
            self.add_command(click.command(cmd_name)(attach(callback)))
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            unknown = getattr(e, "command_name", None)  # click's NoSuchCommand suggests among the built commands
            if unknown is None:
                raise
            raise type(e)(unknown, possibilities=self.list_commands(ctx), ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own list, where a command not built yet is described by its callback's docstring."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name][0].__doc__)
            if not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _command in rows)
            with formatter.section(_("Commands")):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="builder")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def cli(quiet: bool) -> None:
    """Turn trained YOLO-NAS / PP-YOLOE detectors into deployable bundles."""
    from builder.core.log import configure

    configure(quiet)
