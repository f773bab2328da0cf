"""The trainer's one error type for the user."""


class TrainError(Exception):
    """A bad option, data set or checkpoint: `xclr-train` prints its message as one line and exits 2. Anything else
    (a bug here, in torch or in numpy) keeps its traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message (its type when it has none), to quote in a TrainError."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
