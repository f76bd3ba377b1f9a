"""Exceptions that the command line turns into one line on stderr and exit status 2."""


class InputError(ValueError):
    """A user input (file, option, map content) is unusable; the message says why."""
