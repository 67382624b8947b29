"""dualwrite: drop-in replacements for DoX's storage classes, backed by Rust.

>>> import dualwrite
>>> db, meta = dualwrite.init_database()   # DB_BACKEND, DB_PATH, SUPABASE_DUAL_WRITE, SUPABASE_URL, keys, .env
>>> db.add_log({"id": "l1", "document_id": "d1", "message": "hello"})
>>> db.list_logs(q="hell")

Every class is a context manager (``with ... as db``) with ``close()``. The
Rust core's log records go to the ``dualwrite`` logger of :mod:`logging`.

The classes have DoX's names, parameters and return shapes:
:class:`ExtendedDatabase`, :class:`SupabaseDatabase`, :class:`DualDatabase`,
:func:`init_database`. Where they differ from DoX's, README.md ("Python")
says so.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    Error,
    InvalidInputError,
    SQLiteError,
    SupabaseError,
    SupabaseUnavailable,
)
from ._native import __version__
from ._db import (
    READ_METHODS,
    WRITE_METHODS,
    DualDatabase,
    ExtendedDatabase,
    SupabaseDatabase,
    get_db_interface,
    init_database,
)

__all__ = [
    "__version__",
    "ExtendedDatabase",
    "SupabaseDatabase",
    "DualDatabase",
    "init_database",
    "get_db_interface",
    "WRITE_METHODS",
    "READ_METHODS",
    "Error",
    "ConfigError",
    "SupabaseUnavailable",
    "InvalidInputError",
    "SQLiteError",
    "SupabaseError",
]
