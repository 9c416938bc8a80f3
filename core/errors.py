"""The one error type for bad user input: the CLI prints its message on one line and exits 2."""


class InputError(ValueError):
    """Bad input (file, shape, dtype, argument), with a message that names the problem and the fix."""
