"""Errors of every data set: each message says what was looked for and how to fix it."""


class DataError(Exception):
    """Data missing or unusable."""


class DataNotFoundError(DataError, FileNotFoundError):
    """No accepted layout of the data set was found where it was looked for."""


class DataCorruptError(DataError, ValueError):
    """A data file exists but is truncated, corrupt or has the wrong contents."""
