"""Progress of a release: one live line per running build (its node and stage), then one line per finished one.

On a terminal the running builds' lines are redrawn in place; elsewhere (a CI log) a line is written when a
build's node or stage changes. Quiet (`builder -q`) shows nothing.
"""
from __future__ import annotations

import logging
import sys


class LiveLines:
    def __init__(self, total: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.finished_count = 0
        self.enabled = logging.getLogger("builder").isEnabledFor(logging.INFO)
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.drawn = 0  # lines of the live block on the terminal now
        self.last: dict[str, str] = {}

    def _line(self, p, state, nodes) -> str:
        if not state:
            return f"[{p.number}] {p.label}: waiting for a node"
        node = nodes.get(state.get("node"), (state.get("node") or "")[:8])
        again = f", attempt {state['attempts']}" if state.get("attempts", 0) > 1 else ""
        return f"[{p.number}] {p.label} on {node}{again}: {state.get('stage', '')}"

    def show(self, running, nodes) -> None:
        if not self.enabled:
            return
        lines = [self._line(p, state, nodes) for p, state in running]
        if self.tty:
            self._clear()
            width = 200
            for line in lines:
                self.stream.write(line[:width] + "\n")
            self.drawn = len(lines)
            self.stream.flush()
            return
        for (p, _state), line in zip(running, lines):
            if self.last.get(p.key) != line:
                self.last[p.key] = line
                self.stream.write(f"note: {line}\n")
        self.stream.flush()

    def finished(self, p, outcome, nodes) -> None:
        self.finished_count += 1
        if not self.enabled:
            return
        self._clear()
        node = nodes.get(outcome.node, (outcome.node or "")[:8])
        what = (f"built in {outcome.seconds:.1f} s on {node}" if outcome.status == "built"
                else f"FAILED: {outcome.error}")
        self.stream.write(f"note: ({self.finished_count}/{self.total}) [{p.number}] {p.label}: {what}\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def close(self) -> None:
        self._clear()
        if self.enabled:
            self.stream.flush()
