//! Loading a 1,000,000-key snapshot from JSON bytes, and applying deltas to it.
//!
//! First, outside criterion (so that nothing else has touched the heap yet), it builds the input,
//! parses it once and prints the time and the process's peak RSS (`VmHWM`), input included:
//! `1M-key load: X.XX s, peak RSS Y MB (input Z MB)` (MB = 10^6 bytes). Then criterion times the
//! load, a one-key delta (a re-issued secret), and a delta that changes one workspace's limits
//! (which re-links its thousand keys).
//!
//! Run: `cargo bench --bench snapshot`

mod support;

use criterion::Criterion;
use keygate::secret::KeyHash;
use keygate::snapshot::{self, Format, Snapshot};
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};
use support::peak_rss;

const KEYS: usize = 1_000_000;
const WORKSPACES: usize = 1_000;

/// About ten scope sets, as real deployments have: most keys share a handful of them.
const SCOPE_SETS: &[&str] = &[
    r#"["products:read"]"#,
    r#"["products:read","products:write"]"#,
    r#"["products:*"]"#,
    r#"["*:read"]"#,
    r#"["orders:read","orders:write","products:read"]"#,
    r#"["data:geo:read","data:seo:read"]"#,
    r#"["data:*"]"#,
    r#"["bookings:*","products:read"]"#,
    r#"["*"]"#,
    r#"["reports:read","reports:export"]"#,
];

/// Crockford base32, as in ULIDs.
const B32: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID-shaped 26-character id, distinct for every `n`.
fn ulid(out: &mut Vec<u8>, n: u64) {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n << 7);
    out.extend_from_slice(b"01J");
    for _ in 0..10 {
        out.push(B32[(x & 31) as usize]);
        x >>= 5;
    }
    let mut y = n;
    for _ in 0..13 {
        out.push(B32[(y & 31) as usize]);
        y >>= 5;
    }
}

fn key_id(out: &mut Vec<u8>, i: usize) {
    out.extend_from_slice(b"key_");
    ulid(out, i as u64);
}

fn workspace_id(w: usize) -> String {
    format!(
        "ws_{:012x}",
        (w as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 16
    )
}

fn secret(i: usize) -> String {
    format!("sk_live_BENCH{i:032}")
}

/// The snapshot as a control plane would serve it: compact JSON, workspaces first. Keys: 10%
/// legacy (no `scopes`), 5% `[]`, the rest one of [`SCOPE_SETS`]; 20% expire, 25% have a name,
/// 1% are revoked, 1 in 1,000 carries restrictions.
fn snapshot_json(keys: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys * 230 + WORKSPACES * 80);
    write!(out, r#"{{"version":7,"workspaces":["#).unwrap();
    for w in 0..WORKSPACES {
        if w > 0 {
            out.push(b',');
        }
        let kind = if w % 5 == 0 { "sandbox" } else { "live" };
        write!(out, r#"{{"id":"{}","type":"{kind}""#, workspace_id(w)).unwrap();
        if w % 10 == 3 {
            out.extend_from_slice(br#","limits":{"burst_per_second":100}"#);
        }
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"keys":["#);
    for i in 0..keys {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"id":""#);
        key_id(&mut out, i);
        let w = i % WORKSPACES;
        // Live workspaces only, so that every key authenticates with its `sk_live_` secret.
        let w = if w.is_multiple_of(5) { w + 1 } else { w };
        write!(
            out,
            r#"","hash":"{}","workspace":"{}""#,
            KeyHash::of(&secret(i)).to_hex(),
            workspace_id(w)
        )
        .unwrap();
        match i % 20 {
            0 | 1 => {}
            2 => out.extend_from_slice(br#","scopes":[]"#),
            n => write!(out, r#","scopes":{}"#, SCOPE_SETS[n % SCOPE_SETS.len()]).unwrap(),
        }
        if i % 5 == 1 {
            out.extend_from_slice(br#","expires_at":"2031-06-30T12:00:00Z""#);
        }
        if i % 4 == 2 {
            write!(out, r#","name":"integration {} production""#, i % 9973).unwrap();
        }
        if i % 100 == 7 {
            out.extend_from_slice(br#","status":"revoked""#);
        }
        if i % 1000 == 11 {
            out.extend_from_slice(br#","restrictions":{"ips":["203.0.113.0/24"]}"#);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// One load from a cold heap, measured as the issue states the target.
fn measure_once() {
    let input = snapshot_json(KEYS);
    let start = Instant::now();
    let snap = snapshot::parse(&input, Format::Json, "bench").unwrap();
    let took = start.elapsed();
    let peak = peak_rss();
    assert_eq!(snap.key_count(), KEYS, "{:?}", snap.skipped());
    assert!(snap.key(&KeyHash::of(&secret(KEYS / 2))).is_some());
    println!(
        "1M-key load: {:.2} s, peak RSS {:.0} MB (input {:.0} MB)",
        took.as_secs_f64(),
        mb(peak),
        mb(input.len() as u64)
    );
    let start = Instant::now();
    let next = snap.apply(&reissue(&snap, KEYS / 3)).unwrap();
    println!(
        "one-key delta on it: {:.3} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    assert!(next.key(&KeyHash::of(&secret(KEYS / 3))).is_none());
}

/// A delta giving key `i` a new secret, as a control plane serves it.
fn reissue(snap: &Snapshot, i: usize) -> snapshot::Delta {
    let mut id = vec![];
    key_id(&mut id, i);
    let w = i % WORKSPACES;
    let w = if w.is_multiple_of(5) { w + 1 } else { w };
    let doc = format!(
        r#"{{"from":{v},"version":{next},"keys":{{"upsert":[{{"id":"{id}","hash":"{hash}","workspace":"{ws}","scopes":["products:read"]}}]}}}}"#,
        v = snap.version(),
        next = snap.version() + 1,
        id = String::from_utf8(id).unwrap(),
        hash = KeyHash::of(&format!("reissued-{i}")).to_hex(),
        ws = workspace_id(w),
    );
    snapshot::parse_delta(doc.as_bytes(), "bench").unwrap()
}

/// A delta changing the limits of one workspace (and so re-linking its keys).
fn new_limits(snap: &Snapshot, w: usize) -> snapshot::Delta {
    let doc = format!(
        r#"{{"from":{v},"version":{next},"workspaces":{{"upsert":[{{"id":"{ws}","type":"live","limits":{{"burst_per_second":77}}}}]}}}}"#,
        v = snap.version(),
        next = snap.version() + 1,
        ws = workspace_id(w),
    );
    snapshot::parse_delta(doc.as_bytes(), "bench").unwrap()
}

fn main() {
    measure_once();

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let input = snapshot_json(KEYS);
    c.bench_function("snapshot/parse_json_1m_keys", |b| {
        // Dropping a million keys is not part of loading them.
        b.iter_with_large_drop(|| {
            snapshot::parse(black_box(&input), Format::Json, "bench").unwrap()
        })
    });
    let snap = snapshot::parse(&input, Format::Json, "bench").unwrap();
    drop(input);
    let one_key = reissue(&snap, KEYS / 2);
    c.bench_function("snapshot/apply_one_key_delta_1m_keys", |b| {
        b.iter_with_large_drop(|| snap.apply(black_box(&one_key)).unwrap())
    });
    let limits = new_limits(&snap, 7);
    let relinked = snap.apply(&limits).unwrap();
    assert_eq!(relinked.key_count(), KEYS);
    c.bench_function("snapshot/apply_workspace_limits_delta_1m_keys", |b| {
        b.iter_with_large_drop(|| snap.apply(black_box(&limits)).unwrap())
    });
    c.final_summary();
}
