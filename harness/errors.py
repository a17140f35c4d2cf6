"""The two ways a call is refused before any kernel runs.

Both subclass ValueError so ordinary `except ValueError` code keeps working.
"""


class InputError(ValueError):
    """An argument is malformed: wrong rank, shape, dtype, device or value range.

    The message names the argument, the value it had and what is allowed.
    """


class UnsupportedError(ValueError):
    """The inputs are valid, but the chosen backend cannot run them here.

    Unavailable backend (missing package, no CUDA device), a size outside the
    backend's declared limits, a dtype or device it does not support, or a
    workspace over the memory budget. The message says which and why.
    """
