"""User-facing errors.

Anything a user can cause (a bad config value, a missing or corrupt file, an impossible layer map) raises a
subclass of :class:`MomError`. The CLI turns it into one line, ``mom: error: <message>``, and exit code 2;
library users catch it like any other exception. Bugs stay ordinary exceptions with tracebacks.
"""


class MomError(Exception):
    """A problem with the user's input, explained in one line."""


class ConfigError(MomError, ValueError):
    """An invalid configuration field or combination of fields."""


class CheckpointError(MomError):
    """A checkpoint or model directory that cannot be read or does not fit the requested model."""


class DataError(MomError):
    """A corpus, token file or dataset that cannot be used."""


class MissingExtraError(MomError, ImportError):
    """A feature whose package is an optional extra that is not installed: the message names the pip command."""

    def __init__(self, what: str, package: str, extra: str):
        self.what, self.package, self.extra = what, package, extra
        super().__init__(f"{what} needs the '{package}' package (the '{extra}' extra), which is not installed: "
                         f"pip install 'mixture-of-modules[{extra}]'")
