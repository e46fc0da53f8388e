"""Rendering a template that runs an override in a child process, bounded in time, memory and output.

An override is the user's code, and the sandbox bounds neither a loop of loops that runs for hours nor a string
built by `*` that takes all the memory. So such a render runs in a fresh interpreter (no fork, no SIGALRM: a
bundle may be built in a thread or a Ray worker) that caps its own address space and output, and is killed when
it runs past the wall-clock bound. It gets the overrides' text (read once, when the folder was checked), the
template's name and the context, pickled: JSON would turn tuples into lists, which the `py` filter tells apart.
Its answer is the text, the one-line error the same render would raise here, or a bug's traceback.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

from builder.core.errors import UserError


def render_bounded(sources: dict[str, tuple[str, str]], template: str, context: dict, reached: list[str]) -> str:
    """`template` rendered with `context` in a child process within the bounds of builder.targets.render; one line
    naming the overrides it runs (`reached`) when it runs past one."""
    from builder.targets import render

    request = {"sources": sources, "template": template, "context": context,
               "max_chars": render.OVERRIDE_OUTPUT_CHARS, "memory": render.OVERRIDE_MEMORY_BYTES}
    named = render.overrides_named(reached)
    seconds = render.OVERRIDE_SECONDS
    try:
        # PYTHONSAFEPATH: the working folder is the user's, and a pickle.py or jinja2/ there is not ours to import
        done = subprocess.run([sys.executable, "-m", __name__], input=pickle.dumps(request), capture_output=True,
                              timeout=seconds, env={**os.environ, "PYTHONSAFEPATH": "1"})
    except subprocess.TimeoutExpired:
        raise UserError(f"{named} did not finish rendering within {seconds:g} s",
                        hint="does a loop run too long?") from None
    if done.returncode < 0:  # killed: out of memory where Python could not raise MemoryError
        raise UserError(f"{named} failed to render: its process was killed (signal {-done.returncode})")
    if done.returncode != 0:
        raise RuntimeError(f"the process rendering '{template}' failed:\n{done.stderr.decode(errors='replace')}")
    kind, *answer = pickle.loads(done.stdout)
    if kind == "text":
        return answer[0]
    if kind == "error":
        raise UserError(answer[0], hint=answer[1])
    raise RuntimeError(f"rendering '{template}' failed in its child process:\n{answer[0]}")


def _cap_memory(limit: int) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def main() -> None:
    """The child: one request on stdin, one answer on stdout."""
    import traceback

    from builder.targets import render

    request = pickle.load(sys.stdin.buffer)
    render.OVERRIDE_MEMORY_BYTES = request["memory"]  # as the parent has it: the error names it
    renderer = render.Renderer.of_sources(request["sources"])
    _cap_memory(request["memory"])
    try:
        answer = ("text", renderer.render_here(request["template"], request["context"], request["max_chars"]))
    except UserError as e:
        answer = ("error", str(e), e.hint)
    except Exception:  # a shipped template that failed on its own: the parent raises it as the bug it is
        answer = ("bug", traceback.format_exc())
    sys.stdout.buffer.write(pickle.dumps(answer))


if __name__ == "__main__":
    main()
