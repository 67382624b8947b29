//! `fork()` and the background drainers: every dual store of the process is
//! known here, so that `os.register_at_fork` hooks can stop their drainers
//! before a fork and restart them in the parent (see the crate comment).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use dualwrite::factory;
use pyo3::prelude::*;

use crate::{lock, runtime, Db, Inner, Live, Recipe};

/// Note a new dual store, for the fork hooks.
pub fn register(inner: &Arc<Inner>) {
    let mut duals = lock(&DUALS);
    duals.retain(|w| w.strong_count() > 0);
    duals.push(Arc::downgrade(inner));
}

/// The dual stores of the process (they may run a background drainer), for
/// the fork hooks.
static DUALS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
/// The drainers of dropped stores, stopping in the background: a fork waits for them.
static STOPPING: Mutex<Vec<tokio::sync::watch::Sender<bool>>> = Mutex::new(Vec::new());

/// Those whose drainer [`before_fork`] stopped, restarted after the fork.
static PAUSED: Mutex<Vec<Arc<Inner>>> = Mutex::new(Vec::new());

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a dual layer stops its drainer without waiting for it; a
        // fork() made meanwhile waits for it in `before_fork`.
        let Some(live) = built_dual(self) else { return };
        if let Db::Dual(d) = &live.db {
            if let Some(stop) = d.take_drainer() {
                let mut stopping = lock(&STOPPING);
                stopping.retain(|s| !s.is_closed());
                stopping.push(stop);
            }
        }
    }
}

/// This process's dual layer of `inner`, if it is built (never builds it).
fn built_dual(inner: &Inner) -> Option<Arc<Live>> {
    lock(&inner.live)
        .as_ref()
        .filter(|l| l.pid == std::process::id() && matches!(l.db, Db::Dual(_)))
        .map(Arc::clone)
}

/// `os.register_at_fork(before=...)`: stop every background drainer of this
/// process and wait until each has let its lease go.
#[pyfunction]
pub fn before_fork(py: Python<'_>) {
    py.detach(|| {
        let stopping: Vec<_> = lock(&STOPPING).drain(..).collect();
        if !stopping.is_empty() {
            if let Ok(rt) = runtime() {
                rt.block_on(async {
                    for s in &stopping {
                        s.closed().await;
                    }
                });
            }
        }
        let duals: Vec<Arc<Inner>> = lock(&DUALS).iter().filter_map(Weak::upgrade).collect();
        let mut paused = Vec::new();
        for inner in duals {
            let Some(live) = built_dual(&inner) else {
                continue;
            };
            let Db::Dual(d) = &live.db else { continue };
            let Ok(rt) = runtime() else { continue };
            if d.drainer_running() {
                rt.block_on(d.stop_drainer());
                paused.push(inner);
            }
        }
        lock(&PAUSED).extend(paused);
    });
    // What the stopping drainers logged, then the queue is held across the fork.
    crate::logging::flush(py);
    crate::logging::hold_for_fork();
}

/// `os.register_at_fork(after_in_parent=...)`: restart the drainers
/// [`before_fork`] stopped (unless `close()` came meanwhile).
#[pyfunction]
pub fn after_fork_in_parent(py: Python<'_>) {
    crate::logging::release_after_fork();
    py.detach(|| {
        let paused: Vec<Arc<Inner>> = lock(&PAUSED).drain(..).collect();
        for inner in paused {
            let (Some(live), Recipe::Dual { settings, .. }) = (built_dual(&inner), &inner.recipe)
            else {
                continue;
            };
            let Db::Dual(d) = &live.db else { continue };
            if inner.closed.load(Ordering::SeqCst) {
                continue;
            }
            let started = runtime().and_then(|rt| {
                let _in_runtime = rt.enter();
                factory::background_drainer(settings)
            });
            match started {
                Ok(stop) => d.set_drainer(stop),
                Err(e) => {
                    tracing::error!(error = %e, "cannot restart the background drainer after fork(); changes wait in the change log")
                }
            }
        }
    })
}

/// `os.register_at_fork(after_in_child=...)`: the parent's paused stores are
/// not this process's to restart (the child's dual layers start their own
/// drainers when rebuilt); leak the references, as every inherited backend.
#[pyfunction]
pub fn after_fork_in_child() {
    crate::logging::release_after_fork();
    std::mem::forget(std::mem::take(&mut *lock(&PAUSED)));
    crate::logging::ensure_deliverer();
}
