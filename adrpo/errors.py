"""The one error class for a user's configuration and input mistakes.

The CLI prints a :class:`ConfigError` as one line (its message names the field, the file or
the sample) and exits with status 2; every other exception keeps its traceback, because it
is a bug, a library failure or a runtime problem such as a reward that breaks at step 800
(:class:`adrpo.rewards.base.RewardError`), and the user needs to see where it came from.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value, file or input row that adrpo refuses; the message names it.

    A ``ValueError`` subclass, so callers that catch ``ValueError`` keep working.
    """
