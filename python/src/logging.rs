//! The Rust core's log records, delivered to Python's `logging`.
//!
//! [`install`] makes [`Bridge`] the process's `tracing` subscriber. An event of
//! the core (target `dualwrite::db::dual`, say) becomes a `LogRecord` of the
//! logger `dualwrite.db.dual` (a child of `dualwrite`), at the matching level
//! (TRACE is 5, below DEBUG), with the Rust file and line, the fields after the
//! message (`key=value`) and as a dict in `record.dualwrite_fields`.
//!
//! * **Cost when off.** Python's level for `dualwrite` is mirrored into
//!   `tracing`'s global maximum level, so an event below it costs one atomic load
//!   at its call site, as with no subscriber at all. The level is read when the
//!   module is imported, when a store is opened, and at most once a second from a
//!   store's call (a `logger.setLevel` takes effect within a second).
//! * **Threads.** A record is queued where it is made (a tokio worker, say: no
//!   Python handler ever runs on the runtime's threads, so a slow handler cannot
//!   stall a write or the drainer, and a handler may itself call dualwrite). The
//!   queue is handed to `logging` by the thread of the call that made the records,
//!   before the call returns (so a record of a call is there when it returns,
//!   in order), and by a thread of its own, `dualwrite-log`, for the records made
//!   between calls (the background drainer's). At most [`QUEUE_MAX`] wait; more
//!   are counted and the count is logged. During interpreter shutdown records are
//!   dropped.
//! * Events of other crates (hyper, reqwest) and spans are not forwarded.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// The most verbose level Python wants: 0 off, 1 ERROR ... 5 TRACE.
static LEVEL: AtomicU8 = AtomicU8::new(0);
/// Off only in the benchmark's baseline (`_native._forward_logs(False)`).
static FORWARD: AtomicBool = AtomicBool::new(true);
/// Milliseconds since [`epoch`] of the last read of Python's level.
static READ_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

const PY_LEVELS: [(u8, i32); 5] = [(5, 5), (4, 10), (3, 20), (2, 30), (1, 40)];

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn py_level(level: &Level) -> i32 {
    PY_LEVELS[5 - rank(level) as usize].1
}

fn filter(rank: u8) -> LevelFilter {
    match rank {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Records waiting for Python, oldest first.
static QUEUE: Mutex<VecDeque<Queued>> = Mutex::new(VecDeque::new());
/// Signalled when a record is queued.
static QUEUED: Condvar = Condvar::new();
/// Records dropped because the queue was full, not yet reported.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The process whose `dualwrite-log` thread runs (a forked child starts its own).
static DELIVERER: AtomicU32 = AtomicU32::new(0);
/// The most records that wait for Python; more are counted and dropped.
pub const QUEUE_MAX: usize = 10_000;

struct Queued {
    meta: &'static Metadata<'static>,
    fields: Fields,
}

/// Make the bridge the process's subscriber (once; if another extension set one
/// first, that one stays), start the delivering thread and read Python's level.
pub fn install(py: Python<'_>) {
    let _ = tracing::subscriber::set_global_default(Bridge);
    ensure_deliverer();
    refresh(py);
}

/// Start this process's `dualwrite-log` thread unless it runs (after `fork()`
/// the child has none).
pub fn ensure_deliverer() {
    let pid = std::process::id();
    if DELIVERER.swap(pid, Ordering::SeqCst) == pid {
        return;
    }
    let started = std::thread::Builder::new()
        .name("dualwrite-log".into())
        .spawn(move || loop {
            if std::process::id() != pid {
                return;
            }
            {
                let q = crate::lock(&QUEUE);
                let (q, _) = QUEUED
                    .wait_timeout_while(q, Duration::from_millis(200), |q| q.is_empty())
                    .unwrap_or_else(|p| p.into_inner());
                if q.is_empty() {
                    continue;
                }
            }
            if Python::try_attach(flush).is_none() {
                // Shutting down: nobody will hear these.
                crate::lock(&QUEUE).clear();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    if started.is_err() {
        // Records are still handed over at the end of every call.
        DELIVERER.store(0, Ordering::SeqCst);
    }
}

thread_local! {
    /// The queue's lock, held by the forking thread across `fork()`.
    static HELD: RefCell<Option<MutexGuard<'static, VecDeque<Queued>>>> = const { RefCell::new(None) };
}

/// Before `fork()` (after the drainers stopped): hold the queue's lock, so that
/// the child cannot inherit it locked by a thread it does not have.
pub fn hold_for_fork() {
    let held = crate::lock(&QUEUE);
    HELD.with(|h| *h.borrow_mut() = Some(held));
}

/// After `fork()`, in the parent and the child: let the queue's lock go.
pub fn release_after_fork() {
    HELD.with(|h| drop(h.borrow_mut().take()));
}

/// Hand every queued record to `logging`, oldest first (then a line for the
/// records dropped meanwhile, if any).
pub fn flush(py: Python<'_>) {
    loop {
        let batch: Vec<Queued> = {
            let mut q = crate::lock(&QUEUE);
            if q.is_empty() {
                break;
            }
            q.drain(..).collect()
        };
        for r in batch {
            let _ = emit(py, r.meta, r.fields);
        }
    }
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = py
            .import("logging")
            .and_then(|l| l.call_method1("getLogger", ("dualwrite",)))
            .and_then(|l| {
                l.call_method1(
                    "warning",
                    (format!(
                        "{dropped} log records of dualwrite were dropped: more than {QUEUE_MAX} waited for logging"
                    ),),
                )
            });
    }
}

/// Read `logging.getLogger("dualwrite")`'s level again, and tell `tracing` if it
/// changed.
pub fn refresh(py: Python<'_>) {
    READ_AT.store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
    let rank = if FORWARD.load(Ordering::Relaxed) {
        python_rank(py).unwrap_or(2)
    } else {
        0
    };
    if LEVEL.swap(rank, Ordering::Relaxed) != rank {
        tracing::callsite::rebuild_interest_cache();
    }
}

/// [`refresh`] if the level was last read more than a second ago.
#[inline]
pub fn refresh_if_due(py: Python<'_>) {
    let now = epoch().elapsed().as_millis() as u64;
    if now.saturating_sub(READ_AT.load(Ordering::Relaxed)) >= 1000 {
        refresh(py);
    }
}

/// The benchmark's switch: with `false` nothing is forwarded and the level is off.
#[pyfunction]
pub fn _forward_logs(py: Python<'_>, on: bool) {
    FORWARD.store(on, Ordering::Relaxed);
    refresh(py);
}

fn python_rank(py: Python<'_>) -> PyResult<u8> {
    let logger = py
        .import("logging")?
        .call_method1("getLogger", ("dualwrite",))?;
    for (rank, level) in PY_LEVELS {
        if logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            return Ok(rank);
        }
    }
    Ok(0)
}

/// The `tracing` subscriber that hands events to Python.
struct Bridge;

fn ours(target: &str) -> bool {
    target == "dualwrite" || target.starts_with("dualwrite::") || target.starts_with("_native")
}

fn logger_name(target: &str) -> String {
    match target.strip_prefix("dualwrite::") {
        Some(rest) => format!("dualwrite.{}", rest.replace("::", ".")),
        None => "dualwrite".to_owned(),
    }
}

impl Subscriber for Bridge {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_event() && ours(meta.target()) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.is_event() && rank(meta.level()) <= LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(filter(LEVEL.load(Ordering::Relaxed)))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut q = crate::lock(&QUEUE);
        if q.len() >= QUEUE_MAX {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(Queued { meta, fields });
        drop(q);
        QUEUED.notify_one();
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.rest.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.rest.push((field.name(), format!("{value:?}")));
        }
    }
}

/// One logger per target, looked up once.
fn logger<'py>(py: Python<'py>, target: &'static str) -> PyResult<Bound<'py, PyAny>> {
    static LOGGERS: Mutex<Option<HashMap<&'static str, Py<PyAny>>>> = Mutex::new(None);
    if let Some(l) = crate::lock(&LOGGERS).as_ref().and_then(|m| m.get(target)) {
        return Ok(l.bind(py).clone());
    }
    let l = py
        .import("logging")?
        .call_method1("getLogger", (logger_name(target),))?;
    crate::lock(&LOGGERS)
        .get_or_insert_with(HashMap::new)
        .insert(target, l.clone().unbind());
    Ok(l)
}

fn emit(py: Python<'_>, meta: &'static Metadata<'static>, fields: Fields) -> PyResult<()> {
    let logger = logger(py, meta.target())?;
    let level = py_level(meta.level());
    if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
        return Ok(());
    }
    let mut msg = fields.message;
    let extra = PyDict::new(py);
    let values = PyDict::new(py);
    for (k, v) in &fields.rest {
        let _ = write!(msg, " {k}={v}");
        values.set_item(*k, v)?;
    }
    extra.set_item("dualwrite_fields", values)?;
    let record = logger.call_method1(
        "makeRecord",
        (
            logger.getattr("name")?,
            level,
            meta.file().unwrap_or("<rust>"),
            meta.line().unwrap_or(0),
            msg,
            PyTuple::empty(py),
            py.None(),
            meta.module_path(),
            extra,
        ),
    )?;
    logger.call_method1("handle", (record,))?;
    Ok(())
}
