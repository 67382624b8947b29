//! The one way the crate takes a `std::sync::Mutex`, and runs blocking work.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};

/// Lock `m`, also when a thread panicked while holding it ("poisoned"): the
/// data the crate guards this way (counters, the failure record, the breaker,
/// open record files) stays valid after any partial update, and the panic
/// itself is reported where it happened, so one panic does not become a
/// cascade of them.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run blocking work (SQLite, files) off the async threads: the one way the
/// crate runs a blocking call and awaits it at once (tasks kept to overlap
/// with other work use `spawn_blocking` themselves). A task that panicked
/// passes its panic on; one cancelled (the runtime is shutting down) is
/// [`Error::WorkerStopped`].
pub(crate) async fn blocking<R: Send + 'static>(
    worker: &'static str,
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::WorkerStopped {
            worker,
            when: "during a call",
        }),
    }
}
