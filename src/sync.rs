//! The one way the crate takes a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, also when a thread panicked while holding it ("poisoned"): the
/// data the crate guards this way (counters, the failure record, the breaker,
/// open record files) stays valid after any partial update, and the panic
/// itself is reported where it happened, so one panic does not become a
/// cascade of them.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
