"""Errors a user fixes: a setting, a path, a step not run yet, storage out of reach.

Every job's frame (``cluster.job.run_job``) prints such an error as one line,
``error: <what> — <what to do>``, and exits with status 2; any other exception keeps its
traceback (a bug, or a failure to report). Each message says both halves, ``<what>`` and,
after `` — ``, what to do; a class's ``hint`` stands in for the second half where a
message has none (``ConfigError``'s many range checks).
"""

from __future__ import annotations

SEPARATOR = " — "
"""Between what went wrong and what to do, in a user error's message."""


class UserError(Exception):
    """An error the user fixes; its message says what is wrong and what to do."""

    hint = "check the job's arguments"
    """What to do, when the message does not say (no ``SEPARATOR`` in it)."""

    def line(self) -> str:
        """The one line a job prints: ``error: <what> — <what to do>``."""
        msg = " ".join(str(self).split())  # one line, whatever the message's layout
        return f"error: {msg}" if SEPARATOR in msg else f"error: {msg}{SEPARATOR}{self.hint}"


class NotFoundError(UserError, FileNotFoundError):
    """Something the job reads is not there: a data path, a run's students, a stage's
    output (a ``FileNotFoundError``, so callers that catch those still do)."""

    hint = "check the path, or run the stage that writes it first"


class UnknownNameError(UserError, ValueError):
    """A name (a category, a part) that no table knows (a ``ValueError``)."""

    hint = "use one of the names listed"
