//! The one place that retries: exponential backoff with jitter (`backon`), only
//! for errors that [`Error::is_transient`] says may pass.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{Error, Result};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// Run `op`, retrying transient failures with exponential backoff and jitter.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.retries)
        .with_jitter();
    op.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(Error::is_transient)
        .notify(|e: &Error, wait: Duration| {
            tracing::debug!(error = %e, ?wait, "transient failure; retrying");
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
