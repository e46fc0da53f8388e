"""Jinja rendering of bundle files: the shipped templates, overridable one file at a time by relative path.

One immutable sandboxed environment per build with StrictUndefined: a template can read the context and
nothing else, cannot change it (each render gets its own deep copy, so the manifest never shares an object
with a template), and a misspelt variable is an error, not an empty string. Values reach generated code and
config only through the escaping filters (`py`, `pbtxt`, `json`), never as raw text.

An override is the user's code: any exception while it renders is one line naming it. A shipped template
that fails is a bug, unless the user's values made it fail (an unrepresentable value, a misspelt key).
"""
from __future__ import annotations

import copy
import json
import math
import os
import pathlib

from builder.core.errors import UserError, did_you_mean



def _shipped() -> pathlib.Path:
    """The top-level templates/ folder: the data package builder.templates (builder/templates links to it)."""
    import importlib.util

    return pathlib.Path(importlib.util.find_spec("builder.templates").origin).resolve().parent  # located, not run


SHIPPED = _shipped()
TEMPLATE_SUFFIX = ".j2"


def shipped_templates() -> list[str]:
    return sorted(p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob(f"*{TEMPLATE_SUFFIX}"))


class Renderer:
    """Renders templates by relative path; a file in `overrides` replaces the shipped one of that path."""

    def __init__(self, overrides: str | pathlib.Path | None = None):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        search = [str(SHIPPED)]
        self.overridden: list[str] = []
        self._override_files: dict[str, str] = {}  # file the loader reads -> relative name
        if overrides is not None:
            folder = pathlib.Path(overrides)
            if not folder.is_dir():
                raise UserError(f"templates folder '{folder}' does not exist")
            root = folder.resolve()
            known = shipped_templates()
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                name = path.relative_to(root).as_posix()
                if name not in known:
                    raise UserError(f"template override '{name}' in '{folder}' matches no shipped template",
                                    hint=did_you_mean(name, known) or f"shipped: {', '.join(known)}")
                self.overridden.append(name)
                self._override_files[os.path.normpath(str(root / name))] = name
            search.insert(0, str(root))
        self.env = ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(search),
                                                 undefined=jinja2.StrictUndefined, autoescape=False,
                                                 keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(py=python_literal, pbtxt=pbtxt_string, json=json_text)

    def render(self, template: str, context: dict) -> str:
        import jinja2

        try:
            return self.env.get_template(template).render(**copy.deepcopy(context))
        except jinja2.TemplateSyntaxError as e:
            name = e.name or template
            raise UserError(f"{self._origin(name)} '{name}' line {e.lineno}: {e.message}") from None
        except jinja2.TemplateNotFound as e:
            includer = self._failed_override(e) or template
            raise UserError(f"{self._origin(includer)} '{includer}' includes '{e.name}', which does not "
                            f"exist") from None
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError, TypeError, ValueError) as e:
            # the user's values (or template) made it fail: one line even for a shipped template
            culprit = self._failed_override(e) or template
            raise UserError(f"{self._origin(culprit)} '{culprit}' failed to render: {_reason(e)}") from None
        except UserError:
            raise
        except Exception as e:  # an override is user code: ZeroDivisionError, RecursionError, OverflowError, ...
            culprit = self._failed_override(e)
            if culprit is None:
                raise  # a shipped template failed on its own: a bug, with its traceback
            raise UserError(f"override '{culprit}' failed to render: {_reason(e)}") from None

    def _origin(self, name: str) -> str:
        return "override" if name in self.overridden else "shipped template"

    def _failed_override(self, error: BaseException) -> str | None:
        """The innermost override on the error's traceback (Jinja names template frames by their file)."""
        found = None
        tb = error.__traceback__
        while tb is not None:
            name = self._override_files.get(os.path.normpath(tb.tb_frame.f_code.co_filename))
            found = name or found
            tb = tb.tb_next
        return found


def _reason(error: BaseException) -> str:
    """The first line of an exception's message, named by its type where the message alone says too little."""
    import jinja2

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0][:200] if lines else ""
    if isinstance(error, RecursionError):
        return "it includes or calls itself without end (maximum recursion depth exceeded)"
    if isinstance(error, (jinja2.UndefinedError, jinja2.exceptions.SecurityError, TypeError, ValueError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _defined(value):
    """StrictUndefined fails when printed, not when passed to a filter: make a filter fail the same way."""
    import jinja2

    if isinstance(value, jinja2.Undefined):
        str(value)  # raises UndefinedError naming the variable
    return value


def python_literal(value) -> str:
    """A Python literal for str/int/float/bool/None and lists/tuples/dicts of them: safe inside generated code."""
    value = _defined(value)
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} into generated code")
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = ", ".join(python_literal(v) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{python_literal(k)}: {python_literal(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write a {type(value).__name__} into generated code")


def pbtxt_string(value) -> str:
    """A double-quoted protobuf text-format string (C escapes, UTF-8 kept), for any string or JSON-able value."""
    value = _defined(value)
    text = value if isinstance(value, str) else json_text(value)
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ch == "\n":
            escaped.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\{ord(ch):03o}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def json_text(value) -> str:
    value = _defined(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
