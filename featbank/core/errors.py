"""The errors a user can fix, apart from featbank's own bugs.

Library code raises a :class:`FeatbankError` for what the user can do something
about: a bad value or name (:class:`BadInput`), a missing file
(:class:`MissingFile`), a damaged cache file (:class:`DamagedFile`), a write the
file system refused (:class:`WriteFailed`). The command lines turn these into one
line on stderr and exit 2; anything else is featbank's fault, and they say so
(``internal error: ...``, exit 3). Each subclasses the built-in exception it
refines, so ``except ValueError`` still catches a :class:`BadInput`.
"""
from __future__ import annotations


class FeatbankError(Exception):
    """Something the user can fix; the message says what and how, in one line."""


class BadInput(FeatbankError, ValueError):
    """A value, name or combination of settings featbank cannot use."""


class MissingFile(FeatbankError, FileNotFoundError):
    """A file or folder the user named, or that a stage needs, is not there."""


class DamagedFile(FeatbankError, ValueError):
    """A file featbank wrote is damaged (truncated, a shard missing); the message names it."""


class WriteFailed(FeatbankError, OSError):
    """The file system refused a write (full disk, read-only cache); nothing half-written stays."""
