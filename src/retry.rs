//! The one place that retries: exponential backoff with jitter (`backon`), only
//! for errors that [`Error::is_transient`] says may pass.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{Error, Result};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt (`None`: no count limit).
    pub retries: Option<usize>,
    /// Give up once the waits add up to this (`None`: no time limit).
    pub total: Option<Duration>,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: Some(3),
            total: None,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Keep trying for up to `total` of waiting, however many attempts that takes.
    pub(crate) fn for_up_to(total: Duration) -> RetryPolicy {
        RetryPolicy {
            retries: None,
            total: Some(total),
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Run `op`, retrying transient failures with exponential backoff and jitter,
/// or after the server's `Retry-After` when it sent one.
pub(crate) async fn retry<T, F, Fut>(policy: RetryPolicy, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    retry_when(policy, Error::is_transient, op).await
}

/// [`retry`] with a narrower condition (it must imply [`Error::is_transient`]),
/// e.g. to leave errors that call for a smaller request to the caller.
pub(crate) async fn retry_when<T, F, Fut>(
    policy: RetryPolicy,
    when: fn(&Error) -> bool,
    op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    retry_observed(policy, when, &|_: &Error| {}, op).await
}

/// Something told of every failed attempt that will be tried again (the
/// daemon counts and shows them while a batch still retries: a timeout is a
/// failure as soon as it happens, not once the retries are spent).
pub(crate) type Observer<'a> = &'a (dyn Fn(&Error) + Send + Sync);

/// An [`Observer`] that can be kept and shared (the daemon's senders hold one).
pub(crate) type SharedObserver = std::sync::Arc<dyn Fn(&Error) + Send + Sync>;

/// [`retry_when`], telling `observe` of each failed attempt before its wait.
pub(crate) async fn retry_observed<T, F, Fut>(
    policy: RetryPolicy,
    when: fn(&Error) -> bool,
    observe: Observer<'_>,
    op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_total_delay(policy.total)
        .with_jitter();
    backoff = match policy.retries {
        Some(n) => backoff.with_max_times(n),
        None => backoff.without_max_times(),
    };
    let started = tokio::time::Instant::now();
    op.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(move |e: &Error| e.is_transient() && when(e))
        .adjust(move |e: &Error, d: Option<Duration>| {
            let d = d?;
            // The server's `Retry-After` is honoured, but never beyond the
            // policy's longest wait or what is left of its time budget: a
            // `Retry-After: 3600` must not stall a job past `--max-wait-secs`.
            let Some(asked) = e.retry_after() else {
                return Some(d);
            };
            let mut wait = asked.min(policy.max_delay);
            if let Some(total) = policy.total {
                let left = total.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return None;
                }
                wait = wait.min(left);
            }
            Some(wait)
        })
        .notify(|e: &Error, wait: Duration| {
            tracing::debug!(error = %e, ?wait, "transient failure; retrying");
            observe(e);
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_succeed() {
        let calls = AtomicU32::new(0);
        let r = retry(RetryPolicy::default(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(Error::Timeout(Duration::from_secs(1)))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_budget_bounds_the_waiting() {
        let started = tokio::time::Instant::now();
        let r: Result<()> = retry(RetryPolicy::for_up_to(Duration::from_secs(30)), || async {
            Err(Error::Unreachable {
                url: "u".into(),
                reason: "refused".into(),
            })
        })
        .await;
        assert!(r.is_err());
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(31), "{waited:?}");
        // Jittered exponential waits: many attempts, and well into the budget.
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
    }

    fn too_many_requests(retry_after: Duration) -> Error {
        Error::Rest {
            status: 429,
            code: None,
            message: "slow down".into(),
            details: None,
            hint: None,
            retry_after: Some(retry_after),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_clamped_to_the_longest_wait_and_the_budget() {
        // Counted retries: each wait is the policy's longest, not an hour.
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let r = retry(RetryPolicy::default(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(too_many_requests(Duration::from_secs(3600)))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(r.is_ok());
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(10), "{waited:?}");
        // A time budget: the job gives up once it is spent, not an hour later.
        let started = tokio::time::Instant::now();
        let r: Result<()> = retry(RetryPolicy::for_up_to(Duration::from_secs(30)), || async {
            Err(too_many_requests(Duration::from_secs(3600)))
        })
        .await;
        assert!(r.is_err());
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(31), "{waited:?}");
        // A short Retry-After is still honoured as given.
        let started = tokio::time::Instant::now();
        calls.store(0, Ordering::SeqCst);
        let r = retry(RetryPolicy::default(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 1 {
                Err(too_many_requests(Duration::from_millis(1500)))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = retry(RetryPolicy::default(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::invalid("bad row"))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = retry(RetryPolicy::default(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::Timeout(Duration::from_secs(1)))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one attempt and three retries"
        );
    }
}
