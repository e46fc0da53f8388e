"""Jinja rendering of bundle files: the shipped templates, overridable one file at a time by relative path.

One immutable sandboxed environment per build with StrictUndefined: a template can read the context and
nothing else, cannot change it (each render gets its own deep copy, so the manifest never shares an object
with a template), and a misspelt variable is an error, not an empty string. Values reach generated code and
config only through the escaping filters (`py`, `pbtxt`, `json`), never as raw text.

An override is the user's code: any exception while it renders is one line naming it, and a render that runs
an override (it, or a shipped template that includes it) runs in a child process bounded in time, memory and
output (builder.targets.override_process). The overrides are read once, when the folder is checked: links
are refused, and the loader serves those files' text and nothing else of the folder. A shipped template that
fails is a bug, unless the user's values made it fail (an unrepresentable value, a misspelt key).
"""
from __future__ import annotations

import copy
import json
import math
import os
import pathlib
import stat

from builder.core.errors import UserError, did_you_mean

#: the bounds of a render that runs an override: wall-clock seconds, characters of output, bytes of memory
OVERRIDE_SECONDS = 60.0
OVERRIDE_OUTPUT_CHARS = 16 << 20
OVERRIDE_MEMORY_BYTES = 1 << 30


def _shipped() -> pathlib.Path:
    """The top-level templates/ folder: the data package builder.templates (builder/templates links to it)."""
    import importlib.util

    return pathlib.Path(importlib.util.find_spec("builder.templates").origin).resolve().parent  # located, not run


SHIPPED = _shipped()
TEMPLATE_SUFFIX = ".j2"


def shipped_templates() -> list[str]:
    return sorted(p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob(f"*{TEMPLATE_SUFFIX}"))


def read_overrides(overrides: str | pathlib.Path) -> dict[str, tuple[str, str]]:
    """Relative name -> (text, the file it was read from) of every override in the folder; refuses a name that
    matches no shipped template, a link (it could bring in a file from outside the folder) and anything but files
    and folders."""
    folder = pathlib.Path(overrides)
    if not folder.is_dir():
        raise UserError(f"templates folder '{folder}' does not exist")
    root = folder.resolve()
    known = shipped_templates()
    sources = {}
    for top, folders, files in os.walk(root):
        for entry in sorted(folders) + sorted(files):
            path = pathlib.Path(top) / entry
            name = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise UserError(f"'{name}' in the templates folder '{folder}' is a link",
                                hint="copy what it links to into the folder: a link can bring in a file from outside")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise UserError(f"'{name}' in the templates folder '{folder}' is not a file")
            if name not in known:
                raise UserError(f"template override '{name}' in '{folder}' matches no shipped template",
                                hint=did_you_mean(name, known) or f"shipped: {', '.join(known)}")
            sources[name] = (_read_text(path, name, folder), os.path.normpath(path))
    return sources


def _read_text(path: pathlib.Path, name: str, folder: pathlib.Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a link swapped in since the walk: refused
        with open(fd, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read template override '{name}' in '{folder}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"template override '{name}' in '{folder}' is not UTF-8 text ({e.reason} at byte "
                        f"{e.start})") from None


class Renderer:
    """Renders templates by relative path; a file in `overrides` replaces the shipped one of that path."""

    def __init__(self, overrides: str | pathlib.Path | None = None):
        self._use(read_overrides(overrides) if overrides is not None else {})

    @classmethod
    def of_sources(cls, sources: dict[str, tuple[str, str]]) -> "Renderer":
        """A renderer of overrides already read (read_overrides), as the child process that renders them gets them."""
        renderer = cls.__new__(cls)
        renderer._use(sources)
        return renderer

    def _use(self, sources: dict[str, tuple[str, str]]) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.sources = sources
        self.overridden: list[str] = sorted(sources)
        self._override_files = {filename: name for name, (_, filename) in sources.items()}  # frame file -> name
        self._reached: dict[str, list[str]] = {}
        loader = jinja2.ChoiceLoader([_override_loader(sources), jinja2.FileSystemLoader(str(SHIPPED))])
        self.env = ImmutableSandboxedEnvironment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                                                 keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(py=python_literal, pbtxt=pbtxt_string, json=json_text)

    def render(self, template: str, context: dict) -> str:
        """The template rendered with (a copy of) the context: here, or bounded in a child process if it runs an
        override."""
        reached = self.overrides_reached(template)
        if not reached:
            return self.render_here(template, context)
        from builder.targets.override_process import render_bounded

        return render_bounded(self.sources, template, context, reached)

    def overrides_reached(self, template: str) -> list[str]:
        """The overrides a render of `template` may run: itself, and what it includes, imports or extends, in turn
        (every override where a name is only known when it renders, or a template does not parse)."""
        if not self.overridden:
            return []
        if template not in self._reached:
            import jinja2
            import jinja2.meta

            seen, pending = set(), [template]
            while pending:
                name = pending.pop()
                if name in seen:
                    continue
                seen.add(name)
                try:
                    source = self.env.loader.get_source(self.env, name)[0]
                    referenced = list(jinja2.meta.find_referenced_templates(self.env.parse(source)))
                except jinja2.TemplateNotFound:
                    continue
                except jinja2.TemplateSyntaxError:
                    referenced = [None]
                if None in referenced:
                    seen.update(self.overridden)
                    break
                pending.extend(referenced)
            self._reached[template] = sorted(seen & set(self.overridden))
        return self._reached[template]

    def render_here(self, template: str, context: dict, max_chars: int | None = None) -> str:
        """The template rendered in this process; with `max_chars`, refused once its output grows past that."""
        import jinja2

        try:
            pieces = self.env.get_template(template).generate(**copy.deepcopy(context))
            if max_chars is None:
                return "".join(pieces)
            text, size = [], 0
            for piece in pieces:
                size += len(piece)
                if size > max_chars:
                    raise UserError(f"{overrides_named(self.overrides_reached(template))} rendered more than "
                                    f"{max_chars / (1 << 20):g} MiB of text", hint="does a loop run too long?")
                text.append(piece)
            return "".join(text)
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


def overrides_named(names: list[str]) -> str:
    return ("override " if len(names) == 1 else "overrides ") + ", ".join(f"'{name}'" for name in names)


def _override_loader(sources: dict[str, tuple[str, str]]):
    """Jinja's loader of the overrides read when the folder was checked: their text and nothing else of the folder."""
    import jinja2

    def get_source(name: str):
        if name not in sources:
            return None  # not overridden: the next loader has it
        text, filename = sources[name]
        return text, filename, lambda: True

    return jinja2.FunctionLoader(get_source)


def _reason(error: BaseException) -> str:
    """The first line of an exception's message, named by its type where the message alone says too little."""
    import jinja2

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0][:200] if lines else ""
    if isinstance(error, RecursionError):
        return "it includes or calls itself without end (maximum recursion depth exceeded)"
    if isinstance(error, MemoryError):
        return f"it needs more than the {OVERRIDE_MEMORY_BYTES / (1 << 30):g} GiB of memory an override may use"
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
