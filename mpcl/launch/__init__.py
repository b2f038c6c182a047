"""Orchestration: Ray Train (``train``) and Ray Tune + Optuna (``sweep``). The training loop
itself lives in ``mpcl.engine`` and knows nothing of Ray; importing this package does not
import Ray either (the heavy imports happen inside the functions)."""


class LaunchError(RuntimeError):
    """A problem the user can fix (a wrong cluster address, a bad sweep file): one line."""

    exit_code = 2   # what the command line exits with, after printing the line
