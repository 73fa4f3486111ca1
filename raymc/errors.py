"""Errors a user can cause. Their messages name the file, key or flag and say what to do."""


class RaymcError(Exception):
    """Base class: the CLIs print these as one line and exit with status 2."""


class ConfigError(RaymcError):
    """A bad flag, YAML key or combination of settings."""


class DataError(RaymcError):
    """A missing, malformed or inconsistent data file or folder."""
