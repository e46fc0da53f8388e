"""Signals as interruptions: SIGTERM unwinds like Ctrl-C, and an error an interrupt caused is the interrupt."""
from __future__ import annotations

import contextlib
import signal
import threading


class Interruptions:
    """The signals that arrived while `interrupting_signals` was in force, in order."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        #: False once the work is over: a late signal is recorded, not raised into the final report
        self.raising = True

    def handle(self, signum: int, _frame) -> None:
        self.signals.append(signum)
        if self.raising:
            raise KeyboardInterrupt

    def cause_of(self, error: BaseException) -> int | None:
        """The signal `error` is the consequence of: the first that arrived, else SIGINT where a KeyboardInterrupt
        is in its chain (torch's exporter catches Ctrl-C and raises its own error from it, or while handling it)."""
        if self.signals:
            return self.signals[0]
        pending, seen = [error], set()
        while pending:
            error = pending.pop()
            if error is None or id(error) in seen:
                continue
            if isinstance(error, KeyboardInterrupt):
                return signal.SIGINT
            seen.add(id(error))
            pending += [error.__cause__, error.__context__]
        return None


@contextlib.contextmanager
def interrupting_signals():
    """SIGTERM unwinds like Ctrl-C: both raise KeyboardInterrupt in the main thread, so that every cleanup
    (staging folders, temporary files, the docker runner's container) runs and outputs stay whole or absent.

    Yields the `Interruptions` record. A handler that someone else installed, or an ignored signal (as nohup
    and background jobs have), is left as it is; the previous handlers come back at the end.
    """
    interruptions = Interruptions()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                previous[signum] = signal.signal(signum, interruptions.handle)
    try:
        yield interruptions
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
