"""The two kinds of failure: the user's mistake (one line, exit 2) and our bug (traceback, exit 1)."""
from __future__ import annotations

import difflib
from typing import Iterable

#: exit codes, mapped in exactly one place (builder.cli.main)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_GATE_FAILED = 3  # a check ran and the artifact failed it (builder verify)
EXIT_RELEASE_INCOMPLETE = 4  # some builds of a release failed (builder release)


class BuilderError(Exception):
    """Base of every error builder raises on purpose."""


class UserError(BuilderError):
    """Something the user can fix: bad option, missing file, unusable checkpoint. Shown as one line."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{text} ({self.hint})" if self.hint else text


class GateFailed(UserError):
    """A release gate ran and the artifact failed it: one line, its own exit code."""

    exit_code = EXIT_GATE_FAILED


class ReleaseIncomplete(UserError):
    """Builds of a release failed (each said why in the summary); the rest were built and pushed."""

    exit_code = EXIT_RELEASE_INCOMPLETE


class MissingExtraError(UserError):
    """An optional dependency is not installed; names the extra that brings it."""

    def __init__(self, module: str, extra: str):
        super().__init__(f"this needs the Python package '{module}', which is not installed",
                         hint=f"pip install 'model-bundle-builder[{extra}]'")


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
