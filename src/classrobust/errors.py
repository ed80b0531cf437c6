"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class ClassrobustError(Exception):
    """A problem the user can fix (bad data, bad file); the CLI exits with code 1."""

    exit_code = 1


class UsageError(ClassrobustError, ValueError):
    """A bad argument or name; the CLI exits with code 2, like argparse."""

    exit_code = 2


class DataNotFoundError(ClassrobustError, FileNotFoundError):
    """A dataset's files are missing; the message says how to get them."""


class CheckpointError(ClassrobustError):
    """A checkpoint is missing, truncated, corrupt or does not match its sidecar."""


class NonFiniteError(ClassrobustError):
    """A model produced NaN or infinite values (a broken model, or training that diverged)."""


class TrainingDivergedError(NonFiniteError):
    """Training hit a non-finite loss; ``epoch`` is the epoch it happened in, ``step`` the optimiser step
    by which it was caught. The last completed epoch is kept for ``--resume``."""

    def __init__(self, message: str, *, epoch: int, step: int):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
