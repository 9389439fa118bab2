//! Metrics written on every request, kept per worker and summed when scraped.
//!
//! A counter shared by all workers is one cache line that every request on every core writes:
//! the cores pass it back and forth, and a histogram behind a mutex is worse. Here each worker
//! writes cells of its own (one cache line apart), and only `/metrics` reads them all. The values
//! scraped are the same as with shared counters; a scrape during traffic sees each worker's cells
//! at a slightly different instant, as it would see them change between lines anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::workers;

/// Cells per metric; workers beyond it share (worker `i` writes cell `i % SHARDS`).
const SHARDS: usize = 8;

/// One cell on a cache line of its own (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
#[derive(Default)]
struct Line<T>(T);

fn shard() -> usize {
    workers::current() % SHARDS
}

/// A monotonic counter.
#[derive(Clone, Default)]
pub struct Counter(Arc<[Line<AtomicU64>; SHARDS]>);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Counter").field(&self.get()).finish()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge that goes up and down (requests in flight: a request starts and ends on one worker,
/// so each cell returns to its own balance).
#[derive(Clone, Default)]
pub struct Gauge(Arc<[Line<AtomicI64>; SHARDS]>);

impl Gauge {
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0[shard()].0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Gauge").field(&self.get()).finish()
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of the duration histogram: 1 ms doubling to ~65 s, then +Inf.
const BOUNDS: usize = 17;

fn upper_bound(i: usize) -> f64 {
    if i < BOUNDS {
        0.001 * f64::powi(2.0, i as i32)
    } else {
        f64::INFINITY
    }
}

#[derive(Default)]
struct HistogramCell {
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [AtomicU64; BOUNDS + 1],
    /// Sum of the observations in nanoseconds: integer adds, no compare-and-swap loop.
    sum_nanos: AtomicU64,
}

/// A histogram of durations with the fixed buckets above.
#[derive(Clone, Default)]
pub struct Histogram(Arc<[Line<HistogramCell>; SHARDS]>);

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let bucket = (0..BOUNDS)
            .find(|i| secs <= upper_bound(*i))
            .unwrap_or(BOUNDS);
        let cell = &self.0[shard()].0;
        cell.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        cell.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = (0..=BOUNDS).map(|i| (upper_bound(i), 0)).collect();
        let mut sum_nanos: u128 = 0;
        for cell in self.0.iter() {
            for (i, b) in cell.0.buckets.iter().enumerate() {
                buckets[i].1 += b.load(Ordering::Relaxed);
            }
            sum_nanos += u128::from(cell.0.sum_nanos.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum_nanos as f64 / 1e9, count, buckets)
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Histogram")
            .field(&self.snapshot().1)
            .finish()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cells_on_every_worker_add_up() {
        let counter = Counter::default();
        let gauge = Gauge::default();
        let histogram = Histogram::default();
        let pool = workers::Workers::start(3).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.spawn_each(|_| {
            let (counter, gauge, histogram, tx) = (
                counter.clone(),
                gauge.clone(),
                histogram.clone(),
                tx.clone(),
            );
            async move {
                counter.inc_by(5);
                gauge.inc();
                histogram.observe(Duration::from_micros(1500));
                let _ = tx.send(());
            }
        });
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        pool.stop();
        counter.inc();
        gauge.dec();
        histogram.observe(Duration::from_secs(100));
        assert_eq!(counter.get(), 16);
        assert_eq!(gauge.get(), 2);
        let (sum, count, buckets) = histogram.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 100.0045).abs() < 1e-9, "{sum}");
        // 1.5 ms lands in the 2 ms bucket; 100 s past the last bound, in +Inf.
        assert_eq!(buckets[1], (0.002, 3));
        assert_eq!(buckets[BOUNDS], (f64::INFINITY, 1));
    }
}
