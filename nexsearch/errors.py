"""Errors that reach the user as one line and exit status 2."""


class UserError(ValueError):
    """A mistake in what the user asked for: bad input, a missing file, a wrong name.

    The CLI prints ``nexsearch: <message>`` and exits with status 2, without a traceback.
    It subclasses ``ValueError`` so library callers can catch it as one.
    """


class RunStopped(RuntimeError):
    """A search that had to stop (a full disk): the CLI prints one line and exits with status 1.
    The run directory stays consistent and the same command resumes it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, SLURM, docker stop) taken like Ctrl-C: the run stops cleanly, its state says
    "stopped", and the same command resumes it. The CLI prints one line and exits with status 143."""
