//! Waiting on a condition with a deadline.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Pause between two attempts.
const INTERVAL: Duration = Duration::from_millis(250);

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Step<T> {
    /// The condition holds; stop waiting.
    Done(T),
    /// Not yet; the text says why (it becomes the error if the deadline passes).
    Retry(String),
}

/// Calls `attempt` until it returns [`Step::Done`], returns an error (which ends the wait at
/// once), or `timeout` passes (an error naming `what` and the last reason to retry).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<Step<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let reason = match attempt()? {
            Step::Done(value) => return Ok(value),
            Step::Retry(reason) => reason,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last attempt: {reason}");
        }
        thread::sleep(INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_done_value() {
        let mut calls = 0;
        let value = poll_until("third call", Duration::from_secs(10), || {
            calls += 1;
            Ok(if calls == 3 { Step::Done(calls) } else { Step::Retry(format!("call {calls}")) })
        })
        .unwrap();
        assert_eq!(value, 3);
    }

    #[test]
    fn times_out_with_the_last_reason() {
        let err =
            poll_until::<()>("never", Duration::from_millis(10), || Ok(Step::Retry("nope".into())))
                .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 10ms waiting for never; last attempt: nope");
    }

    #[test]
    fn stops_at_the_first_error() {
        let mut calls = 0;
        let err = poll_until::<()>("error", Duration::from_secs(10), || {
            calls += 1;
            bail!("broken")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "broken");
        assert_eq!(calls, 1);
    }
}
