"""DoX's storage classes, over the Rust core (``dualwrite._native``).

Every method builds its named arguments and hands them to the core, which parses
them with the same code as ``dualwrite call`` and runs them on the same
backends as the Rust library. The GIL is released while SQLite or Supabase work.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, TypeVar

from . import _native
from .errors import ConfigError, InvalidInputError, SupabaseUnavailable

_S = TypeVar("_S", bound="_Storage")

WRITE_METHODS = frozenset(_native.WRITE_METHODS)
"""DoX's 21 named writes plus ``update_artifact`` (which DoX forgot to mirror)."""

READ_METHODS = frozenset(_native.READ_METHODS)

Row = Dict[str, Any]


class _Storage:
    """The DoX storage interface: every named write and read."""

    _store: Any
    backend: str

    def _call(self, method: str, args: Dict[str, Any]) -> Any:
        return self._store.call(method, args)

    def close(self) -> None:
        """Let go of the connection (and a ``DualDatabase``'s background drainer). Idempotent; a later
        call opens the backend again."""
        self._store.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- writes -----------------------------------------------------------------

    def add_artifact(self, artifact: Row) -> str:
        """Insert or replace an artifact (``extras``/``metadata``: an object). Returns its id."""
        return self._call("add_artifact", {"artifact": artifact})

    def add_fact(self, fact: Row) -> None:
        """Insert or replace a fact (``metrics`` defaults to ``{}``, ``artifact_id`` to ``""``)."""
        self._call("add_fact", {"fact": fact})

    def add_evidence(self, evidence: Row) -> None:
        """Insert or replace one evidence row (``coordinates``, ``full_data``: any JSON)."""
        self._call("add_evidence", {"evidence": evidence})

    def add_document(self, doc: Row) -> str:
        """Insert or replace a document. Returns its id."""
        return self._call("add_document", {"doc": doc})

    def add_section(self, section: Row) -> None:
        """Insert or replace a document section."""
        self._call("add_section", {"section": section})

    def add_table(self, table: Row) -> None:
        """Insert or replace a document table (the key ``json`` is accepted for ``table_content_json``)."""
        self._call("add_table", {"table": table})

    def add_api(self, api: Row) -> None:
        """Insert or replace an API endpoint (``tags_json``, ``params_json``, ``responses_json``: JSON text)."""
        self._call("add_api", {"api": api})

    def add_log(self, log: Row) -> None:
        """Insert or replace a log entry."""
        self._call("add_log", {"log": log})

    def add_tag(self, tag: Row) -> None:
        """Insert or replace a tag."""
        self._call("add_tag", {"tag": tag})

    def save_tag_prompt(
        self,
        document_id: str,
        prompt_text: str,
        examples: Optional[List[Row]] = None,
        author: Optional[str] = None,
    ) -> str:
        """Save a new tag prompt (new id, ``created_at`` now). Returns the new id."""
        return self._call(
            "save_tag_prompt",
            {"document_id": document_id, "prompt_text": prompt_text, "examples": examples, "author": author},
        )

    def reset(self) -> None:
        """Delete every document-data row (the cipher tables and search chunks are kept)."""
        self._call("reset", {})

    def reset_search_chunks(self) -> None:
        """Delete every search chunk (Supabase; a no-op on SQLite)."""
        self._call("reset_search_chunks", {})

    def store_search_chunks(self, chunks: List[Row]) -> None:
        """Upsert search chunks (Supabase; a no-op on SQLite). Chunks without an embedding are skipped."""
        self._call("store_search_chunks", {"chunks": chunks})

    def store_entities(self, document_id: str, entities: List[Row]) -> None:
        """Replace the document's entities with ``entities`` (one transaction on SQLite)."""
        self._call("store_entities", {"document_id": document_id, "entities": entities})

    def store_structure(self, document_id: str, structure: Optional[Row]) -> None:
        """Replace the document's structure; ``None`` deletes it."""
        self._call("store_structure", {"document_id": document_id, "structure": structure})

    def store_metric_hits(self, document_id: str, metrics: List[Row]) -> None:
        """Replace the document's metric hits with ``metrics``."""
        self._call("store_metric_hits", {"document_id": document_id, "metrics": metrics})

    def store_summary(self, summary: Row) -> str:
        """Insert or update a summary, filling DoX's defaults. Returns its id."""
        return self._call("store_summary", {"summary": summary})

    def add_memory(
        self,
        category: str,
        content: Any,
        context: Optional[Any] = None,
        user_id: Optional[str] = None,
    ) -> str:
        """Add a cipher memory (new id, ``created_at`` now). Returns the new id."""
        return self._call(
            "add_memory", {"category": category, "content": content, "context": context, "user_id": user_id}
        )

    def set_user_pref(self, user_id: str, key: str, value: Any) -> None:
        """Set one preference of a user (read, merge, write)."""
        self._call("set_user_pref", {"user_id": user_id, "key": key, "value": value})

    def register_skill(
        self,
        name: str,
        description: str,
        parameters: Row,
        workflow_def: Row,
        enabled: bool = True,
    ) -> str:
        """Register a skill by name, or update it (keeping its id and ``created_at``). Returns its id."""
        return self._call(
            "register_skill",
            {
                "name": name,
                "description": description,
                "parameters": parameters,
                "workflow_def": workflow_def,
                "enabled": enabled,
            },
        )

    def update_skill(self, skill_id: str, enabled: bool) -> Optional[Row]:
        """Enable or disable a skill. Returns the updated skill, or None if there is none with that id."""
        return self._call("update_skill", {"skill_id": skill_id, "enabled": enabled})

    def update_artifact(self, artifact_id: str, **fields: Any) -> None:
        """Set artifact fields (``status=``, ``extras=`` shallow-merged into the stored extras ...).

        A missing artifact is a no-op, as in DoX; an unknown field is an
        :class:`InvalidInputError` (DoX's SQLite ignored it, its Supabase failed).
        """
        args = dict(fields)
        args["artifact_id"] = artifact_id
        self._call("update_artifact", args)

    # ----- reads ------------------------------------------------------------------

    def get_artifacts(self) -> List[Row]:
        """Every artifact: ``{id, filename, filepath, filetype, report_week, status, source_url, extras}``."""
        return self._call("get_artifacts", {})

    def get_facts(self, report_week: Optional[str] = None) -> List[Row]:
        """Facts, of one report week when given: ``{id, artifact_id, report_week, entity, metrics, evidence_id}``."""
        return self._call("get_facts", {"report_week": report_week})

    def get_evidence(self, evidence_id: str) -> Optional[Row]:
        """One evidence row, or None."""
        return self._call("get_evidence", {"evidence_id": evidence_id})

    def get_all_evidence(self) -> List[Row]:
        """Every evidence row."""
        return self._call("get_all_evidence", {})

    def get_summary(self, scope_key: str, style: str) -> Optional[Row]:
        """The newest summary for ``scope_key`` and ``style``, or None."""
        return self._call("get_summary", {"scope_key": scope_key, "style": style})

    def list_summaries(self, *, scope: Optional[str] = None, style: Optional[str] = None) -> List[Row]:
        """Summaries, newest first."""
        return self._call("list_summaries", {"scope": scope, "style": style})

    def list_documents(self, type: Optional[str] = None) -> List[Row]:  # noqa: A002 (DoX's name)
        """Documents, of one type when given: ``{id, path, type, title, source, created_at}``."""
        return self._call("list_documents", {"type": type})

    def list_entities(self, document_id: Optional[str] = None, label: Optional[str] = None) -> List[Row]:
        """Entities: ``{id, document_id, label, text, start_char, end_char, page, context, source_index}``."""
        return self._call("list_entities", {"document_id": document_id, "label": label})

    def get_structure(self, document_id: str) -> Optional[Any]:
        """The document's hierarchy, or None."""
        return self._call("get_structure", {"document_id": document_id})

    def list_metric_hits(self, document_id: Optional[str] = None, metric_type: Optional[str] = None) -> List[Row]:
        """Metric hits: ``{id, document_id, type, value, context, position, page, source_index}``."""
        return self._call("list_metric_hits", {"document_id": document_id, "metric_type": metric_type})

    def list_logs(
        self,
        level: Optional[str] = None,
        code: Optional[str] = None,
        q: Optional[str] = None,
        ts_from: Optional[str] = None,
        ts_to: Optional[str] = None,
        document_id: Optional[str] = None,
    ) -> List[Row]:
        """Log entries: ``{id, document_id, ts, level, code, component, message, attrs}``; ``q`` matches the message."""
        return self._call(
            "list_logs",
            {"level": level, "code": code, "q": q, "ts_from": ts_from, "ts_to": ts_to, "document_id": document_id},
        )

    def list_apis(
        self, tag: Optional[str] = None, method: Optional[str] = None, path_like: Optional[str] = None
    ) -> List[Row]:
        """API endpoints: ``{id, document_id, name, method, path, summary, tags}``."""
        return self._call("list_apis", {"tag": tag, "method": method, "path_like": path_like})

    def list_tags(self, document_id: Optional[str] = None, q: Optional[str] = None) -> List[Row]:
        """Tags: ``{id, document_id, tag, score, source_ptr[, hrm_steps]}``."""
        return self._call("list_tags", {"document_id": document_id, "q": q})

    def has_tag(self, document_id: str, tag: str) -> bool:
        """Whether the document has the tag (trimmed, case-insensitive)."""
        return self._call("has_tag", {"document_id": document_id, "tag": tag})

    def get_latest_tag_prompt(self, document_id: str) -> Optional[Row]:
        """The newest tag prompt of the document, or None."""
        return self._call("get_latest_tag_prompt", {"document_id": document_id})

    def list_tag_prompt_history(self, document_id: str, limit: int = 20) -> List[Row]:
        """The document's tag prompts, newest first."""
        return self._call("list_tag_prompt_history", {"document_id": document_id, "limit": limit})

    def list_log_messages(self, document_id: str) -> List[str]:
        """The non-empty log messages of the document."""
        return self._call("list_log_messages", {"document_id": document_id})

    def search_memory(
        self,
        category: Optional[str] = None,
        limit: int = 10,
        q: Optional[str] = None,
        user_id: Optional[str] = None,
    ) -> List[Row]:
        """Cipher memories, newest first: ``{id, category, content, context, user_id, created_at}``."""
        return self._call("search_memory", {"category": category, "limit": limit, "q": q, "user_id": user_id})

    def get_user_prefs(self, user_id: str) -> Row:
        """The user's preferences, or ``{}``."""
        return self._call("get_user_prefs", {"user_id": user_id})

    def list_skills(self, enabled_only: bool = True) -> List[Row]:
        """Skills: ``{id, name, description, parameters, workflow_def, enabled, created_at}``."""
        return self._call("list_skills", {"enabled_only": enabled_only})


def _wrap(cls: type, store: Any) -> Any:
    obj = cls.__new__(cls)
    obj._store = store
    obj.backend = store.backend
    return obj


class ExtendedDatabase(_Storage):
    """The SQLite backend on a DoX file (``DB_PATH``, else ``db.sqlite3``, when ``db_path`` is None).

    Opening creates the missing DoX tables and columns, as DoX's does.
    """

    def __init__(self, db_path: Optional[str] = None) -> None:
        self._store = _native.Store.sqlite(None if db_path is None else os.fspath(db_path))
        self.backend = self._store.backend

    @property
    def db_path(self) -> str:
        """The SQLite file."""
        return os.fspath(self._store.db_path)

    @property
    def engine(self) -> Any:
        """A SQLAlchemy engine on the same file (needs SQLAlchemy; one per process)."""
        cached = self.__dict__.get("_engine")
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        try:
            import sqlalchemy
        except ImportError:
            raise AttributeError(
                "db.engine needs SQLAlchemy (pip install sqlalchemy); "
                "without it, use sqlite3.connect(db.db_path)"
            ) from None
        engine = sqlalchemy.create_engine("sqlite:///" + self.db_path)
        self.__dict__["_engine"] = (os.getpid(), engine)
        return engine

    def __repr__(self) -> str:
        return f"ExtendedDatabase(db_path={self.db_path!r})"


class SupabaseDatabase(_Storage):
    """The Supabase backend, from ``SUPABASE_URL`` (the project URL) and ``SUPABASE_SERVICE_KEY`` or
    ``SUPABASE_SERVICE_ROLE_KEY`` (else ``SUPABASE_ANON_KEY``).

    Like DoX's, construction makes no request; raises :class:`SupabaseUnavailable`
    when the URL or the key is missing.
    """

    def __init__(self) -> None:
        try:
            self._store = _native.Store.supabase()
        except SupabaseUnavailable:
            raise
        except ConfigError as e:
            raise SupabaseUnavailable(str(e)) from None
        self.backend = self._store.backend

    @property
    def url(self) -> str:
        """The REST endpoint, e.g. the project URL + ``/rest/v1`` (never the key)."""
        return self._store.url

    def __repr__(self) -> str:
        return f"SupabaseDatabase(url={self.url!r})"


class DualDatabase(_Storage):
    """Writes go to ``primary``, then are mirrored to ``secondary``; reads come from ``primary``.

    A primary failure raises and the secondary is not touched. A secondary failure
    never raises: it is logged and counted (:meth:`dual_stats`). Without change
    capture it is recorded for replay (:meth:`replay_failures`, or ``dualwrite
    replay``), in memory and in the failure log (``<DB_PATH>.failures.ndjson`` by
    default).

    With change capture installed on an ``ExtendedDatabase`` primary's file
    (``dualwrite capture install``), each write's change row commits with it and
    nothing is mirrored inline: a drainer sends the row as it is then, in order
    with every other writer's (an inline mirror could land after a newer version
    and stay), and no failure log is written (``dual_stats()["left_to_drainer"]``
    counts those writes). The drainer is ``dualwrite serve``, or with
    ``drain="background"`` (default: ``dual.drain`` / ``DUALWRITE_DRAIN``, else
    ``"serve"``) a task of this process under serve's
    lease (it drains only while no ``serve`` or other drainer holds the file),
    stopped by :meth:`close` or when the object is dropped. A background drain
    without capture raises :class:`ConfigError`. After ``fork()`` the child starts
    its own drainer on first use; it waits for the lease like any second one.
    """

    primary: _Storage
    secondary: _Storage

    def __init__(self, primary: _Storage, secondary: _Storage, *, drain: Optional[str] = None) -> None:
        for name, side in (("primary", primary), ("secondary", secondary)):
            if not isinstance(side, (ExtendedDatabase, SupabaseDatabase)):
                raise InvalidInputError(
                    f"DualDatabase: {name} must be an ExtendedDatabase or a SupabaseDatabase, "
                    f"not {type(side).__name__}"
                )
        if drain is not None and not isinstance(drain, str):
            raise InvalidInputError(f"DualDatabase: drain must be 'serve' or 'background', not {drain!r}")
        self._store = _native.Store.dual_of(primary._store, secondary._store, drain)
        self.primary = primary
        self.secondary = secondary
        self.backend = self._store.backend

    def __getattr__(self, name: str) -> Any:
        # As DoX's: any other attribute is the primary's (e.g. ``engine``).
        if name.startswith("__") or name in ("primary", "_store"):
            raise AttributeError(name)
        return getattr(self.primary, name)

    def dual_stats(self) -> Dict[str, int]:
        """``{mirrored, left_to_drainer, promoted, failed, dropped, pending}``: writes mirrored, left to the
        drainer, written to Supabase alone as the primary after a cutover, mirror failures, failures not kept,
        failures awaiting replay."""
        return self._store.dual_stats()

    def failures(self) -> List[Row]:
        """The recorded mirror failures, oldest first: ``{method, table, key, error, transient, at, write}``."""
        return self._store.failures()

    def replay_failures(self) -> Dict[str, int]:
        """Apply the recorded failures to the secondary again: ``{attempted, replayed, still_failing}``."""
        return self._store.replay_failures()

    @property
    def draining(self) -> bool:
        """Whether a background drainer runs in this process (``drain="background"``, not closed)."""
        return self._store.draining

    def close(self) -> None:
        """Stop the background drainer, if any: returns once its batch in flight is done and it let the
        lease go, then let go of both sides' connections. Idempotent; writes keep working (the backends
        are opened again, without a drainer; mirror failures wait in the change log)."""
        self._store.close()
        self.primary.close()
        self.secondary.close()

    def __repr__(self) -> str:
        return f"DualDatabase({self.primary!r}, {self.secondary!r})"


# fork(): stop the background drainers first (no drainer thread inside SQLite, no lease
# inherited), restart them in the parent; a child's DualDatabase starts its own on first use.
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_native.before_fork,
        after_in_parent=_native.after_fork_in_parent,
        after_in_child=_native.after_fork_in_child,
    )


def init_database() -> Tuple[_Storage, Dict[str, Any]]:
    """Open the configured backend, as DoX's ``init_database()``: returns ``(db, meta)``.

    Driven by ``DB_BACKEND`` (``sqlite``/``supabase``), ``DB_PATH``,
    ``SUPABASE_DUAL_WRITE``, ``SUPABASE_URL``, the keys and ``.env``, like the Rust
    factory. ``meta`` is ``{configured, active, dual_write, supabase_error}``.
    Unlike DoX's, Supabase is checked with one request: with ``DB_BACKEND=supabase``
    any problem raises; with SQLite + dual write, a misconfigured Supabase leaves
    SQLite alone (``supabase_error`` says why) and an unreachable one is still
    mirrored to, every failure recorded for replay.
    """
    store, primary, secondary, meta = _native.init_database()
    if primary is None:
        cls = ExtendedDatabase if store.backend == "sqlite" else SupabaseDatabase
        return _wrap(cls, store), meta
    sides = [
        _wrap(ExtendedDatabase if s.backend == "sqlite" else SupabaseDatabase, s) for s in (primary, secondary)
    ]
    db = _wrap(DualDatabase, store)
    db.primary, db.secondary = sides
    return db, meta


def get_db_interface() -> _Storage:
    """``init_database()[0]``, as DoX's."""
    return init_database()[0]
