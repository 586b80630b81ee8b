"""Exceptions the CLI reports as one paragraph (never a traceback), with their exit statuses."""

from __future__ import annotations


class MetarunError(Exception):
    """A problem the user can act on. The message says what happened and what to do."""

    exit_status = 2


class ConfigError(MetarunError):
    """A setting, file or dataset that cannot work. The message names the setting and the fix."""


class TrainingError(MetarunError):
    """Training cannot go on (non-finite loss, checkpoint write failure)."""

    exit_status = 3


class Preempted(MetarunError):
    """SIGTERM/SIGINT: the current iteration finished and a checkpoint was written.

    Exit status 75 (EX_TEMPFAIL, "try again") so a scheduler's requeue, or the user,
    can resume with trainer.resume=auto.
    """

    exit_status = 75
