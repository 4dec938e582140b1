"""The one exception type a user can fix by changing what they asked for."""


class UserError(ValueError):
    """A mistake in what was asked (a config, a path, an argument) or a fixable condition
    of the machine (a full disk); the message says what was wrong and how to fix it.

    The command line prints these as one line; anything else is unexpected and gets a
    traceback (with `FASHION_KERAS_DEBUG=1`).
    """
