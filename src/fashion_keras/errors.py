"""The one exception type a user can fix by changing what they asked for."""


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
