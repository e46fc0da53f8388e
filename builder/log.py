"""builder's logger: warnings and notices on stderr, one line each."""
import logging

logger = logging.getLogger("builder")


def warn(message: str) -> None:
    logger.warning(message)


def notice(message: str) -> None:
    logger.info(message)
