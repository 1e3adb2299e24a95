//! The `[metrics] buckets` value: which classic buckets a latency histogram shows
//! (`export::buckets` turns it into kernel bucket indices).

use std::fmt;
use std::str::FromStr;

use eventflux_probe_common::hist;

/// A classic bucket layout as configured: `default`, `full`, or bounds in seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Buckets {
    Default,
    Full,
    Seconds(Vec<f64>),
}

impl FromStr for Buckets {
    type Err = String;

    /// `default`, `full`, or bounds in seconds separated by commas (`0.001,0.01,0.1`).
    fn from_str(s: &str) -> Result<Buckets, String> {
        match s.trim() {
            "default" => Ok(Buckets::Default),
            "full" => Ok(Buckets::Full),
            list => {
                let bounds = list
                    .split(',')
                    .map(|b| {
                        let b = b.trim();
                        match b.parse::<f64>() {
                            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
                            _ => Err(format!(
                                "`{b}` is not a bucket bound (expected `default`, `full`, or positive seconds separated by commas, e.g. 0.001,0.01,0.1)"
                            )),
                        }
                    })
                    .collect::<Result<Vec<f64>, String>>()?;
                Buckets::from_seconds(bounds)
            }
        }
    }
}

impl fmt::Display for Buckets {
    /// As [`FromStr`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Buckets::Default => f.write_str("default"),
            Buckets::Full => f.write_str("full"),
            Buckets::Seconds(bounds) => {
                let text: Vec<String> = bounds.iter().map(f64::to_string).collect();
                f.write_str(&text.join(","))
            }
        }
    }
}

impl Buckets {
    /// Bounds given as numbers (a TOML array), checked as the text form is.
    pub fn from_seconds(bounds: Vec<f64>) -> Result<Buckets, String> {
        if bounds.is_empty() {
            return Err("no bucket bounds (expected `default`, `full`, or positive seconds)".to_owned());
        }
        if let Some(b) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
            return Err(format!("`{b}` is not a bucket bound (bounds are positive seconds)"));
        }
        let last = hist::upper_seconds(hist::BUCKETS - 2);
        if let Some(b) = bounds.iter().find(|b| **b > last) {
            return Err(format!("bucket bound {b} s is past the largest the kernel keeps ({last} s)"));
        }
        Ok(Buckets::Seconds(bounds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_back_and_bad_text_is_named() {
        for text in ["default", "full", "0.001,0.01,0.5"] {
            let b: Buckets = text.parse().expect(text);
            assert_eq!(b.to_string().parse::<Buckets>(), Ok(b));
        }
        assert_eq!(
            "0.001,fast".parse::<Buckets>(),
            Err("`fast` is not a bucket bound (expected `default`, `full`, or positive seconds separated by commas, e.g. 0.001,0.01,0.1)".to_owned())
        );
        assert!("0,1".parse::<Buckets>().is_err());
        assert!("5000".parse::<Buckets>().unwrap_err().contains("past the largest"));
    }
}
