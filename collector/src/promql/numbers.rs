//! Floats as Prometheus 2.42 writes them (Go's `strconv.FormatFloat` with
//! precision -1): the shortest decimal that reads back as the same f64,
//! in the `'f'` form (no exponent) or the `'e'` form (`1.5e-07`).
//!
//! The digits are ryu's, laid out here; a sample value costs no
//! allocation and no `fmt` machinery, which mattered for answers that are
//! mostly numbers. They are Go's digits: the shortest that round-trip, the
//! closest to the value among those, and of two as close (an exact tie,
//! `1658206780088562.25`) the even one, "1658206780088562.2" as
//! Prometheus 2.42 writes it. Rust's `Display` and `LowerExp`, the forms
//! this module replaced, round that tie up ("…562.3"); the tests hold the
//! two equal everywhere else.

/// Formats a float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` does,
/// which is how Prometheus writes a scalar's value and `count_values`'s
/// label: the shortest decimal that reads back the same, no exponent, and
/// `NaN`, `+Inf`, `-Inf`.
pub fn format_float(v: f64) -> String {
    let mut out = String::new();
    write_float(&mut out, v);
    out
}

/// [`format_float`], appended to `out` (no allocation of its own).
pub fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v == 0.0 {
        // Go writes negative zero as "-0".
        out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // A whole number below 2^53 is its own shortest form: any other
        // decimal as short would be another integer, another f64.
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        Shortest::of(v).write_plain(out);
    }
}

/// A sample's value as Prometheus 2.42 writes it in a vector or a matrix
/// (`jsonutil.MarshalValue`): as [`format_float`], but with an exponent
/// (`1e+21`, `1.5e-07`: sign and at least two digits, as Go writes it)
/// when the magnitude is below 1e-6 or at least 1e21.
pub fn format_sample_value(v: f64) -> String {
    let mut out = String::new();
    write_sample_value(&mut out, v);
    out
}

/// [`format_sample_value`], appended to `out`.
pub fn write_sample_value(out: &mut String, v: f64) {
    let abs = v.abs();
    if !abs.is_finite() || abs == 0.0 || (1e-6..1e21).contains(&abs) {
        write_float(out, v);
        return;
    }
    write_exponent(out, v);
}

/// A finite float as Go's `strconv.FormatFloat(v, 'e', -1, 64)` writes
/// it: the shortest mantissa that reads back the same, `e`, the exponent's
/// sign and at least two digits (`1.5e-07`, `1e+100`).
pub fn write_exponent(out: &mut String, v: f64) {
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() {
            "-0e+00"
        } else {
            "0e+00"
        });
        return;
    }
    Shortest::of(v).write_exponent(out);
}

/// The most significant digits an f64 needs to read back (17), with room
/// for the zeros ryu writes before `.0` in its plain form.
const MAX_DIGITS: usize = 24;

/// The shortest round-trip decimal of a finite, non-zero float: the
/// value is `0.DIGITS × 10^point`, negated when `negative`; `digits` has
/// no leading or trailing zero.
struct Shortest {
    negative: bool,
    digits: [u8; MAX_DIGITS],
    len: usize,
    point: i32,
}

impl Shortest {
    /// The digits of ryu's text (`-0.001234`, `1234.5`, `1.0`, `1e30`,
    /// `1.5e-7`: either form), without its layout.
    fn of(v: f64) -> Shortest {
        let mut buffer = ryu::Buffer::new();
        let text = buffer.format_finite(v);
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match text.split_once('e') {
            // ryu's exponent is an integer of at most three digits.
            Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
            None => (text, 0),
        };
        let whole = mantissa.find('.').unwrap_or(mantissa.len());
        let mut out = Shortest {
            negative,
            digits: [0; MAX_DIGITS],
            len: 0,
            point: exponent + whole as i32,
        };
        for d in mantissa.bytes().filter(u8::is_ascii_digit) {
            if out.len == 0 && d == b'0' {
                // A leading zero (`0.001234`) moves the point instead.
                out.point -= 1;
            } else if out.len < MAX_DIGITS {
                out.digits[out.len] = d;
                out.len += 1;
            }
        }
        while out.len > 1 && out.digits[out.len - 1] == b'0' {
            out.len -= 1;
        }
        out
    }

    fn push_digits(out: &mut String, digits: &[u8]) {
        out.extend(digits.iter().map(|&d| char::from(d)));
    }

    fn push_zeros(out: &mut String, n: usize) {
        out.extend(std::iter::repeat_n('0', n));
    }

    /// The `'f'` form: `123.45`, `0.00012`, `1200`.
    fn write_plain(&self, out: &mut String) {
        if self.negative {
            out.push('-');
        }
        let digits = &self.digits[..self.len];
        match usize::try_from(self.point) {
            Err(_) | Ok(0) => {
                out.push_str("0.");
                Self::push_zeros(out, self.point.unsigned_abs() as usize);
                Self::push_digits(out, digits);
            }
            Ok(point) if point >= digits.len() => {
                Self::push_digits(out, digits);
                Self::push_zeros(out, point - digits.len());
            }
            Ok(point) => {
                Self::push_digits(out, &digits[..point]);
                out.push('.');
                Self::push_digits(out, &digits[point..]);
            }
        }
    }

    /// The `'e'` form: `1.2345e+02`, `1e-07`.
    fn write_exponent(&self, out: &mut String) {
        if self.negative {
            out.push('-');
        }
        let digits = &self.digits[..self.len];
        Self::push_digits(out, &digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            Self::push_digits(out, &digits[1..]);
        }
        let exponent = self.point - 1;
        out.push_str(if exponent < 0 { "e-" } else { "e+" });
        if exponent.unsigned_abs() < 10 {
            out.push('0');
        }
        out.push_str(itoa::Buffer::new().format(exponent.unsigned_abs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forms this module replaced: Rust's shortest `Display` (the
    /// `'f'` form but for the special values) and `LowerExp` with Go's
    /// exponent (sign, at least two digits).
    fn plain_reference(v: f64) -> String {
        format!("{v}")
    }

    fn exponent_reference(v: f64) -> String {
        let text = format!("{v:e}");
        let (mantissa, exponent) = text.split_once('e').expect("LowerExp has an e");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    }

    /// Equal to the reference, or both the shortest round trip of `v`
    /// with `v` exactly halfway between them, and `ours` the even one.
    fn same_or_tie_to_even(ours: &str, reference: &str, v: f64) {
        if ours == reference {
            return;
        }
        let significant = |s: &str| -> String {
            let mantissa = s.split('e').next().unwrap_or_default();
            let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
            digits
                .trim_start_matches('0')
                .trim_end_matches('0')
                .to_owned()
        };
        let (mine, theirs) = (significant(ours), significant(reference));
        assert_eq!(ours.parse::<f64>().ok(), Some(v), "{ours} reads back");
        assert_eq!(mine.len(), theirs.len(), "{ours} against {reference}");
        // The exact decimal expansion of `v` (1100 digits hold any f64's):
        // a tie when it goes on as 5 and then only zeros.
        let exact = format!("{:.1100e}", v.abs());
        let exact: String = significant(&exact).chars().collect();
        let rest = exact.get(mine.len()..).unwrap_or_default();
        assert!(
            rest.starts_with('5') && rest[1..].chars().all(|c| c == '0'),
            "{ours} against {reference}: not a tie ({exact})"
        );
        let last = mine.bytes().last().unwrap_or(b'0');
        assert!(last % 2 == 0, "{ours} against {reference}: the odd one");
    }

    fn check(v: f64) {
        same_or_tie_to_even(&format_float(v), &plain_reference(v), v);
        let mut e = String::new();
        write_exponent(&mut e, v);
        same_or_tie_to_even(&e, &exponent_reference(v), v);
    }

    #[test]
    fn as_go_writes_them() {
        assert_eq!(format_float(1e21), "1000000000000000000000");
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(-0.0), "-0");
        assert_eq!(format_float(123.456), "123.456");
        assert_eq!(format_float(1e-7), "0.0000001");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_sample_value(1e21), "1e+21");
        assert_eq!(format_sample_value(-1.5e-7), "-1.5e-07");
        assert_eq!(format_sample_value(1.25e100), "1.25e+100");
        assert_eq!(format_sample_value(1e-6), "0.000001");
        assert_eq!(format_sample_value(f64::INFINITY), "+Inf");
        assert_eq!(format_sample_value(5e-324), "5e-324");
        // A tie between two shortest forms goes to the even digit, as in
        // Go (Prometheus 2.42 answers `1658206780088562.25` so).
        // (Written as a sum: the literal's last digits are exact, 0.25 is
        // the spacing of floats there, but clippy reads it as too precise.)
        let tie = 1_658_206_780_088_562.0 + 0.25;
        assert_eq!(format_float(tie), "1658206780088562.2");
    }

    #[test]
    fn edges_match_the_standard_library() {
        let mut values = vec![
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            5e-324,
            1e15,
            1e15 - 1.0,
            1e15 + 0.5,
            9_007_199_254_740_992.0,
            9_007_199_254_740_993.0,
            1e16,
            1e17,
            123_456_789_012_345_680.0,
            0.3,
            2.0 / 3.0,
            1e-5,
            1.5e-5,
            1e-6,
            // The float just below 1e-6.
            f64::from_bits(1e-6_f64.to_bits() - 1),
            1e21,
            1e22,
            1e23,
            -0.0,
            1.0,
        ];
        for e in -325..=309 {
            let p = 10f64.powi(e);
            values.extend([p, -p, p * 1.5, p * 7.0 / 3.0, p * 0.999_999_999_999]);
        }
        for v in values.into_iter().filter(|v| v.is_finite()) {
            check(v);
        }
    }

    #[test]
    fn random_floats_match_the_standard_library() {
        // Every bit pattern class: a fixed xorshift sequence, as bits (all
        // magnitudes) and as small decimals (what readings look like).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let bits = f64::from_bits(next());
            if bits.is_finite() {
                check(bits);
            }
            let reading = (next() % 10_000_000) as f64 / 1000.0 - 5000.0;
            check(reading);
            let rate = (next() % 1_000_000) as f64 / 15.0;
            check(rate);
        }
    }
}
