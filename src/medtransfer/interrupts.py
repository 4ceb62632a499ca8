"""Ctrl-C and SIGTERM as one exception that reaches the caller of a training.

Lightning (2.x, ``trainer/call.py``) catches ``KeyboardInterrupt`` inside ``fit``/``test`` and calls
``sys.exit(1)``; on SIGTERM it only sets ``trainer.received_sigterm`` and later raises ``SIGTERMException``, a
``SystemExit`` whose status is 0. Neither lets the runner record the run as interrupted, and both exit with the
wrong status. While :func:`signals_interrupt` is active, both signals raise :class:`Interrupted` instead: not a
``KeyboardInterrupt``, so Lightning tears the trainer down and re-raises it unchanged.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised by the first SIGINT or SIGTERM; a BaseException so that ``except Exception`` does not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` in this block, and restore the handlers after it.

    Only the first signal raises: repeated Ctrl-C must not cut short the recording of the first one (Lightning
    does the same). Outside the main thread signal handlers cannot be set, and the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, signal.SIG_DFL if before is None else before)
