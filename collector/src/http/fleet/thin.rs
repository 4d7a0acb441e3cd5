//! Bounding a chart's points: up to `max` points are kept as they are;
//! past that, the window is cut into `max / 2` equal buckets and each keeps
//! its lowest and highest numeric point (or, holding none, its first), so
//! peaks and dips stay visible. Memory is `O(max)` whatever the window holds.

use crate::model::{Point, StoredValue};

/// One bucket of a thinned window.
#[derive(Debug, Clone, Default)]
struct Bucket {
    lo: Option<(f64, Point)>,
    hi: Option<(f64, Point)>,
    first: Option<Point>,
}

/// Takes a window's points in time order, keeps at most `max`.
pub struct Thinner {
    since_ns: i64,
    until_ns: i64,
    max: usize,
    total: usize,
    exact: Vec<Point>,
    buckets: Vec<Bucket>,
}

/// A point's value as a number, when it has one.
fn number(p: &Point) -> Option<f64> {
    match p.value {
        StoredValue::F64(v) if v.is_finite() => Some(v),
        StoredValue::I64(v) => Some(v as f64),
        StoredValue::U64(v) => Some(v as f64),
        StoredValue::Bool(v) => Some(f64::from(u8::from(v))),
        _ => None,
    }
}

impl Thinner {
    /// For points in `[since_ns, until_ns)`; `max` is at least 2.
    pub fn new(since_ns: i64, until_ns: i64, max: usize) -> Thinner {
        Thinner {
            since_ns,
            until_ns,
            max: max.max(2),
            total: 0,
            exact: Vec::new(),
            buckets: Vec::new(),
        }
    }

    pub fn push(&mut self, p: &Point) {
        self.total += 1;
        if self.buckets.is_empty() {
            if self.exact.len() < self.max {
                self.exact.push(p.clone());
                return;
            }
            self.buckets = vec![Bucket::default(); self.max / 2];
            for q in std::mem::take(&mut self.exact) {
                self.bucket(q);
            }
        }
        self.bucket(p.clone());
    }

    fn bucket(&mut self, p: Point) {
        let n = self.buckets.len();
        let width = i128::from(self.until_ns) - i128::from(self.since_ns);
        let offset = i128::from(p.ts_ns) - i128::from(self.since_ns);
        let i = if width <= 0 {
            0
        } else {
            usize::try_from((offset * n as i128 / width).clamp(0, n as i128 - 1)).unwrap_or(0)
        };
        let b = &mut self.buckets[i];
        match number(&p) {
            Some(v) => {
                if b.lo.as_ref().is_none_or(|(lo, _)| v < *lo) {
                    b.lo = Some((v, p.clone()));
                }
                if b.hi.as_ref().is_none_or(|(hi, _)| v > *hi) {
                    b.hi = Some((v, p));
                }
            }
            None => {
                if b.first.is_none() {
                    b.first = Some(p);
                }
            }
        }
    }

    /// The points kept (in time order), how many were pushed, and whether
    /// they were thinned.
    pub fn finish(self) -> (Vec<Point>, usize, bool) {
        if self.buckets.is_empty() {
            return (self.exact, self.total, false);
        }
        let mut out = Vec::with_capacity(self.max);
        for b in self.buckets {
            match (b.lo, b.hi) {
                (Some((_, lo)), Some((_, hi))) => {
                    let (a, z) = if lo.ts_ns <= hi.ts_ns {
                        (lo, hi)
                    } else {
                        (hi, lo)
                    };
                    let same = a.ts_ns == z.ts_ns;
                    out.push(a);
                    if !same {
                        out.push(z);
                    }
                }
                _ => out.extend(b.first),
            }
        }
        (out, self.total, true)
    }
}
