"""The `builder` command: parse, call the API, print. Exit codes are decided here and nowhere else.

Starting it stays cheap (benchmarks/cli_startup.py): each command imports what it runs only when it runs, and
the commands whose options are described by the pydantic specs (export, bundle) are built only when they
run or their help is asked; `builder --help` lists them from their docstrings.
"""
from __future__ import annotations

import sys

import click

# importing the commands registers them on `cli`
from builder.cli.commands import (bench_command, fetch_command, models_command, pull_command, push_command,
                                  release_command, verify_command)
from builder.cli.flags import (BUNDLE_FLAGS, EXPORT_FLAGS, NEGATED_HELP, TENSORRT_FLAGS, TRITON_FLAGS, bundle_flags,
                               registered_choices, spec_options, spec_values, target_flags)
from builder.cli.group import LazyGroup, cli
from builder.core.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UserError
from builder.core.version import __version__

# export_command and bundle_command (see __getattr__) stay out: `import *` would build them, pydantic and all
__all__ = [
    "BUNDLE_FLAGS", "EXPORT_FLAGS", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "LazyGroup", "NEGATED_HELP",
    "TENSORRT_FLAGS", "TRITON_FLAGS", "bench_command", "bundle_flags", "cli", "entry_point", "fetch_command",
    "main", "models_command", "pull_command", "push_command", "registered_choices", "release_command",
    "spec_options", "spec_values", "target_flags", "verify_command",
]


def __getattr__(name: str) -> click.Command:
    """`export_command` and `bundle_command`: the command objects, built on first use as the group builds them."""
    lazy = {"export_command": "export", "bundle_command": "bundle"}
    if name in lazy:
        return cli.get_command(None, lazy[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command and maps its failure to an exit code and one line on stderr.

    SIGTERM unwinds like Ctrl-C (every cleanup runs) and ends as `error: terminated`, 143; Ctrl-C as
    `error: interrupted`, 130, also when a library caught the KeyboardInterrupt and raised its own error.
    """
    from builder.core.signals import interrupting_signals

    with interrupting_signals() as interruptions:
        try:
            try:
                cli.main(args=argv, prog_name="builder", standalone_mode=False)
            finally:
                interruptions.raising = False
        except click.exceptions.Exit as e:
            return e.exit_code
        except (Exception, KeyboardInterrupt) as e:
            return _failure(e, interruptions.cause_of(e))
        return 0


#: exit codes of a run stopped by a signal: 128 + its number, as a shell reports it
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _failure(error: BaseException, interrupted: int | None) -> int:
    """The exit code of a failed command, after its one line (or, for a bug, its traceback) on stderr.
    `interrupted`: the signal that the failure is the consequence of, if any."""
    import signal

    if interrupted == signal.SIGTERM:
        click.echo("error: terminated", err=True)
        return EXIT_TERMINATED
    if interrupted is not None or isinstance(error, click.Abort):
        click.echo("error: interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(error, UserError):
        click.echo(f"error: {error.one_line()}", err=True)
        return getattr(error, "exit_code", EXIT_USER_ERROR)
    if isinstance(error, click.ClickException):
        hint = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
        click.echo(f"error: {' '.join(error.format_message().split())}{hint}", err=True)
        return EXIT_USER_ERROR
    # our bug: keep the traceback, it is what a bug report needs
    import traceback

    traceback.print_exception(error)
    click.echo(f"builder {__version__} hit an internal error (a bug): please report it with the traceback above",
               err=True)
    return EXIT_INTERNAL_ERROR


def entry_point() -> None:
    code = main()
    # the outcome is decided and reported: a Ctrl-C or SIGTERM during the interpreter's teardown (a second or
    # so with torch loaded) would only turn it into a traceback from an atexit callback or a death by signal
    import signal

    # whatever handler is in place by now (a library may have installed its own, which kills the process)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)
