"""The exceptions of :mod:`dualwrite`.

Every error the module raises is a :class:`Error`. Bad input is also a
:class:`ValueError`, so existing ``except ValueError`` clauses keep working.
Messages never contain an API key.
"""

from __future__ import annotations

from typing import Optional


class Error(Exception):
    """Base class of every dualwrite error.

    ``transient`` is True when trying the same call again later may succeed
    (Supabase unreachable, a timeout, HTTP 429/503 ...). When Supabase answered
    with an error, ``status`` is the HTTP status and ``code`` PostgREST's code (a
    PostgreSQL SQLSTATE such as ``42501``, or ``PGRSTxxx``; None from a gateway
    that sends none); otherwise both are None.
    """

    transient: bool = False
    status: Optional[int] = None
    code: Optional[str] = None


class ConfigError(Error):
    """The configuration cannot work: unknown ``DB_BACKEND``, missing URL or key, a key Supabase rejects."""


class SupabaseUnavailable(ConfigError):
    """DoX's name: Supabase is not configured (no ``SUPABASE_URL`` or no key)."""


class InvalidInputError(Error, ValueError):
    """The call's arguments cannot be stored: a missing or unknown field, a wrong type. Nothing was written."""


class SQLiteError(Error):
    """SQLite refused or failed the operation."""


class SupabaseError(Error):
    """Supabase (PostgREST) refused the request, did not answer, or answered something unexpected."""


__all__ = [
    "Error",
    "ConfigError",
    "SupabaseUnavailable",
    "InvalidInputError",
    "SQLiteError",
    "SupabaseError",
]
