"""One error tree for gpuslo, after aiokafka's: every error says whether retrying helps.

Loops decide from ``retriable`` alone (a produce retried, a scrape rescheduled,
an alert re-queued) instead of knowing every class, and the command line turns
any :class:`GpusloError` into one red line and an exit code rather than a
traceback.  :class:`InputError` is the family of bad input (a config, a spec, a
payload, a file): its message names the input and what is wrong, and trying
again never helps.
"""

from __future__ import annotations


class GpusloError(Exception):
    """Root of gpuslo's errors; ``retriable`` says whether trying again may help.

    Subclasses set a class default; an instance may override it (a Kafka request
    that timed out is retriable, one the broker rejected is not).
    """

    retriable: bool = False

    def __init__(self, message: str = "", *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class InputError(GpusloError, ValueError):
    """Bad input: the message names the input (file, line, field) and what is wrong.

    Also a ``ValueError``, which is what Python code expects of a bad value.
    """

    retriable = False


__all__ = ["GpusloError", "InputError"]
