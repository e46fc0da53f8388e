"""builder's logger: warnings and notices on stderr, one line each."""
import logging

logger = logging.getLogger("builder")


def warn(message: str) -> None:
    logger.warning(message)


def notice(message: str) -> None:
    logger.info(message)


def configure(quiet: bool) -> None:
    """One line per message on stderr: 'note: ...', 'warning: ...', 'error: ...'."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False
    logging.addLevelName(logging.INFO, "note")
    logging.addLevelName(logging.WARNING, "warning")
