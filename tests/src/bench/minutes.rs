//! Long measured windows read minute by minute (`vs-prometheus`): each
//! process's CPU and the scrapes served in every minute, so the cost of
//! work that comes in bursts (compaction's tier merges) shows where it
//! falls rather than only in the window's average.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::progress::Progress;

/// Windows this long or longer are also measured minute by minute, so the
/// tenth minute shows apart from the first (compaction's tier merges, which
/// a short window ends before, grow with the data).
pub const SLICED_FROM: Duration = Duration::from_secs(300);
const SLICE: Duration = Duration::from_secs(60);

/// One minute of a long window: the CPU seconds of each process measured
/// and the scrapes the targets served in it.
pub struct Slice<const N: usize> {
    cpu_s: [f64; N],
    scrapes: u64,
    seconds: f64,
}

impl<const N: usize> Slice<N> {
    pub fn cpu_per_million(&self, samples_per_scrape: usize) -> f64 {
        let samples = (self.scrapes * samples_per_scrape as u64) as f64;
        self.cpu_s.iter().sum::<f64>() / samples.max(1.0) * 1e6
    }

    /// `minute: CPU-s/M (cores of each process)`, a line per minute.
    pub fn table(slices: &[Slice<N>], samples_per_scrape: usize, names: &[&str; N]) -> String {
        slices
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let cores: Vec<String> = names
                    .iter()
                    .zip(s.cpu_s)
                    .map(|(n, c)| format!("{n} {:.3}", c / s.seconds))
                    .collect();
                format!(
                    "minute {}: {:.3} CPU-s/M ({} cores)",
                    i + 1,
                    s.cpu_per_million(samples_per_scrape),
                    cores.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Waits out a measured window of `d`; for a window of [`SLICED_FROM`] or
/// more, also reads `sample` (CPU seconds of each process, scrapes served)
/// at every whole [`SLICE`] and returns the slices (none otherwise).
pub async fn in_slices<const N: usize>(
    d: Duration,
    progress: &Progress,
    label: &str,
    mut extra: impl FnMut() -> String,
    mut sample: impl FnMut() -> Result<([f64; N], u64)>,
    start: ([f64; N], u64),
) -> Result<Vec<Slice<N>>> {
    if d < SLICED_FROM {
        progress.wait(d, label, extra).await;
        return Ok(Vec::new());
    }
    let mut slices = Vec::new();
    let (mut before, mut at) = (start, Instant::now());
    let mut left = d;
    while !left.is_zero() {
        let width = left.min(SLICE);
        let minute = slices.len() + 1;
        progress
            .wait(width, &format!("{label}, minute {minute}"), &mut extra)
            .await;
        left -= width;
        let now = sample()?;
        let mut cpu_s = [0.0; N];
        for (c, (n, b)) in cpu_s.iter_mut().zip(now.0.iter().zip(before.0)) {
            *c = n - b;
        }
        slices.push(Slice {
            cpu_s,
            scrapes: now.1 - before.1,
            seconds: at.elapsed().as_secs_f64(),
        });
        (before, at) = (now, Instant::now());
    }
    Ok(slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_cpu_over_its_own_samples() {
        let minutes = [
            Slice {
                cpu_s: [6.0, 3.0],
                scrapes: 120_000,
                seconds: 60.0,
            },
            Slice {
                cpu_s: [6.0, 12.0],
                scrapes: 120_000,
                seconds: 60.0,
            },
        ];
        // 120,000 scrapes × 105 samples = 12.6 M samples.
        assert!((minutes[0].cpu_per_million(105) - 9.0 / 12.6).abs() < 1e-9);
        assert!((minutes[1].cpu_per_million(105) - 18.0 / 12.6).abs() < 1e-9);
        assert_eq!(
            Slice::table(&minutes, 105, &["agent", "collector"]),
            "minute 1: 0.714 CPU-s/M (agent 0.100, collector 0.050 cores); \
             minute 2: 1.429 CPU-s/M (agent 0.100, collector 0.200 cores)"
        );
    }
}
