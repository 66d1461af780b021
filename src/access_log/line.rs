//! One access-log line, serialised straight into a byte buffer: the JSON object `tracing`'s
//! JSON layer used to print, field for field and in the same order, without an event, a visitor
//! or an allocation.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one request's line says. `None` fields are left out of the line, as they always were.
pub struct Line<'a> {
    /// `INFO`, `DEBUG`, …: `access_log.level`.
    pub level: &'static str,
    pub method: &'a str,
    /// Already cut and without its query string.
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub workspace_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    /// How the request authenticated (`api_key`, `oauth`, `client_token`), beside `key_id`:
    /// a client token's `key_id` is its minting key's, so this tells the two apart.
    pub auth_type: Option<&'static str>,
    pub client: Option<SocketAddr>,
    pub client_ip: Option<IpAddr>,
    pub duration_ms: f64,
    pub upstream_status: Option<u16>,
}

/// The `target` field every line ends with, as under `tracing`: it is how
/// `journalctl … | grep keygate::access` finds the lines among the application log's.
pub const TARGET: &str = "keygate::access";

/// Room for a line's fixed part and typical fields, reserved once so that the appends that
/// follow never grow the buffer one by one.
const LINE_CAPACITY: usize = 512;

/// `,"name":"value"` when `value` is there. A macro so that each name's text is one constant.
macro_rules! text {
    ($out:expr, $name:literal, $value:expr) => {
        if let Some(value) = $value {
            $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes());
            json_string(value, $out);
        }
    };
}

impl Line<'_> {
    /// Appends the line, newline included, to `out`; `now` is the wall-clock time it is stamped
    /// with.
    pub fn write(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.reserve(LINE_CAPACITY + self.path.len());
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(now, out);
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(self.level.as_bytes());
        out.extend_from_slice(b"\",\"method\":");
        json_string(self.method, out);
        out.extend_from_slice(b",\"path\":");
        json_string(self.path, out);
        text!(out, "route", self.route);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"outcome\":");
        json_string(self.outcome, out);
        text!(out, "reason", self.reason);
        text!(out, "workspace_id", self.workspace_id);
        text!(out, "key_id", self.key_id);
        text!(out, "auth_type", self.auth_type);
        if let Some(client) = self.client {
            out.extend_from_slice(b",\"client\":\"");
            socket_addr(client, out);
            out.push(b'"');
        }
        if let Some(ip) = self.client_ip {
            out.extend_from_slice(b",\"client_ip\":\"");
            ip_addr(ip, out);
            out.push(b'"');
        }
        out.extend_from_slice(b",\"duration_ms\":");
        if self.duration_ms.is_finite() {
            out.extend_from_slice(
                zmij::Buffer::new()
                    .format_finite(self.duration_ms)
                    .as_bytes(),
            );
        } else {
            out.extend_from_slice(b"null");
        }
        if let Some(status) = self.upstream_status {
            out.extend_from_slice(b",\"upstream_status\":");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        }
        // `TARGET`, spelled out: `concat!` takes literals only (a test holds the two together).
        out.extend_from_slice(b",\"target\":\"keygate::access\"}\n");
    }
}

/// `s` as a JSON string, escaped exactly as `serde_json` escapes (the path is the client's
/// input: quotes, backslashes and control characters must not break the line).
fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every string needs no escape: find that out in one branch-free (vectorised) pass.
    let needs_escape = bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut clean_from = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = at + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

fn socket_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            ipv4(v4.ip().octets(), out);
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        // Rare on a sidecar's loopback; the standard form (`[ip]:port`, with any scope id).
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip` as text; an IPv4 address without `fmt` (also for the forwarded request's addresses).
pub(crate) fn ip_addr(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => ipv4(v4.octets(), out),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn ipv4(octets: [u8; 4], out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
}

thread_local! {
    /// The last second this thread stamped and its `YYYY-MM-DDTHH:MM:SS` text: at most one
    /// calendar computation per thread per second.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `now` as RFC 3339 UTC with microseconds (`2026-11-23T13:57:30.214378Z`), `tracing`'s format.
fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = calendar(secs);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` for `secs` after the Unix epoch: humantime's RFC 3339 text without its
/// `Z`. Written into a fixed buffer (no allocation); it runs once a second per request thread.
fn calendar(secs: u64) -> [u8; 19] {
    let mut text = *b"0000-00-00T00:00:00Z";
    let at = UNIX_EPOCH + Duration::from_secs(secs);
    let _ = write!(&mut text[..], "{}", humantime::format_rfc3339_seconds(at));
    let mut out = [0; 19];
    out.copy_from_slice(&text[..19]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str) -> Line<'a> {
        Line {
            level: "INFO",
            method: "GET",
            path,
            route: Some("products-read"),
            status: 200,
            outcome: "allowed",
            reason: None,
            workspace_id: Some("ws_demo"),
            key_id: Some("key_demo_reader"),
            auth_type: Some("api_key"),
            client: Some("127.0.0.1:44648".parse().unwrap()),
            client_ip: None,
            duration_ms: 1.69,
            upstream_status: Some(200),
        }
    }

    fn written(line: &Line<'_>, unix_micros: u64) -> String {
        let mut out = Vec::new();
        line.write(UNIX_EPOCH + Duration::from_micros(unix_micros), &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Byte for byte the line `tracing`'s JSON layer printed (README, "Access log").
    #[test]
    fn the_line_is_the_documented_one() {
        assert_eq!(
            written(&line("/v1/products"), 1_795_442_250_214_378),
            concat!(
                r#"{"timestamp":"2026-11-23T13:57:30.214378Z","level":"INFO","method":"GET","path":"/v1/products","#,
                r#""route":"products-read","status":200,"outcome":"allowed","workspace_id":"ws_demo","key_id":"key_demo_reader","auth_type":"api_key","#,
                r#""client":"127.0.0.1:44648","duration_ms":1.69,"upstream_status":200,"target":"keygate::access"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn absent_fields_are_left_out_and_v6_addresses_are_standard() {
        let refused = Line {
            route: None,
            status: 401,
            outcome: "unauthorized",
            reason: Some("revoked"),
            key_id: None,
            auth_type: None,
            upstream_status: None,
            client: Some("[2001:db8::7]:443".parse().unwrap()),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            duration_ms: 0.0,
            ..line("/x")
        };
        let text = written(&refused, 0);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let fields: Vec<&str> = json.as_object().unwrap().keys().map(|k| &**k).collect();
        assert_eq!(fields.len(), 12, "{text}");
        for absent in ["route", "key_id", "auth_type", "upstream_status"] {
            assert!(json.get(absent).is_none(), "{text}");
        }
        assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(json["reason"], "revoked");
        assert_eq!(json["client"], "[2001:db8::7]:443");
        assert_eq!(json["client_ip"], "2001:db8::1");
        assert_eq!(json["duration_ms"], 0.0);
        let v4 = Line {
            client_ip: Some("10.0.0.255".parse().unwrap()),
            ..line("/x")
        };
        assert!(written(&v4, 0).contains(r#""client_ip":"10.0.0.255""#));
    }

    /// What a client puts in its path cannot break the line or forge a field: every string is
    /// escaped as serde_json escapes it, and parses back to itself.
    #[test]
    fn client_text_is_escaped_as_serde_json_escapes_it() {
        let hostile = "/a\"b\\c\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é😀\",\"status\":1";
        let text = written(&line(hostile), 0);
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["path"], hostile);
        assert_eq!(json["status"], 200);
        let escaped = serde_json::to_string(hostile).unwrap();
        assert!(text.contains(&format!(r#""path":{escaped},"#)), "{text}");
    }

    #[test]
    fn durations_are_written_as_serde_json_writes_them() {
        for ms in [0.001_234, 1.0, 12.5, 1_234.567_891, 1e-7, 3e21] {
            let text = written(
                &Line {
                    duration_ms: ms,
                    ..line("/")
                },
                0,
            );
            let want = format!(r#""duration_ms":{},"#, serde_json::to_string(&ms).unwrap());
            assert!(text.contains(&want), "{ms}: {text}");
        }
        let text = written(
            &Line {
                duration_ms: f64::NAN,
                ..line("/")
            },
            0,
        );
        assert!(text.contains(r#""duration_ms":null,"#), "{text}");
    }

    #[test]
    fn the_target_is_the_one_grep_looks_for() {
        assert!(written(&line("/"), 0).ends_with(&format!(",\"target\":\"{TARGET}\"}}\n")));
    }

    #[test]
    fn timestamps_follow_the_calendar() {
        let stamp = |secs: u64, micros: u64| {
            let mut out = Vec::new();
            timestamp(
                UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros),
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(stamp(1_700_000_000, 7), "2023-11-14T22:13:20.000007Z");
        assert_eq!(stamp(1_709_164_799, 999_999), "2024-02-28T23:59:59.999999Z");
        assert_eq!(stamp(1_709_164_800, 0), "2024-02-29T00:00:00.000000Z");
        assert_eq!(stamp(951_868_800, 0), "2000-03-01T00:00:00.000000Z");
        assert_eq!(stamp(4_102_444_799, 0), "2099-12-31T23:59:59.000000Z");
        // The per-second cache: a second stamp in the same second, then the next second.
        assert_eq!(stamp(1_700_000_000, 8), "2023-11-14T22:13:20.000008Z");
        assert_eq!(stamp(1_700_000_001, 0), "2023-11-14T22:13:21.000000Z");
    }
}
