//! Per-principal token buckets for action endpoints, in memory.
//!
//! Each principal id owns a bucket of `burst` tokens refilled at `actions_per_minute / 60`
//! per second. The map is bounded: when full, buckets that have refilled completely (which
//! are equivalent to no bucket at all) are dropped first, then the least recently used one.
//! Limits are per replica; with several replicas the effective limit is multiplied.

use super::config::RateLimitConfig;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Default bound on the number of principals tracked at once.
pub const DEFAULT_MAX_PRINCIPALS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token-bucket rate limiter keyed by principal id.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_sec: f64,
    max_entries: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter for `[auth.rate_limit]`, tracking up to [`DEFAULT_MAX_PRINCIPALS`].
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self::with_max_principals(cfg, DEFAULT_MAX_PRINCIPALS)
    }

    /// As [`RateLimiter::new`] with an explicit bound on tracked principals (at least 1).
    pub fn with_max_principals(cfg: &RateLimitConfig, max_principals: usize) -> Self {
        Self {
            capacity: f64::from(cfg.burst.max(1)),
            per_sec: f64::from(cfg.actions_per_minute) / 60.0,
            max_entries: max_principals.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the limiter is switched off (`actions_per_minute = 0`).
    pub fn is_disabled(&self) -> bool {
        self.per_sec <= 0.0
    }

    /// Takes one action from `principal_id`'s bucket, or says how long to wait
    /// (render as 429 with `Retry-After` rounded up to whole seconds).
    pub fn check(&self, principal_id: &str) -> Result<(), Duration> {
        self.check_at(principal_id, Instant::now())
    }

    /// Number of principals currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn check_at(&self, principal_id: &str, now: Instant) -> Result<(), Duration> {
        if self.is_disabled() {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(principal_id) && map.len() >= self.max_entries {
            self.evict(&mut map, now);
        }
        let b = map.entry(principal_id.to_string()).or_insert(Bucket {
            tokens: self.capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.per_sec;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    fn evict(&self, map: &mut HashMap<String, Bucket>, now: Instant) {
        let (cap, per_sec) = (self.capacity, self.per_sec);
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < cap
        });
        if map.len() >= self.max_entries
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_min: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            actions_per_minute: per_min,
            burst,
        }
    }

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(&cfg(60, 3));
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check_at("a", t0).unwrap();
        }
        let wait = rl.check_at("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // Another principal is unaffected.
        rl.check_at("b", t0).unwrap();
        // One second later one token is back.
        rl.check_at("a", t0 + Duration::from_secs(1)).unwrap();
        assert!(rl.check_at("a", t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn map_is_bounded_and_evicts_least_recent() {
        let rl = RateLimiter::with_max_principals(&cfg(60, 1), 3);
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            rl.check_at(id, t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert_eq!(rl.tracked(), 3);
        rl.check_at("d", t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(rl.tracked(), 3);
        // "a" was the least recently used: it was evicted, so it starts with a full bucket.
        rl.check_at("a", t0 + Duration::from_millis(11)).unwrap();
        assert!(rl.tracked() <= 3);
    }

    #[test]
    fn zero_disables() {
        let rl = RateLimiter::new(&cfg(0, 1));
        for _ in 0..1000 {
            rl.check("a").unwrap();
        }
        assert_eq!(rl.tracked(), 0);
    }
}
