//! The failed-authentication shield: an address that presents too many bad credentials in a
//! minute is refused, for a cool-down, on every route that needs a key — valid keys included,
//! so that the shield answers the same whatever the key, and cannot be used to test keys.
//!
//! Failures are counted by client address (IPv6 by its /64, which one host or one customer
//! usually holds whole) in `pingora_limits::rate::Rate`: two count-min sketches in fixed memory,
//! which may over-estimate an address that shares its slots with busy ones but never
//! under-estimates one, and never grows with the number of addresses. Approximation is
//! harmless here: the shield is a brake on guessing, not a customer's quota. The estimate is the
//! count over the last minute, sliding (the previous window's share plus the current one's).
//! Addresses that tripped wait out their cool-down in a small table of their own; while it is
//! empty, which is nearly always, a request pays one atomic load.

use crate::client_address::CidrSet;
use pingora_limits::rate::Rate;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sketch size: 4 rows of 65,536 counters, twice (4 MiB). With 100,000 addresses failing in one
/// minute, a slot holds 1.5 of them on average; an honest address is shielded only if, in each
/// of the four rows, its slot also holds `failures_per_minute` failures of others.
const ROWS: usize = 4;
const SLOTS: usize = 65_536;
/// Addresses held in their cool-down at most; past it the oldest cool-downs end early (a
/// flood from more distinct addresses than this is not what the shield is for).
const MAX_SHIELDED: usize = 100_000;

/// `shield` in the config, checked.
#[derive(Debug, Clone)]
pub struct ShieldConfig {
    pub failures_per_minute: u32,
    pub cooldown: Duration,
    pub exempt: CidrSet,
}

pub struct Shield {
    config: ShieldConfig,
    failures: Rate,
    shielded: Mutex<HashMap<u128, Instant>>,
    /// `shielded.len()`, readable without the lock.
    shielded_count: AtomicUsize,
    metrics: Option<ShieldMetrics>,
}

/// `keygate_shield_trips_total` and `keygate_shielded_addresses`; refusals are counted with
/// the other refusals (`keygate_requests_total`, outcome `rate_limited`, and
/// `keygate_shield_refusals_total`).
#[derive(Clone)]
pub struct ShieldMetrics {
    trips: prometheus::IntCounter,
    shielded: prometheus::IntGauge,
}

impl ShieldMetrics {
    pub fn register(registry: &prometheus::Registry) -> ShieldMetrics {
        let trips = prometheus::IntCounter::new(
            "keygate_shield_trips_total",
            "Addresses that went over shield.failures_per_minute and began a cool-down.",
        )
        .expect("valid metric");
        let shielded = prometheus::IntGauge::new(
            "keygate_shielded_addresses",
            "Addresses (IPv6: /64s) in their cool-down, refused on every route that needs a key.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(trips.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(shielded.clone()))
            .expect("unique metric");
        ShieldMetrics { trips, shielded }
    }
}

impl std::fmt::Debug for Shield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shield")
            .field("config", &self.config)
            .field("shielded", &self.shielded_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What happened to a failure just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// This failure put the address over the limit: it is shielded from now on.
    Tripped,
}

impl Shield {
    pub fn new(config: ShieldConfig, metrics: Option<ShieldMetrics>) -> Shield {
        Shield {
            config,
            failures: Rate::new_with_estimator_config(Duration::from_secs(60), ROWS, SLOTS),
            shielded: Mutex::new(HashMap::new()),
            shielded_count: AtomicUsize::new(0),
            metrics,
        }
    }

    fn set_count(&self, n: usize) {
        self.shielded_count.store(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.shielded.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// How long `client` stays refused, if it is shielded now.
    pub fn refused_for(&self, client: Option<IpAddr>, now: Instant) -> Option<Duration> {
        if self.shielded_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let key = key_of(client?);
        let mut shielded = self.lock();
        let until = *shielded.get(&key)?;
        if until > now {
            return Some(until - now);
        }
        shielded.remove(&key);
        self.set_count(shielded.len());
        None
    }

    /// Counts a failed authentication from `client` (exempt addresses are not counted).
    pub fn record_failure(&self, client: Option<IpAddr>, now: Instant) -> Recorded {
        let Some(client) = client else {
            return Recorded::Counted;
        };
        if self.config.exempt.contains(client) {
            return Recorded::Counted;
        }
        let key = key_of(client);
        self.failures.observe(&key, 1);
        let last_minute = self.failures.rate_with(&key, |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        });
        if last_minute < f64::from(self.config.failures_per_minute) {
            return Recorded::Counted;
        }
        let mut shielded = self.lock();
        if shielded.len() >= MAX_SHIELDED {
            shielded.retain(|_, until| *until > now);
            if shielded.len() >= MAX_SHIELDED {
                // Still full of live cool-downs: end the one nearest its end.
                if let Some(first) = shielded.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                    shielded.remove(&first);
                }
            }
        }
        let tripped = shielded
            .insert(key, now + self.config.cooldown)
            .is_none_or(|until| until <= now);
        self.set_count(shielded.len());
        if tripped {
            if let Some(m) = &self.metrics {
                m.trips.inc();
            }
            Recorded::Tripped
        } else {
            Recorded::Counted
        }
    }

    /// Addresses in their cool-down (some may have just ended it).
    pub fn shielded(&self) -> usize {
        self.shielded_count.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Instant>> {
        self.shielded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The address as counted: IPv4 whole (mapped into IPv6's IPv4 range, so that the two families
/// never share a key), IPv6 by its /64.
fn key_of(addr: IpAddr) -> u128 {
    match crate::client_address::normalise(addr) {
        IpAddr::V4(v4) => 0xffff_0000_0000 | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shield(limit: u32, exempt: &[&str]) -> Shield {
        Shield::new(
            ShieldConfig {
                failures_per_minute: limit,
                cooldown: Duration::from_secs(30),
                exempt: CidrSet::parse(exempt).unwrap(),
            },
            None,
        )
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_address_is_shielded_at_the_limit_for_its_cooldown_and_others_are_not() {
        let s = shield(5, &[]);
        let t = Instant::now();
        for i in 0..4 {
            assert_eq!(
                s.record_failure(ip("203.0.113.9"), t),
                Recorded::Counted,
                "{i}"
            );
            assert_eq!(s.refused_for(ip("203.0.113.9"), t), None);
        }
        assert_eq!(s.record_failure(ip("203.0.113.9"), t), Recorded::Tripped);
        assert_eq!(
            s.refused_for(ip("203.0.113.9"), t + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            s.refused_for(ip("203.0.113.10"), t),
            None,
            "a neighbour is unaffected"
        );
        assert_eq!(s.shielded(), 1);
        // After the cool-down: let through again.
        assert_eq!(
            s.refused_for(ip("203.0.113.9"), t + Duration::from_secs(31)),
            None
        );
        assert_eq!(s.shielded(), 0);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_exempt_blocks_never_trip() {
        let s = shield(3, &["10.0.0.0/8"]);
        let t = Instant::now();
        s.record_failure(ip("2001:db8:1:2::1"), t);
        s.record_failure(ip("2001:db8:1:2::2"), t);
        s.record_failure(ip("2001:db8:1:2:ffff::3"), t);
        assert!(
            s.refused_for(ip("2001:db8:1:2::99"), t).is_some(),
            "the same /64"
        );
        assert!(
            s.refused_for(ip("2001:db8:1:3::1"), t).is_none(),
            "another /64"
        );
        for _ in 0..100 {
            assert_eq!(s.record_failure(ip("10.1.2.3"), t), Recorded::Counted);
        }
        assert!(s.refused_for(ip("10.1.2.3"), t).is_none());
        // IPv4 and its mapped form are one address; an IPv6 /64 of zeros is not IPv4.
        let s = shield(2, &[]);
        s.record_failure(ip("192.0.2.1"), t);
        s.record_failure(ip("::ffff:192.0.2.1"), t);
        assert!(s.refused_for(ip("192.0.2.1"), t).is_some());
        assert!(s.refused_for(ip("::"), t).is_none());
    }

    /// The false-positive measurement, on the real sketch: 100,000 distinct honest
    /// addresses failing once each, at the default limit, shield none.
    #[test]
    fn a_hundred_thousand_addresses_failing_once_shield_none() {
        let s = shield(crate::config::DEFAULT_SHIELD_FAILURES_PER_MINUTE, &[]);
        let t = Instant::now();
        let mut tripped = 0;
        for i in 0..100_000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i * 7));
            if s.record_failure(Some(addr), t) == Recorded::Tripped {
                tripped += 1;
            }
        }
        assert_eq!(tripped, 0);
        assert_eq!(s.shielded(), 0);
    }
}
