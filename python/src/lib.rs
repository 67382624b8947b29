//! `dualwrite._native`: the Rust half of the Python package `dualwrite`.
//!
//! The DoX classes themselves (`ExtendedDatabase`, `SupabaseDatabase`,
//! `DualDatabase`, `init_database`) are written in Python (`dualwrite/_db.py`),
//! so that their signatures are real Python signatures. Each holds one [`Store`]
//! and hands every call to [`Store::call`] as `(method, arguments)`; the call is
//! parsed by the library's own `model::Call::parse` and run by the library's own
//! backends. One implementation, two languages.
//!
//! This file holds the stores and the module; `convert.rs` the values and
//! errors between Python and the core, `fork.rs` the fork hooks, `logging.rs`
//! the core's log records to Python's `logging`.
//!
//! * **The GIL** is released for the whole of a call's SQLite and HTTP work
//!   (`py.detach`); only converting the arguments and the result holds it.
//! * **Threads**: a `Store` is shared by reference; the backends are already
//!   safe to use from many tasks at once.
//! * **Fork**: the tokio runtime and each backend (the SQLite thread, the HTTP
//!   client's sockets) are created lazily and belong to the process id that made
//!   them. In a forked child they are rebuilt on first use; the inherited ones are
//!   leaked, never dropped, because dropping them would wait for threads that do
//!   not exist in the child, or close the parent's connections.
//! * **Fork and the background drainer** (`drain="background"`): `os.fork()`
//!   first stops every drainer of the process ([`before_fork`], registered
//!   with `os.register_at_fork` by `dualwrite/_db.py`), so that no drainer
//!   thread is inside SQLite and no lease is held at the fork (SQLite keeps its
//!   locks' state in process memory: a child inheriting a held lease could never
//!   take it), then restarts them in the parent ([`after_fork_in_parent`]). A
//!   child's dual layer, rebuilt on first use, starts its own drainer, which
//!   waits for the lease like any second drainer: one process drains at a time,
//!   and another takes over within seconds when it stops.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dualwrite::catalogue::Table;
use dualwrite::config::{DrainMode, Settings, Sources};
use dualwrite::db::RestClient;
use dualwrite::db::{
    AnyDatabase, Applied, Database, Dox, DualDatabase, Filter, Followed, Row, SqliteDatabase,
    SqliteOptions, SupabaseDatabase,
};
use dualwrite::factory;
use dualwrite::model::{Call, Write};
use dualwrite::Error as CoreError;
use pyo3::prelude::*;
use serde_json::Value;
use tokio::runtime::Runtime;

mod convert;
mod fork;
mod logging;

use convert::{py_err, serialised, to_json, to_py};
use fork::{after_fork_in_child, after_fork_in_parent, before_fork};

type CoreResult<T> = dualwrite::Result<T>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's tokio runtime, created on first use in each process.
fn runtime() -> CoreResult<Arc<Runtime>> {
    static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut g = lock(&RUNTIME);
    if let Some((p, rt)) = &*g {
        if *p == pid {
            return Ok(Arc::clone(rt));
        }
    }
    // Inherited through fork(): its worker threads do not exist here, so dropping
    // it could wait for them forever. Leak it.
    if let Some(old) = g.take() {
        std::mem::forget(old);
    }
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dualwrite-py")
            .enable_all()
            .build()?,
    );
    *g = Some((pid, Arc::clone(&rt)));
    Ok(rt)
}

/// One backend: what `ExtendedDatabase` and `SupabaseDatabase` hold.
#[derive(Clone)]
enum Leaf {
    Sqlite(SqliteDatabase),
    Supabase(Arc<SupabaseDatabase>),
}

impl Database for Leaf {
    fn backend(&self) -> String {
        match self {
            Leaf::Sqlite(d) => d.backend(),
            Leaf::Supabase(d) => d.backend(),
        }
    }

    async fn apply(&self, write: Write) -> CoreResult<Applied> {
        match self {
            Leaf::Sqlite(d) => d.apply(write).await,
            Leaf::Supabase(d) => d.apply(write).await,
        }
    }

    async fn fetch(&self, table: &'static Table, filters: &[Filter]) -> CoreResult<Vec<Row>> {
        match self {
            Leaf::Sqlite(d) => d.fetch(table, filters).await,
            Leaf::Supabase(d) => d.fetch(table, filters).await,
        }
    }

    // With change capture on the SQLite side, the dual layer leaves the
    // mirror of a captured write to the drainer (see `DualDatabase`).
    async fn apply_captured(&self, write: Write) -> CoreResult<(Applied, bool)> {
        match self {
            Leaf::Sqlite(d) => d.apply_captured(write).await,
            Leaf::Supabase(d) => d.apply_captured(write).await,
        }
    }

    // The dual layer follows the file's recorded primary through these.
    async fn apply_followed(&self, write: Write) -> CoreResult<Followed> {
        match self {
            Leaf::Sqlite(d) => d.apply_followed(write).await,
            Leaf::Supabase(d) => d.apply_followed(write).await,
        }
    }

    async fn fetch_followed(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> CoreResult<Option<Vec<Row>>> {
        match self {
            Leaf::Sqlite(d) => d.fetch_followed(table, filters).await,
            Leaf::Supabase(d) => d.fetch_followed(table, filters).await,
        }
    }
}

enum Db {
    Leaf(Leaf),
    Dual(DualDatabase<Leaf, Leaf>),
}

/// How to build a backend again in a forked child.
enum Recipe {
    Sqlite {
        path: PathBuf,
        opts: SqliteOptions,
    },
    Supabase {
        settings: Box<Settings>,
    },
    Dual {
        primary: Arc<Inner>,
        secondary: Arc<Inner>,
        settings: Box<Settings>,
    },
}

/// A backend as it lives in one process.
struct Live {
    pid: u32,
    db: Db,
}

struct Inner {
    recipe: Recipe,
    live: Mutex<Option<Arc<Live>>>,
    /// `close()` was called: a dual layer rebuilt after fork() starts no drainer.
    closed: AtomicBool,
}

impl Inner {
    fn new(recipe: Recipe, db: Option<Db>) -> Arc<Inner> {
        let live = db.map(|db| {
            Arc::new(Live {
                pid: std::process::id(),
                db,
            })
        });
        Arc::new(Inner {
            recipe,
            live: Mutex::new(live),
            closed: AtomicBool::new(false),
        })
    }

    fn backend(&self) -> String {
        match &self.recipe {
            Recipe::Sqlite { .. } => "sqlite".into(),
            Recipe::Supabase { .. } => "supabase".into(),
            Recipe::Dual {
                primary, secondary, ..
            } => format!("dual:{}+{}", primary.backend(), secondary.backend()),
        }
    }

    /// This process's backend, built on first use in the process.
    fn live(&self, rt: &Runtime) -> CoreResult<Arc<Live>> {
        let pid = std::process::id();
        // Held while building, so that concurrent first calls open one backend.
        // Lock order is always dual, then its sides.
        let mut g = lock(&self.live);
        if let Some(l) = &*g {
            if l.pid == pid {
                return Ok(Arc::clone(l));
            }
        }
        // Inherited through fork(): its SQLite thread is gone and its sockets are
        // the parent's. Leak it rather than drop it.
        if let Some(old) = g.take() {
            std::mem::forget(old);
        }
        let db = match &self.recipe {
            Recipe::Sqlite { path, opts } => Db::Leaf(Leaf::Sqlite(
                rt.block_on(SqliteDatabase::open(path, opts.clone()))?,
            )),
            Recipe::Supabase { settings } => {
                Db::Leaf(Leaf::Supabase(Arc::new(build_supabase(settings)?)))
            }
            Recipe::Dual {
                primary,
                secondary,
                settings,
            } => {
                let (p, q) = (primary.leaf(rt)?, secondary.leaf(rt)?);
                match (&p, &q) {
                    // The factory's own dual layer: change capture on the file
                    // turns the failure log off and may start the drainer
                    // (in each process: a forked child starts its own).
                    (Leaf::Sqlite(_), Leaf::Supabase(sb)) => {
                        let mut s = settings.as_ref().clone();
                        if self.closed.load(Ordering::SeqCst) {
                            s.drain = DrainMode::Serve;
                        }
                        // The mirror's writes copy the file's rows (capture on
                        // Supabase does not log them); the side's own stay as they are.
                        // After cutover, the primary's writes are Supabase's own.
                        let promoted = Leaf::Supabase(Arc::clone(sb));
                        let q = Leaf::Supabase(Arc::new(factory::supabase(
                            &s,
                            sb.rest().clone().mirroring_sqlite(),
                        )));
                        Db::Dual(rt.block_on(factory::dual_sqlite_first(&s, p, q, promoted))?)
                    }
                    (Leaf::Supabase(sb), _) => {
                        let rest = sb.rest().clone();
                        // The file's copies pass the refusal triggers after cutover.
                        let q = match q {
                            Leaf::Sqlite(d) => Leaf::Sqlite(d.mirroring_supabase()),
                            other => other,
                        };
                        Db::Dual(rt.block_on(factory::dual_supabase_first(settings, &rest, p, q))?)
                    }
                    _ => Db::Dual(factory::dual(settings, p, q)?),
                }
            }
        };
        let l = Arc::new(Live { pid, db });
        *g = Some(Arc::clone(&l));
        Ok(l)
    }

    fn leaf(&self, rt: &Runtime) -> CoreResult<Leaf> {
        match &self.live(rt)?.db {
            Db::Leaf(l) => Ok(l.clone()),
            Db::Dual(_) => Err(CoreError::invalid(
                "a DualDatabase cannot be a side of another DualDatabase",
            )),
        }
    }

    fn call(&self, call: Call) -> CoreResult<Value> {
        let rt = runtime()?;
        let live = self.live(&rt)?;
        match &live.db {
            Db::Leaf(d) => rt.block_on(d.call(call)),
            Db::Dual(d) => rt.block_on(d.call(call)),
        }
    }
}

fn settings(db_path: Option<PathBuf>) -> CoreResult<Settings> {
    let mut src = Sources::from_process();
    if let Some(p) = db_path {
        src.flags
            .push(("db_path".into(), Value::String(p.to_string_lossy().into())));
    }
    Settings::load(&src)
}

fn sqlite_inner(s: &Settings, db: Option<SqliteDatabase>) -> Arc<Inner> {
    Inner::new(
        Recipe::Sqlite {
            path: s.db_path.clone(),
            opts: factory::sqlite_options(s),
        },
        db.map(|d| Db::Leaf(Leaf::Sqlite(d))),
    )
}

/// The Supabase backend from the settings: the one place this crate builds one.
fn build_supabase(s: &Settings) -> CoreResult<SupabaseDatabase> {
    Ok(factory::supabase(s, RestClient::new(&s.rest_config()?)?))
}

fn supabase_inner(s: &Settings, db: Option<SupabaseDatabase>) -> CoreResult<Arc<Inner>> {
    s.rest_config()?; // a configuration that cannot work fails here, not on first use
    Ok(Inner::new(
        Recipe::Supabase {
            settings: Box::new(s.clone()),
        },
        db.map(|d| Db::Leaf(Leaf::Supabase(Arc::new(d)))),
    ))
}

fn dual_inner(
    s: &Settings,
    primary: Arc<Inner>,
    secondary: Arc<Inner>,
    rt: &Runtime,
) -> CoreResult<Arc<Inner>> {
    let inner = Inner::new(
        Recipe::Dual {
            primary,
            secondary,
            settings: Box::new(s.clone()),
        },
        None,
    );
    inner.live(rt)?;
    fork::register(&inner);
    Ok(inner)
}

/// One backend of the DoX storage interface, usable from many threads and
/// across `fork()`. Built by the classes of `dualwrite`; not meant to be used
/// directly.
#[pyclass(frozen, module = "dualwrite._native")]
struct Store {
    inner: Arc<Inner>,
}

impl Store {
    fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> CoreResult<T> + Send) -> PyResult<T> {
        logging::refresh_if_due(py);
        let out = py.detach(f);
        // The call's log records reach `logging` before it returns.
        logging::flush(py);
        out.map_err(|e| py_err(py, e))
    }

    /// This process's backend (built here first if the store came through fork()).
    fn live(&self, py: Python<'_>) -> PyResult<Arc<Live>> {
        let inner = Arc::clone(&self.inner);
        Self::run(py, move || inner.live(&*runtime()?))
    }
}

#[pymethods]
impl Store {
    /// The SQLite backend on a DoX file (`DB_PATH` when `db_path` is None).
    #[staticmethod]
    #[pyo3(signature = (db_path=None))]
    fn sqlite(py: Python<'_>, db_path: Option<PathBuf>) -> PyResult<Store> {
        logging::refresh(py);
        Self::run(py, || {
            let s = settings(db_path)?;
            let rt = runtime()?;
            let db = rt.block_on(SqliteDatabase::open(
                &s.db_path,
                factory::sqlite_options(&s),
            ))?;
            Ok(Store {
                inner: sqlite_inner(&s, Some(db)),
            })
        })
    }

    /// The Supabase backend from the environment. No request is made.
    #[staticmethod]
    fn supabase(py: Python<'_>) -> PyResult<Store> {
        logging::refresh(py);
        Self::run(py, || {
            let s = settings(None)?;
            let inner = supabase_inner(&s, None)?;
            inner.live(&*runtime()?)?;
            Ok(Store { inner })
        })
    }

    /// The dual layer over two stores, with the configured timeout, breaker and
    /// failure log (by default next to the SQLite side's file), as the factory
    /// builds it: with change capture on a SQLite primary's file, no failure
    /// log, and with `drain` `background` (default: `dual.drain`,
    /// `DUALWRITE_DRAIN`) a drainer task in this process.
    #[staticmethod]
    #[pyo3(signature = (primary, secondary, drain=None))]
    fn dual_of(
        py: Python<'_>,
        primary: &Store,
        secondary: &Store,
        drain: Option<String>,
    ) -> PyResult<Store> {
        logging::refresh(py);
        let (p, s) = (Arc::clone(&primary.inner), Arc::clone(&secondary.inner));
        Self::run(py, move || {
            let drain = drain.map(|d| d.parse::<DrainMode>()).transpose()?;
            for side in [&p, &s] {
                if matches!(side.recipe, Recipe::Dual { .. }) {
                    return Err(CoreError::invalid(
                        "DualDatabase takes an ExtendedDatabase or a SupabaseDatabase on each side, not another DualDatabase",
                    ));
                }
            }
            let sqlite_path = [&p, &s].into_iter().find_map(|i| match &i.recipe {
                Recipe::Sqlite { path, .. } => Some(path.clone()),
                _ => None,
            });
            let mut st = settings(sqlite_path)?;
            if let Some(d) = drain {
                let sqlite_first = matches!(
                    (&p.recipe, &s.recipe),
                    (Recipe::Sqlite { .. }, Recipe::Supabase { .. })
                );
                if d == DrainMode::Background && !sqlite_first {
                    return Err(CoreError::invalid(
                        "drain=\"background\" needs an ExtendedDatabase primary (with change capture installed: `dualwrite capture install`) and a SupabaseDatabase secondary",
                    ));
                }
                st.drain = d;
            }
            let rt = runtime()?;
            Ok(Store {
                inner: dual_inner(&st, p, s, &rt)?,
            })
        })
    }

    /// `sqlite`, `supabase` or `dual:<primary>+<secondary>`.
    #[getter]
    fn backend(&self) -> String {
        self.inner.backend()
    }

    /// The SQLite file, for a SQLite store.
    #[getter]
    fn db_path(&self) -> Option<PathBuf> {
        match &self.inner.recipe {
            Recipe::Sqlite { path, .. } => Some(path.clone()),
            _ => None,
        }
    }

    /// The Supabase REST URL, for a Supabase store (never the key).
    #[getter]
    fn url(&self) -> Option<String> {
        match &self.inner.recipe {
            Recipe::Supabase { settings } => settings.supabase.rest_endpoint(),
            _ => None,
        }
    }

    /// Call the DoX method `method` with its named arguments.
    fn call<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        args: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = to_json(args, 0)?;
        let inner = Arc::clone(&self.inner);
        let out = Self::run(py, || inner.call(Call::parse(method, args)?))?;
        to_py(py, &out)
    }

    /// `{mirrored, left_to_drainer, promoted, failed, dropped, pending}` of a dual store, else None.
    fn dual_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.live(py)?.db {
            Db::Dual(d) => Ok(Some(serialised(py, d.stats())?)),
            Db::Leaf(_) => Ok(None),
        }
    }

    /// The recorded mirror failures of a dual store, oldest first.
    fn failures<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.live(py)?.db {
            Db::Dual(d) => serialised(py, d.failures()),
            Db::Leaf(_) => serialised(py, Vec::<Value>::new()),
        }
    }

    /// Whether a background drainer runs in this process (a dual store with
    /// `drain="background"`, not closed).
    #[getter]
    fn draining(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(match &self.live(py)?.db {
            Db::Dual(d) => d.drainer_running(),
            Db::Leaf(_) => false,
        })
    }

    /// Let go of what this store holds in this process: a dual store's
    /// background drainer stops (once its batch in flight is done and the lease
    /// is let go), then its backends, whose SQLite thread ends once no other store
    /// shares it. Idempotent; a later call opens the backend again, without a
    /// drainer.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = Arc::clone(&self.inner);
        Self::run(py, move || {
            inner.closed.store(true, Ordering::SeqCst);
            let rt = runtime()?;
            let live = {
                let mut g = lock(&inner.live);
                match g.as_ref() {
                    Some(l) if l.pid == std::process::id() => g.take(),
                    _ => None,
                }
            };
            if let Some(Live {
                db: Db::Dual(d), ..
            }) = live.as_deref()
            {
                rt.block_on(d.stop_drainer());
            }
            // The last handle of a SQLite backend, dropped here (off the runtime),
            // waits for its thread to end.
            drop(live);
            Ok(())
        })
    }

    /// Replay the recorded mirror failures: `{attempted, replayed, still_failing}`.
    fn replay_failures<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        let report = Self::run(py, move || {
            let rt = runtime()?;
            let live = inner.live(&rt)?;
            match &live.db {
                Db::Dual(d) => Ok(Some(rt.block_on(d.replay_failures()))),
                Db::Leaf(_) => Ok(None),
            }
        })?;
        serialised(py, report)
    }
}

/// DoX's `init_database()`, driven by the same settings as the Rust factory.
/// Returns `(store, primary, secondary, meta)`; `primary`/`secondary` are set
/// when dual writing.
#[pyfunction]
// The tuple is DoX's return shape, spelled out for pyo3; an alias would hide it.
#[allow(clippy::type_complexity)]
fn init_database<'py>(
    py: Python<'py>,
) -> PyResult<(Store, Option<Store>, Option<Store>, Bound<'py, PyAny>)> {
    logging::refresh(py);
    let (store, sides, report) = Store::run(py, || {
        let s = settings(None)?;
        let rt = runtime()?;
        // The factory's dual layer is dropped below and rebuilt over sides the
        // Python objects share: only the rebuilt one may start the drainer.
        let inline = Settings {
            drain: DrainMode::Serve,
            ..s.clone()
        };
        let (db, report) = rt.block_on(factory::open(&inline))?;
        let (store, sides) = match db {
            AnyDatabase::Sqlite(d) => (sqlite_inner(&s, Some(d)), None),
            AnyDatabase::Supabase(d) => (supabase_inner(&s, Some(d))?, None),
            AnyDatabase::SqliteFirst(d) => {
                let p = sqlite_inner(&s, Some(d.primary().clone()));
                // The factory's dual layer is rebuilt over sides the Python objects
                // share; drop it first so the failure log is loaded by one layer only.
                drop(d);
                let q = supabase_inner(&s, Some(build_supabase(&s)?))?;
                (dual_inner(&s, p.clone(), q.clone(), &rt)?, Some((p, q)))
            }
            AnyDatabase::SupabaseFirst(d) => {
                let q = sqlite_inner(&s, Some(d.secondary().clone()));
                drop(d);
                let p = supabase_inner(&s, Some(build_supabase(&s)?))?;
                (dual_inner(&s, p.clone(), q.clone(), &rt)?, Some((p, q)))
            }
        };
        Ok((store, sides, report))
    })?;
    let (p, q) = match sides {
        Some((p, q)) => (Some(Store { inner: p }), Some(Store { inner: q })),
        None => (None, None),
    };
    Ok((Store { inner: store }, p, q, serialised(py, report)?))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install(m.py());
    m.add_class::<Store>()?;
    m.add_function(wrap_pyfunction!(logging::_forward_logs, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(init_database, m)?)?;
    m.add_function(wrap_pyfunction!(before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add("WRITE_METHODS", dualwrite::model::WRITE_METHODS.to_vec())?;
    m.add("READ_METHODS", dualwrite::model::READ_METHODS.to_vec())?;
    Ok(())
}
