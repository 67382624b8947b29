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
//! * **Threads.** Records are handed to Python from the thread that made them (a
//!   tokio worker, say), which attaches to the interpreter for that. No call holds
//!   the GIL while it waits for the core (see the crate comment), so this cannot
//!   deadlock; during interpreter shutdown records are dropped.
//! * Events of other crates (hyper, reqwest) and spans are not forwarded.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

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

/// Make the bridge the process's subscriber (once; if another extension set one
/// first, that one stays) and read Python's level.
pub fn install(py: Python<'_>) {
    let _ = tracing::subscriber::set_global_default(Bridge);
    refresh(py);
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
    target == "dualwrite"
        || target.starts_with("dualwrite::")
        || target.starts_with("dualwrite_python")
        || target.starts_with("_native")
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
        let _ = Python::try_attach(|py| emit(py, meta, fields));
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
