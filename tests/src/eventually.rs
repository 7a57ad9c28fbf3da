//! Waiting for a condition with a bound, instead of sleeping.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Calls `f` every `interval` until it returns `Ok`, for at most `timeout`.
/// On timeout the error says how long it waited and what the last attempt returned.
pub fn eventually<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                if start.elapsed() >= timeout {
                    return Err(anyhow!(
                        "condition not met within {:?} ({attempts} attempts); last error: {e:#}",
                        timeout
                    ));
                }
            }
        }
        let left = timeout.saturating_sub(start.elapsed());
        std::thread::sleep(interval.min(left).max(Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[test]
    fn eventually_returns_first_success() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(2), Duration::from_millis(1), || {
            n += 1;
            if n < 3 { bail!("not yet {n}") } else { Ok(n) }
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn eventually_reports_last_error_on_timeout() {
        let err = eventually(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || -> Result<()> { bail!("still broken") },
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("still broken"), "{msg}");
        assert!(msg.contains("not met within"), "{msg}");
    }
}
