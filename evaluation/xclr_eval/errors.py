"""The evaluation's one error type for the user."""


class EvalError(Exception):
    """A bad option, data set or checkpoint: `xclr-eval` prints its message as one line and exits 2. Anything else
    (a bug here, in torch or in scikit-learn) keeps its traceback."""
