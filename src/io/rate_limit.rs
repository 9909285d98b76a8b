//! A bandwidth limit shared by the tasks of one class of transfers (uploads,
//! pinned loads, background promotions).

use std::time::{Duration, Instant};

/// Spaces out bytes so that they leave at no more than `rate` per second.
pub struct RateLimiter {
    rate: u64,
    next: parking_lot::Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `rate` bytes per second; none for 0 (unlimited).
    pub fn new(rate: u64) -> Option<RateLimiter> {
        (rate > 0).then(|| RateLimiter {
            rate,
            next: parking_lot::Mutex::new(Instant::now()),
        })
    }

    /// Waits until `bytes` more may leave.
    pub async fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let start = {
            let mut next = self.next.lock();
            let start = (*next).max(Instant::now());
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// Waits on an optional limit.
pub async fn pace(limit: &Option<RateLimiter>, bytes: u64) {
    pace_opt(limit.as_ref(), bytes).await
}

pub async fn pace_opt(limit: Option<&RateLimiter>, bytes: u64) {
    if let Some(limit) = limit {
        limit.take(bytes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bytes_are_spaced_at_the_rate() {
        let limit = RateLimiter::new(1000).unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            limit.take(500).await;
        }
        // Five takes of half a second each; the first leaves at once. The
        // limiter reads the real clock, so a little real time adds on.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert!(RateLimiter::new(0).is_none());
    }
}
