//! Token buckets keyed by who or where a request comes from.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Instant};

/// A bucket: up to `per_minute` tokens, refilled evenly.
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Whether a refusal was reported since the bucket last had a token.
    reported: bool,
}

/// Why a request was held back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// Whole seconds until a token is back.
    pub retry_secs: u64,
    /// The first refusal since the bucket ran dry (report this one).
    pub first: bool,
}

/// Keys tracked before full buckets (keys quiet for a minute) are dropped:
/// the keys come from callers, so the map must not grow without bound.
const PRUNE_ABOVE: usize = 10_000;

/// Buckets of `per_minute` tokens, one per key.
pub struct RateLimiter<K> {
    per_minute: f64,
    buckets: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    by_key: HashMap<K, Bucket>,
    /// Last time quiet keys were dropped: at most once a second, so a
    /// crowd of busy keys does not make every call scan them all.
    pruned: Option<Instant>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `per_minute` tokens per key.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                pruned: None,
            }),
        }
    }

    /// Takes a token from `key`'s bucket, or says when to retry.
    pub fn take(&self, key: &K) -> Result<(), Limited> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let mut guard = self.buckets.lock().expect("rate buckets");
        let Buckets { by_key, pruned } = &mut *guard;
        let due = pruned.is_none_or(|at| now.saturating_duration_since(at).as_secs() >= 1);
        if by_key.len() >= PRUNE_ABOVE && due && !by_key.contains_key(key) {
            *pruned = Some(now);
            let per_minute = self.per_minute;
            by_key.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_minute / 60.0
                    < per_minute
            });
        }
        let bucket = by_key.entry(key.clone()).or_insert(Bucket {
            tokens: self.per_minute,
            at: now,
            reported: false,
        });
        let refill =
            now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_minute / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(self.per_minute);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            let first = !bucket.reported;
            bucket.reported = true;
            return Err(Limited {
                retry_secs: ((1.0 - bucket.tokens) * 60.0 / self.per_minute).ceil() as u64,
                first,
            });
        }
        bucket.reported = false;
        bucket.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_bucket_refuses_and_reports_once() {
        let limiter = RateLimiter::new(2);
        limiter.take(&"a").unwrap();
        limiter.take(&"a").unwrap();
        let first = limiter.take(&"a").unwrap_err();
        assert_eq!(
            first,
            Limited {
                retry_secs: 30,
                first: true
            }
        );
        assert!(!limiter.take(&"a").unwrap_err().first);
        limiter.take(&"b").unwrap();
    }

    #[test]
    fn quiet_keys_are_forgotten_when_many_are_tracked() {
        let limiter = RateLimiter::new(60);
        for key in 0..PRUNE_ABOVE {
            limiter.take(&key).unwrap();
        }
        // Each bucket lacks one token, refilled within a second: a new key
        // two seconds on prunes every quiet one.
        let later = Instant::now() + std::time::Duration::from_secs(2);
        limiter.take_at(&PRUNE_ABOVE, later).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().by_key.len(), 1);
    }
}
