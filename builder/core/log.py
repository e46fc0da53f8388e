"""builder's logger: warnings and notices on stderr, one line each."""
import logging

logger = logging.getLogger("builder")


def warn(message: str) -> None:
    logger.warning(message)


def notice(message: str) -> None:
    logger.info(message)


class LineFormatter(logging.Formatter):
    """'note: ...', 'warning: ...', 'error: ...': builder's own level names, only on builder's handler.

    (logging.addLevelName would rename the levels for every library in the process.)
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            label = "error"
        elif record.levelno >= logging.WARNING:
            label = "warning"
        else:
            label = "note"
        return f"{label}: {record.message}"


def configure(quiet: bool) -> None:
    """One line per message on stderr: 'note: ...', 'warning: ...', 'error: ...'."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False
