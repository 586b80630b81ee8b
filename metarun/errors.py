"""The one exception type for user mistakes: the CLI prints its message, never a traceback."""

from __future__ import annotations


class ConfigError(Exception):
    """A user-fixable problem. The message names the setting and how to fix it."""
