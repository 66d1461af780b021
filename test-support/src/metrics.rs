//! Assertions on a Prometheus text page, in the style of linkerd2-proxy's integration tests:
//!
//! ```ignore
//! metric("keygate_requests_total")
//!     .label("outcome", "allowed")
//!     .label("route", "products-read")
//!     .value(3)
//!     .assert_at(kg.admin); // or .assert_in(&text), or .eventually(kg.admin)
//! ```
//!
//! A series matches when its name is the metric's name and it carries every label asked for
//! with that value (other labels may be there too: name them all to pick one series). The
//! value compared is the sum of the matching series, so with every label given it is that one
//! series' value. No matching series at all fails every expectation: an absent counter is not
//! a zero. A failure lists every series of that name found.

use crate::http;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long [`Metric::eventually`] polls unless [`Metric::within`] says otherwise.
pub const EVENTUALLY: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// One sample line of a text page: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of one label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        write_labels(f, &self.labels)?;
        write!(f, " {}", self.value)
    }
}

fn write_labels(f: &mut fmt::Formatter<'_>, labels: &[(String, String)]) -> fmt::Result {
    if labels.is_empty() {
        return Ok(());
    }
    f.write_str("{")?;
    for (i, (name, value)) in labels.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(f, "{sep}{name}=\"{}\"", escape(value))?;
    }
    f.write_str("}")
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every sample of a text-format page (`# HELP`/`# TYPE` comments and blank lines skipped).
///
/// # Panics
/// On a line that is not a sample, quoting it.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("not a sample line: {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let label = rest[..eq].trim().to_owned();
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((label, value));
            rest = &rest[end + 1..];
        }
    }
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Starts a matcher for the series named `name` (histograms: `..._bucket`, `..._sum`,
/// `..._count`).
pub fn metric(name: impl Into<String>) -> Metric {
    Metric {
        name: name.into(),
        labels: Vec::new(),
        expect: Expect::Present,
        within: EVENTUALLY,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Present,
    Equal(f64),
    AtLeast(f64),
    LessThan(f64),
}

/// What a page must hold: series of one name with some labels, and their value. Built by
/// [`metric`].
#[derive(Clone, Debug)]
#[must_use = "a matcher asserts nothing until one of its assert methods runs"]
pub struct Metric {
    name: String,
    labels: Vec<(String, String)>,
    expect: Expect,
    within: Duration,
}

impl Metric {
    /// Only series with this label set to this value.
    pub fn label(mut self, name: impl Into<String>, value: impl ToString) -> Metric {
        self.labels.push((name.into(), value.to_string()));
        self
    }

    /// The value must be exactly this.
    pub fn value(mut self, value: impl Into<f64>) -> Metric {
        self.expect = Expect::Equal(value.into());
        self
    }

    /// The value must be this or more.
    pub fn at_least(mut self, value: impl Into<f64>) -> Metric {
        self.expect = Expect::AtLeast(value.into());
        self
    }

    /// The value must be under this.
    pub fn less_than(mut self, value: impl Into<f64>) -> Metric {
        self.expect = Expect::LessThan(value.into());
        self
    }

    /// How long [`eventually`](Self::eventually) polls (default [`EVENTUALLY`]).
    pub fn within(mut self, limit: Duration) -> Metric {
        self.within = limit;
        self
    }

    fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.name
            && self
                .labels
                .iter()
                .all(|(n, v)| sample.label(n) == Some(v.as_str()))
    }

    /// The sum of the matching series on `text`, `None` when there are none.
    pub fn value_in(&self, text: &str) -> Option<f64> {
        parse(text)
            .iter()
            .filter(|s| self.matches(s))
            .map(|s| s.value)
            .reduce(|a, b| a + b)
    }

    /// Whether `text` holds what the matcher asks for.
    pub fn is_in(&self, text: &str) -> bool {
        let Some(value) = self.value_in(text) else {
            return false;
        };
        match self.expect {
            Expect::Present => true,
            Expect::Equal(want) => value == want,
            Expect::AtLeast(min) => value >= min,
            Expect::LessThan(max) => value < max,
        }
    }

    /// Checks the page `text`.
    ///
    /// # Panics
    /// When it does not hold what the matcher asks for, listing every series of the name.
    pub fn assert_in(&self, text: &str) {
        if !self.is_in(text) {
            panic!("{}", self.failure(text));
        }
    }

    /// Scrapes `http://{addr}/metrics` once and checks it.
    ///
    /// # Panics
    /// When the scrape fails or the page does not hold what the matcher asks for.
    pub fn assert_at(&self, addr: SocketAddr) {
        self.assert_in(&scrape(addr));
    }

    /// Scrapes `http://{addr}/metrics` every 20 ms until the page holds what the matcher asks
    /// for; after [`within`](Self::within) (default [`EVENTUALLY`]) it panics with the last page.
    pub fn eventually(&self, addr: SocketAddr) {
        let start = Instant::now();
        loop {
            let text = scrape(addr);
            if self.is_in(&text) {
                return;
            }
            if start.elapsed() >= self.within {
                panic!("after {:?}: {}", self.within, self.failure(&text));
            }
            std::thread::sleep(POLL);
        }
    }

    fn failure(&self, text: &str) -> String {
        let found: Vec<String> = parse(text)
            .iter()
            .filter(|s| s.name == self.name)
            .map(|s| format!("  {s}"))
            .collect();
        let found = if found.is_empty() {
            format!("no series named {} at all", self.name)
        } else {
            format!("series named {}:\n{}", self.name, found.join("\n"))
        };
        let got = match self.value_in(text) {
            Some(v) => format!("the matching series add up to {v}"),
            None => "no series matches".to_owned(),
        };
        format!("expected {self}; {got}; {found}")
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        write_labels(f, &self.labels)?;
        match self.expect {
            Expect::Present => f.write_str(" present"),
            Expect::Equal(v) => write!(f, " == {v}"),
            Expect::AtLeast(v) => write!(f, " >= {v}"),
            Expect::LessThan(v) => write!(f, " < {v}"),
        }
    }
}

/// `GET http://{addr}/metrics`: the page (200 expected).
///
/// # Panics
/// On an I/O error or another status.
pub fn scrape(addr: SocketAddr) -> String {
    let r = http::get(addr, "/metrics", &[]);
    assert_eq!(r.status, 200, "GET /metrics on {addr}: {}", r.text());
    r.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP keygate_requests_total Requests.
# TYPE keygate_requests_total counter
keygate_requests_total{outcome="allowed",route="products-read"} 3
keygate_requests_total{outcome="not_found",route=""} 1
keygate_requests_total{outcome="allowed",route="geo"} 2
keygate_ready 1
keygate_request_duration_seconds_bucket{le="+Inf"} 6
odd{v="a \"quoted\" \\ back\nslash, and } brace"} 7 1700000000000
"#;

    #[test]
    fn parses_labels_values_and_escapes() {
        let samples = parse(PAGE);
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[1].label("route"), Some(""));
        assert_eq!(samples[3].name, "keygate_ready");
        assert!(samples[3].labels.is_empty());
        assert_eq!(samples[4].value, 6.0);
        assert_eq!(samples[4].label("le"), Some("+Inf"));
        assert_eq!(
            samples[5].label("v"),
            Some("a \"quoted\" \\ back\nslash, and } brace")
        );
        assert_eq!(samples[5].value, 7.0);
        assert_eq!(parse(&samples[5].to_string()), vec![samples[5].clone()]);
    }

    #[test]
    fn matches_by_name_and_the_labels_given() {
        let m = || metric("keygate_requests_total");
        assert!(m().is_in(PAGE));
        assert!(m().value(6).is_in(PAGE));
        assert!(m().label("outcome", "allowed").value(5).is_in(PAGE));
        assert!(
            m().label("outcome", "allowed")
                .label("route", "geo")
                .value(2)
                .is_in(PAGE)
        );
        assert!(m().label("route", "").value(1).is_in(PAGE));
        assert!(!m().label("route", "nope").is_in(PAGE));
        assert!(!m().label("route", "nope").value(0).is_in(PAGE));
        assert!(m().label("route", "geo").at_least(2).is_in(PAGE));
        assert!(!m().label("route", "geo").at_least(2.5).is_in(PAGE));
        assert!(m().label("route", "geo").less_than(2.5).is_in(PAGE));
        assert!(!m().label("route", "geo").less_than(2).is_in(PAGE));
        assert!(!metric("keygate_request").is_in(PAGE), "names match whole");
        assert!(metric("keygate_ready").value(1).is_in(PAGE));
    }

    #[test]
    fn a_failure_lists_the_series_of_that_name() {
        let m = metric("keygate_requests_total")
            .label("outcome", "allowed")
            .value(4);
        let message = m.failure(PAGE);
        assert!(
            message.starts_with(
                "expected keygate_requests_total{outcome=\"allowed\"} == 4; \
                 the matching series add up to 5; series named keygate_requests_total:\n"
            ),
            "{message}"
        );
        assert!(message.contains("  keygate_requests_total{outcome=\"not_found\",route=\"\"} 1"));
        assert!(!message.contains("keygate_ready"));
        let missing = metric("keygate_nothing").failure(PAGE);
        assert!(missing.contains("no series matches; no series named keygate_nothing at all"));
        let panic = std::panic::catch_unwind(|| m.assert_in(PAGE)).unwrap_err();
        assert_eq!(panic.downcast_ref::<String>(), Some(&message));
    }
}
