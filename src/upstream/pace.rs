//! Pacing: waiting for a token instead of being refused with 429.
//!
//! ARM meters each (subscription, principal) with token buckets, one per operation kind
//! (reads, writes, deletes; `reference/avd-arm.md`). The engine keeps its own copy of those
//! buckets, shared by every pool that calls ARM with the same endpoint, subscription and
//! credential ([`Pacer`] is the registry), and takes a token before each attempt: a large run
//! then goes at the bucket's pace instead of failing items with 429. What ARM reports is
//! believed over the local count: an `x-ms-ratelimit-remaining-subscription-{reads,writes,
//! deletes}` header lowers the local bucket to what is left upstream (another client of the
//! same subscription may have spent tokens), and a 429's `Retry-After` holds the whole
//! bucket until then (a request sent earlier would be refused again).
//!
//! A wait that would end after the call's deadline is not started: the call fails at once
//! with [`super::UpstreamError::Throttled`] (`upstream_throttled`), never waiting forever.
//!
//! Other upstreams are bounded by concurrency: [`Pacer::concurrency`] hands out one
//! semaphore per key (the classic broker's URL), shared by the pools that use it.

use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// One bucket's shape: how many tokens it holds and how many come back per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketShape {
    pub size: u32,
    pub refill_per_sec: u32,
}

impl BucketShape {
    /// `Err` names the field (`size`, `refill_per_sec`) and why.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.size == 0 {
            return Err(("size", "must be at least 1"));
        }
        if self.refill_per_sec == 0 {
            return Err(("refill_per_sec", "must be at least 1"));
        }
        Ok(())
    }
}

/// The operation kinds ARM meters separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
    Delete,
}

impl OpKind {
    /// GET/HEAD read, DELETE deletes, anything else writes (ARM's rule).
    pub fn of(method: &reqwest::Method) -> Self {
        if method == reqwest::Method::GET || method == reqwest::Method::HEAD {
            OpKind::Read
        } else if method == reqwest::Method::DELETE {
            OpKind::Delete
        } else {
            OpKind::Write
        }
    }

    /// The header in which ARM reports the tokens left for this kind.
    pub fn remaining_header(self) -> &'static str {
        match self {
            OpKind::Read => "x-ms-ratelimit-remaining-subscription-reads",
            OpKind::Write => "x-ms-ratelimit-remaining-subscription-writes",
            OpKind::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
        }
    }
}

/// ARM pacing: a shape per kind, and whether the remaining-headers are believed.
/// `[pacing.arm]` globally, `pacing = {...}` per AVD pool (every field optional there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArmPacing {
    /// `false` sends without waiting for tokens (429s are still waited out per call).
    pub enabled: bool,
    pub reads: BucketShape,
    pub writes: BucketShape,
    pub deletes: BucketShape,
    /// Lower the local bucket to the `x-ms-ratelimit-remaining-subscription-*` ARM reports.
    pub honour_remaining_headers: bool,
}

impl Default for ArmPacing {
    /// ARM's published buckets: reads 250 (25/s), writes 200 (10/s), deletes 200 (10/s).
    fn default() -> Self {
        Self {
            enabled: true,
            reads: BucketShape {
                size: 250,
                refill_per_sec: 25,
            },
            writes: BucketShape {
                size: 200,
                refill_per_sec: 10,
            },
            deletes: BucketShape {
                size: 200,
                refill_per_sec: 10,
            },
            honour_remaining_headers: true,
        }
    }
}

/// A pool's overrides of the global [`ArmPacing`] (each field optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArmPacingOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<BucketShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<BucketShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<BucketShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honour_remaining_headers: Option<bool>,
}

impl ArmPacing {
    /// `Err` names the field path below the table (`writes.size`) and why.
    pub fn check(&self) -> Result<(), (String, &'static str)> {
        for (name, s) in [
            ("reads", self.reads),
            ("writes", self.writes),
            ("deletes", self.deletes),
        ] {
            s.check().map_err(|(f, why)| (format!("{name}.{f}"), why))?;
        }
        Ok(())
    }

    /// These settings with a pool's overrides applied.
    pub fn with(&self, o: &ArmPacingOverride) -> Self {
        Self {
            enabled: o.enabled.unwrap_or(self.enabled),
            reads: o.reads.unwrap_or(self.reads),
            writes: o.writes.unwrap_or(self.writes),
            deletes: o.deletes.unwrap_or(self.deletes),
            honour_remaining_headers: o
                .honour_remaining_headers
                .unwrap_or(self.honour_remaining_headers),
        }
    }
}

#[derive(Debug)]
struct BucketState {
    /// May go below zero: tokens promised to waiters that have not been sent yet.
    tokens: f64,
    at: Instant,
    /// Nothing goes before this instant (a 429's `Retry-After`).
    hold_until: Option<Instant>,
}

/// A token bucket that hands out reservations: a caller takes a token now and waits until
/// it would have been refilled, so waiters go in order and none starves.
#[derive(Debug)]
pub struct Bucket {
    shape: BucketShape,
    st: Mutex<BucketState>,
}

impl Bucket {
    pub fn new(shape: BucketShape) -> Self {
        Self {
            shape,
            st: Mutex::new(BucketState {
                tokens: f64::from(shape.size),
                at: Instant::now(),
                hold_until: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, st: &mut BucketState, now: Instant) {
        let dt = now.saturating_duration_since(st.at).as_secs_f64();
        st.tokens =
            (st.tokens + dt * f64::from(self.shape.refill_per_sec)).min(f64::from(self.shape.size));
        st.at = now;
    }

    /// Reserves a token and says how long to wait before using it; or, when that wait would
    /// end after `deadline`, takes nothing and returns the wait as the error.
    pub fn reserve(&self, deadline: Instant) -> Result<Duration, Duration> {
        let now = Instant::now();
        let mut st = self.lock();
        self.refill(&mut st, now);
        let refill_wait = if st.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - st.tokens) / f64::from(self.shape.refill_per_sec))
        };
        let hold = st
            .hold_until
            .map(|h| h.saturating_duration_since(now))
            .unwrap_or_default();
        let wait = refill_wait.max(hold);
        if !wait.is_zero() && now + wait > deadline {
            return Err(wait);
        }
        st.tokens -= 1.0;
        Ok(wait)
    }

    /// Waits for a token (see [`Bucket::reserve`]).
    pub async fn acquire(&self, deadline: Instant) -> Result<(), Duration> {
        let wait = self.reserve(deadline)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The service says `remaining` tokens are left: never believe in more than that.
    pub fn observe_remaining(&self, remaining: u32) {
        let mut st = self.lock();
        self.refill(&mut st, Instant::now());
        st.tokens = st.tokens.min(f64::from(remaining));
    }

    /// The service refused a request until `retry_after` from now: nothing goes before then,
    /// and the bucket starts empty again then.
    pub fn hold(&self, retry_after: Duration) {
        let now = Instant::now();
        let mut st = self.lock();
        self.refill(&mut st, now);
        let until = now + retry_after;
        st.hold_until = Some(st.hold_until.map_or(until, |h| h.max(until)));
        // Tokens refilled during the hold are what the service will have then.
        st.tokens = st
            .tokens
            .min(0.0)
            .min(-(retry_after.as_secs_f64() * f64::from(self.shape.refill_per_sec)));
    }

    /// Tokens available now (negative: promised to waiters).
    pub fn available(&self) -> f64 {
        let mut st = self.lock();
        self.refill(&mut st, Instant::now());
        st.tokens
    }
}

/// The ARM buckets of one (endpoint, subscription, credential).
#[derive(Debug)]
pub struct ArmBuckets {
    reads: Bucket,
    writes: Bucket,
    deletes: Bucket,
    honour_remaining_headers: bool,
}

impl ArmBuckets {
    pub fn new(p: &ArmPacing) -> Self {
        Self {
            reads: Bucket::new(p.reads),
            writes: Bucket::new(p.writes),
            deletes: Bucket::new(p.deletes),
            honour_remaining_headers: p.honour_remaining_headers,
        }
    }

    pub fn bucket(&self, kind: OpKind) -> &Bucket {
        match kind {
            OpKind::Read => &self.reads,
            OpKind::Write => &self.writes,
            OpKind::Delete => &self.deletes,
        }
    }

    pub fn honours_remaining_headers(&self) -> bool {
        self.honour_remaining_headers
    }

    fn shape(&self) -> ArmPacing {
        ArmPacing {
            enabled: true,
            reads: self.reads.shape,
            writes: self.writes.shape,
            deletes: self.deletes.shape,
            honour_remaining_headers: self.honour_remaining_headers,
        }
    }
}

/// The registry of shared buckets and concurrency bounds, built once per configuration
/// (so two gateways in one process, as in tests, never share a bucket).
#[derive(Debug, Default)]
pub struct Pacer {
    arm_defaults: ArmPacing,
    arm: Mutex<HashMap<String, Arc<ArmBuckets>>>,
    limits: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Pacer {
    /// `arm_defaults` is `[pacing.arm]`: what an AVD pool gets unless it overrides it.
    pub fn new(arm_defaults: ArmPacing) -> Self {
        Self {
            arm_defaults,
            ..Default::default()
        }
    }

    pub fn arm_defaults(&self) -> &ArmPacing {
        &self.arm_defaults
    }

    /// The buckets for `key` (endpoint, subscription, credential), made with `shape` by the
    /// first pool that asks. A later pool asking for a different shape gets `Err` with the
    /// shape already in force (pools sharing a bucket must agree on it).
    pub fn arm(&self, key: &str, shape: &ArmPacing) -> Result<Arc<ArmBuckets>, ArmPacing> {
        let mut m = self.arm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = m.get(key) {
            let have = b.shape();
            let want = ArmPacing {
                enabled: true,
                ..*shape
            };
            return if have == want {
                Ok(b.clone())
            } else {
                Err(have)
            };
        }
        let b = Arc::new(ArmBuckets::new(shape));
        m.insert(key.to_string(), b.clone());
        Ok(b)
    }

    /// A concurrency bound of `n` shared by everyone asking with `key`; a different `n` for
    /// the same key gets `Err` with the bound in force.
    pub fn concurrency(&self, key: &str, n: usize) -> Result<Arc<Semaphore>, usize> {
        let mut m = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((have, s)) = m.get(key) {
            return if *have == n {
                Ok(s.clone())
            } else {
                Err(*have)
            };
        }
        let s = Arc::new(Semaphore::new(n));
        m.insert(key.to_string(), (n, s.clone()));
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(size: u32, refill_per_sec: u32) -> BucketShape {
        BucketShape {
            size,
            refill_per_sec,
        }
    }

    #[test]
    fn a_full_bucket_hands_out_its_size_then_makes_callers_wait_in_turn() {
        let b = Bucket::new(shape(3, 10));
        let far = Instant::now() + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.reserve(far), Ok(Duration::ZERO));
        }
        let w1 = b.reserve(far).unwrap();
        let w2 = b.reserve(far).unwrap();
        assert!(
            w1 > Duration::from_millis(50) && w1 <= Duration::from_millis(100),
            "{w1:?}"
        );
        assert!(w2 > w1 + Duration::from_millis(50), "{w1:?} {w2:?}");
    }

    #[test]
    fn a_wait_past_the_deadline_is_refused_and_takes_nothing() {
        let b = Bucket::new(shape(1, 1));
        let soon = Instant::now() + Duration::from_millis(200);
        assert!(b.reserve(soon).is_ok());
        let before = b.available();
        let e = b.reserve(soon).unwrap_err();
        assert!(e > Duration::from_millis(500), "{e:?}");
        assert!(b.available() - before < 0.1, "nothing was taken");
    }

    #[test]
    fn the_remaining_header_lowers_the_bucket_and_a_429_holds_it() {
        let b = Bucket::new(shape(100, 10));
        b.observe_remaining(0);
        let far = Instant::now() + Duration::from_secs(60);
        assert!(b.reserve(far).unwrap() > Duration::from_millis(50));
        let b = Bucket::new(shape(100, 10));
        b.hold(Duration::from_secs(2));
        assert!(b.reserve(far).unwrap() >= Duration::from_millis(1900));
    }

    #[test]
    fn pools_sharing_a_bucket_must_agree_on_its_shape() {
        let p = Pacer::new(ArmPacing::default());
        let a = p.arm("k", &ArmPacing::default()).unwrap();
        let b = p.arm("k", &ArmPacing::default()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = ArmPacing {
            writes: shape(5, 5),
            ..ArmPacing::default()
        };
        assert_eq!(p.arm("k", &other).unwrap_err(), ArmPacing::default());
        assert!(p.arm("k2", &other).is_ok());
        assert!(p.concurrency("b", 4).is_ok());
        assert_eq!(p.concurrency("b", 5).unwrap_err(), 4);
    }
}
