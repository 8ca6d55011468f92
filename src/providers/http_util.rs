//! Small HTTP helpers shared by the REST adapters (AVD, WVD classic).

use rand::Rng;
use std::time::Duration;

/// Jittered exponential backoff for retry `attempt` (0-based): 200 ms doubling, capped at 5 s,
/// drawn from the upper half so concurrent retries spread out.
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 200u64.saturating_mul(1u64 << attempt.min(10)).min(5_000);
    Duration::from_millis(rand::rng().random_range(base_ms / 2..=base_ms))
}

/// `Retry-After` as delta-seconds or an HTTP date (IMF-fixdate); a date in the past is zero.
pub fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &fmt).ok()?.assume_utc();
    let d = at - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(d.whole_seconds().max(0).unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(200));
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(30) <= Duration::from_secs(5));
    }
}
