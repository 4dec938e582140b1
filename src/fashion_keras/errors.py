"""The one exception type a user can fix by changing what they asked for, and the interrupts
(Ctrl-C, SIGTERM) that stop a command cleanly."""

import signal


class UserError(ValueError):
    """A mistake in what was asked (a config, a path, an argument) or a fixable condition
    of the machine (a full disk); the message says what was wrong and how to fix it.

    The command line prints these as one line; anything else is unexpected and gets a
    traceback (with `FASHION_KERAS_DEBUG=1`).
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises `KeyboardInterrupt`, so that a `kill` stops a run
    as cleanly. The command line exits with 143 (128 + 15) for it, 130 for Ctrl-C."""


def interrupt_status(interrupt):
    """The exit status for an interrupt: 143 for `Terminated` (SIGTERM), 130 for Ctrl-C."""
    return 143 if isinstance(interrupt, Terminated) else 130


_pending = []  # the interrupt `on_signal` raised last, until `raise_pending_interrupt` takes it


def handle_signals():
    """Installs `on_signal` for SIGTERM, and for Ctrl-C unless it is ignored (a shell's
    background job); forgets an earlier interrupt. The command line calls this first."""
    _pending.clear()
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)


def on_signal(signum, frame):
    """Raises `Terminated` for SIGTERM, `KeyboardInterrupt` for Ctrl-C, and records it.

    Python swallows an exception raised while a `__del__` runs (it prints "Exception ignored
    in ..."), and a signal may arrive just then: at an epoch's end, as TensorFlow's iterators
    are collected. Training calls `raise_pending_interrupt` after every batch, so such a
    signal still stops it.
    """
    _pending[:] = [Terminated if signum == signal.SIGTERM else KeyboardInterrupt]
    raise _pending[0]()


def raise_pending_interrupt():
    """Raises the interrupt `on_signal` recorded, if any, once."""
    if _pending:
        raise _pending.pop()()
