//! One sliding-window limit: "at most `limit` requests in any window of `W`", exactly.
//!
//! The window is kept as a ring of `B = N + 1` counters, each covering `W / N` of time. A request
//! is admitted only when the whole ring — the current bucket and the `N` before it, a span between
//! `W` and `W + W/N` long — holds fewer than `limit` admitted requests. Every real window of length
//! `W` that ends now lies inside that span, so no window of length `W` ever holds more than
//! `limit` admissions, whatever the arrival pattern or thread interleaving. The price of that
//! guarantee is conservatism: a perfectly steady client is refused only above `N / (N + 1)` of
//! its limit (95.2% for N = 20, 98.4% for N = 60). Refused requests are not counted.

/// Milliseconds on a monotonic clock.
pub type Millis = u64;

/// `B` buckets of `G` milliseconds: a window of `W = (B - 1) × G`. Both are constants, so the
/// bucket arithmetic compiles to multiplications.
/// `repr(C)` with the bookkeeping first: a decision reads `newest` and `total` and one bucket, and
/// keeping the two fields together (ahead of the buckets) saves a cache line per window.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Window<const B: usize, const G: Millis> {
    /// Index (time / `G`) of the newest bucket; `counts[newest % B]` is its slot.
    newest: u64,
    /// Sum of `counts`, kept so that a decision reads one number instead of `B`.
    total: u32,
    counts: [u32; B],
}

impl<const B: usize, const G: Millis> Default for Window<B, G> {
    fn default() -> Self {
        Window {
            counts: [0; B],
            total: 0,
            newest: 0,
        }
    }
}

/// How a window stands after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u32,
    /// Requests that may still be admitted now.
    pub remaining: u32,
    /// Milliseconds until every request now counted has left the window (full quota again).
    pub reset_ms: u64,
    /// Milliseconds until one more request would be admitted; 0 when one would be now.
    pub retry_ms: u64,
}

impl<const B: usize, const G: Millis> Window<B, G> {
    /// The window's length.
    pub const LENGTH_MS: Millis = (B as Millis - 1) * G;

    fn slot(index: u64) -> usize {
        (index % B as u64) as usize
    }

    /// A bucket with index `i` leaves the ring when the newest index reaches `i + B`.
    fn leaves_at(index: u64) -> Millis {
        (index + B as u64) * G
    }

    /// Moves the ring forward to `now`, emptying the buckets that fell out of it.
    fn advance(&mut self, now: Millis) {
        let bucket = now / G;
        if bucket <= self.newest {
            return;
        }
        if bucket - self.newest >= B as u64 {
            *self = Window {
                newest: bucket,
                ..Window::default()
            };
            return;
        }
        for i in self.newest + 1..=bucket {
            let slot = Self::slot(i);
            self.total -= self.counts[slot];
            self.counts[slot] = 0;
        }
        self.newest = bucket;
    }

    /// Whether one more request fits, without counting it.
    pub fn has_room(&mut self, now: Millis, limit: u32) -> bool {
        self.advance(now);
        self.total < limit
    }

    /// Counts one admitted request. Call only after `has_room` said yes for the same `now`.
    pub fn count(&mut self) {
        self.counts[Self::slot(self.newest)] += 1;
        self.total += 1;
    }

    /// Reads only the newest buckets in the common case; walks the ring only when it is full.
    pub fn standing(&self, now: Millis, limit: u32) -> Standing {
        let mut s = Standing {
            limit,
            remaining: limit.saturating_sub(self.total),
            reset_ms: 0,
            retry_ms: 0,
        };
        if self.total == 0 {
            return s;
        }
        let oldest = self.newest.saturating_sub(B as u64 - 1);
        if let Some(last) = (oldest..=self.newest)
            .rev()
            .find(|&i| self.counts[Self::slot(i)] != 0)
        {
            s.reset_ms = Self::leaves_at(last).saturating_sub(now);
        }
        if self.total >= limit {
            let mut left = self.total;
            for i in oldest..=self.newest {
                left -= self.counts[Self::slot(i)];
                if left < limit {
                    s.retry_ms = Self::leaves_at(i).saturating_sub(now);
                    break;
                }
            }
        }
        s
    }

    /// True once nothing counted is left in the window: the state can be dropped.
    pub fn is_idle(&self, now: Millis) -> bool {
        self.total == 0 || now / G >= self.newest + B as u64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::mem::offset_of;

    const W: Millis = 1_000;

    /// What `repr(C)` is for: a decision's reads of `newest` and `total` share the first line
    /// with the buckets that follow them.
    #[test]
    fn a_windows_bookkeeping_comes_before_its_buckets() {
        type Sustained = Window<61, 1_000>;
        assert_eq!(offset_of!(Sustained, newest), 0);
        assert_eq!(offset_of!(Sustained, total), 8);
        assert_eq!(offset_of!(Sustained, counts), 12);
    }

    /// Offers requests at the given times; returns the times admitted.
    fn run(times: impl IntoIterator<Item = Millis>, limit: u32) -> Vec<Millis> {
        let mut w = Window::<21, 50>::default();
        let mut admitted = Vec::new();
        for t in times {
            if w.has_room(t, limit) {
                w.count();
                admitted.push(t);
            }
        }
        admitted
    }

    /// The most admissions in any window `[s, s + w)`.
    fn max_in_any_window(admitted: &[Millis], w: Millis) -> usize {
        let mut best = 0;
        let mut start = 0;
        for end in 0..admitted.len() {
            while admitted[end] - admitted[start] >= w {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    #[test]
    fn a_steady_client_at_90_percent_is_never_refused() {
        for limit in [1u32, 5, 30, 1000] {
            // 0.9 × limit per second, evenly spaced, for 100 windows.
            let gap = W as f64 / (0.9 * f64::from(limit));
            let n = (100.0 * 0.9 * f64::from(limit)) as u64;
            let times: Vec<Millis> = (0..n).map(|i| (i as f64 * gap) as u64 + 7).collect();
            assert_eq!(
                run(times.clone(), limit).len(),
                times.len(),
                "limit {limit}"
            );
        }
    }

    /// What an exact "at most `limit` in any window" limiter (a log of every admission) admits
    /// from the same arrivals: the yardstick for how much the bucketed ring gives away.
    pub(crate) fn exact_admissions(times: &[Millis], limit: u32, w: Millis) -> usize {
        let mut count = 0;
        let mut log: std::collections::VecDeque<Millis> = Default::default();
        for &t in times {
            while log.front().is_some_and(|&a| t - a >= w) {
                log.pop_front();
            }
            if log.len() < limit as usize {
                log.push_back(t);
                count += 1;
            }
        }
        count
    }

    #[test]
    fn overload_never_exceeds_the_limit_in_any_window() {
        for limit in [1u32, 5, 30, 1000] {
            for factor in [2u64, 10] {
                let n = u64::from(limit) * factor * 20;
                let gap = W as f64 / (factor as f64 * f64::from(limit));
                let times: Vec<Millis> = (0..n).map(|i| (i as f64 * gap) as u64).collect();
                let admitted = run(times.clone(), limit);
                assert!(
                    max_in_any_window(&admitted, W) <= limit as usize,
                    "{limit} ×{factor}"
                );
                // Not starved: close to an exact limiter when arrivals are finer than a bucket
                // (50 ms), and within the ring's one-bucket slack when they are coarser.
                let exact = exact_admissions(&times, limit, W) as f64;
                let floor = if gap <= 50.0 { 0.9 } else { 0.6 };
                assert!(
                    admitted.len() as f64 >= floor * exact,
                    "{limit} ×{factor}: {} of {exact}",
                    admitted.len()
                );
            }
        }
    }

    #[test]
    fn bursts_at_bucket_edges_cannot_double_up() {
        // All of the limit at the very end of one bucket, then again right after.
        let limit = 10;
        let mut times = vec![49; 10];
        times.extend([50; 10]);
        times.extend([999; 10]);
        times.extend([1000, 1001, 1049, 1050, 1051]);
        times.extend([1049 + 1000; 10]);
        let admitted = run(times, limit);
        assert!(max_in_any_window(&admitted, W) <= 10, "{admitted:?}");
    }

    #[test]
    fn retry_and_reset_say_when_room_returns() {
        let mut w = Window::<21, 50>::default();
        for t in [0, 100, 200, 300, 400] {
            assert!(w.has_room(t, 5));
            w.count();
        }
        assert!(!w.has_room(450, 5));
        let s = w.standing(450, 5);
        assert_eq!(s.remaining, 0);
        // The bucket holding t=0 leaves the ring when the ring's newest bucket is 21, at 1050 ms.
        assert_eq!(s.retry_ms, 1050 - 450);
        assert_eq!(s.reset_ms, (8 + 21) * 50 - 450);
        assert!(!w.has_room(450 + s.retry_ms - 1, 5));
        assert!(w.has_room(450 + s.retry_ms, 5));
    }

    #[test]
    fn idle_after_a_whole_ring_without_requests() {
        let mut w = Window::<21, 50>::default();
        assert!(w.is_idle(0));
        assert!(w.has_room(10, 1));
        w.count();
        assert!(!w.is_idle(1000));
        assert!(w.is_idle(1050));
        // A long gap empties everything at once.
        assert!(w.has_room(1_000_000, 1));
        assert_eq!(w.standing(1_000_000, 1).remaining, 1);
        assert_eq!(Window::<21, 50>::LENGTH_MS, W);
    }
}
