//! What a scenario reports: latency percentiles, and one result printed as a
//! two-column table or as one JSON object.

use anyhow::Result;
use std::time::Duration;

/// A scenario's result.
pub struct Report {
    pub title: String,
    /// Label and value, in the order they are printed.
    pub rows: Vec<(String, String)>,
    pub json: serde_json::Value,
    /// Operations that failed; a run with failures exits non-zero.
    pub failed: usize,
}

impl Report {
    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string(&self.json)?);
            return Ok(());
        }
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!("{}", self.title);
        println!("{}", "-".repeat(self.title.chars().count()));
        for (k, v) in &self.rows {
            println!("{k:<width$}  {v}");
        }
        Ok(())
    }
}

/// Percentiles of a set of durations (nearest rank).
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub mean: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let total: Duration = samples.iter().sum();
        Latency {
            mean: total / n as u32,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[n - 1],
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mean": ms(self.mean),
            "p50": ms(self.p50),
            "p90": ms(self.p90),
            "p99": ms(self.p99),
            "max": ms(self.max),
        })
    }

    /// `p50 / p90 / p99 / max` in milliseconds.
    pub fn line(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Milliseconds, rounded to microseconds.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(l.p50, Duration::from_millis(50));
        assert_eq!(l.p90, Duration::from_millis(90));
        assert_eq!(l.p99, Duration::from_millis(99));
        assert_eq!(l.max, Duration::from_millis(100));
        assert_eq!(l.mean, Duration::from_micros(50_500));
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let seven = Duration::from_millis(7);
        let l = Latency::of(vec![seven]);
        assert_eq!([l.p50, l.p90, l.p99, l.max], [seven; 4]);
    }

    #[test]
    fn no_samples_report_zero() {
        let l = Latency::of(Vec::new());
        assert_eq!(l.max, Duration::ZERO);
    }
}
