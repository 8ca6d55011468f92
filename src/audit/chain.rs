//! The hash chain: canonical form of an event, its hash, and the verifier that walks a chain.
//!
//! Canonical form (version 1, see `docs/audit.md`): a JSON object with a fixed set of keys,
//! every key always present (`null` when absent), keys sorted by byte order at every depth
//! (including inside `params`), no insignificant whitespace, strings escaped as `serde_json`
//! does (only `"`, `\` and control characters; everything else raw UTF-8). The event hash is the
//! lowercase hex SHA-256 of the UTF-8 bytes of that text. The previous hash of the chain is one
//! of the hashed keys (`prev_hash`), so every hash commits to the whole chain before it.

use super::event::AuditEvent;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use time::OffsetDateTime;

/// `prev_hash` of the first event of a chain (and anchor of a chain never pruned).
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Version of the canonical form, part of the hashed text (`"v":1`).
pub const CANONICAL_VERSION: u64 = 1;

/// Microseconds since the Unix epoch: the precision events are stored and hashed with.
pub fn unix_micros(t: OffsetDateTime) -> i64 {
    let us = t.unix_timestamp_nanos() / 1000;
    i64::try_from(us).unwrap_or(i64::MAX)
}

/// Inverse of [`unix_micros`].
pub fn from_unix_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

fn opt_num<T: Into<serde_json::Number> + Copy>(v: Option<T>) -> Value {
    v.map_or(Value::Null, |n| Value::Number(n.into()))
}

/// The canonical text of an event (everything but its own `hash`).
pub fn canonical(ev: &AuditEvent) -> String {
    let e = &ev.event;
    let mut m: BTreeMap<&'static str, Value> = BTreeMap::new();
    m.insert("v", Value::from(CANONICAL_VERSION));
    m.insert("id", Value::String(ev.id.clone()));
    m.insert("chain", Value::String(ev.chain.clone()));
    m.insert("seq", Value::from(ev.seq));
    m.insert("time_us", Value::from(unix_micros(ev.time)));
    m.insert("prev_hash", Value::String(ev.prev_hash.clone()));
    m.insert(
        "kind",
        e.kind
            .map_or(Value::Null, |k| Value::String(k.as_str().to_owned())),
    );
    m.insert("request_id", Value::String(e.request_id.clone()));
    m.insert("actor_id", Value::String(e.actor.id.clone()));
    m.insert("actor_display", opt_str(&e.actor.display));
    m.insert("actor_auth_method", opt_str(&e.actor.auth_method));
    m.insert(
        "actor_roles",
        Value::Array(
            e.actor
                .roles
                .iter()
                .map(|r| Value::String(r.clone()))
                .collect(),
        ),
    );
    m.insert("client_addr", opt_str(&e.client_addr));
    m.insert("method", opt_str(&e.method));
    m.insert("route", opt_str(&e.route));
    m.insert("action", Value::String(e.action.clone()));
    m.insert("pool", opt_str(&e.target.pool));
    m.insert("host", opt_str(&e.target.host));
    m.insert("session_id", opt_num(e.target.session_id));
    m.insert("user", opt_str(&e.target.user));
    m.insert("params", e.params.clone());
    m.insert("outcome", Value::String(e.outcome.clone()));
    m.insert("error_code", opt_str(&e.error_code));
    m.insert("http_status", opt_num(e.http_status));
    m.insert("upstream_status", opt_num(e.upstream_status));
    m.insert("duration_ms", opt_num(e.duration_ms));
    let mut out = String::with_capacity(512);
    out.push('{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(&mut out, k);
        out.push(':');
        write_canonical(&mut out, v);
    }
    out.push('}');
    out
}

fn write_json_string(out: &mut String, s: &str) {
    // serde_json string escaping cannot fail for a &str.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Writes a JSON value with object keys sorted by byte order at every depth, whatever the
/// order of the map (so the form does not depend on serde_json's `preserve_order` feature).
fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_json_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, k);
                out.push(':');
                if let Some(x) = o.get(k) {
                    write_canonical(out, x);
                }
            }
            out.push('}');
        }
    }
}

/// Lowercase hex SHA-256 of the canonical form.
pub fn event_hash(ev: &AuditEvent) -> String {
    hex::encode(Sha256::digest(canonical(ev).as_bytes()))
}

/// What is wrong where a chain breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The stored hash is not the hash of the stored fields: the row was edited, forged, or
    /// moved to another position (seq swapped).
    HashMismatch,
    /// The event does not point at the hash of the event before it: a row before it was
    /// replaced or removed and the chain re-linked.
    PrevHashMismatch,
    /// Sequence numbers skip: rows were deleted.
    SeqGap,
    /// The chain's head row says more events exist than are stored: the newest rows were deleted.
    MissingTail,
    /// The last stored event is not the one the chain's head row names.
    HeadMismatch,
    /// Events exist past the chain's recorded head: rows were inserted.
    BeyondHead,
    /// Events exist at or before the chain's prune anchor: rows were inserted.
    BeforeAnchor,
    /// The chain's prune anchor is not confirmed by any checkpoint event.
    AnchorUnconfirmed,
    /// An indexed column disagrees with the hashed fields (e.g. `ticket` vs `params.ticket`).
    ColumnMismatch,
    /// Events belong to a chain that has no head row.
    UnknownChain,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::HashMismatch => "hash_mismatch",
            BreakKind::PrevHashMismatch => "prev_hash_mismatch",
            BreakKind::SeqGap => "seq_gap",
            BreakKind::MissingTail => "missing_tail",
            BreakKind::HeadMismatch => "head_mismatch",
            BreakKind::BeyondHead => "beyond_head",
            BreakKind::BeforeAnchor => "before_anchor",
            BreakKind::AnchorUnconfirmed => "anchor_unconfirmed",
            BreakKind::ColumnMismatch => "column_mismatch",
            BreakKind::UnknownChain => "unknown_chain",
        }
    }
}

/// The first place a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub chain: String,
    pub seq: i64,
    pub event_id: Option<String>,
    pub kind: BreakKind,
    pub detail: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain {} seq {} event {}: {}: {}",
            self.chain,
            self.seq,
            self.event_id.as_deref().unwrap_or("-"),
            self.kind.as_str(),
            self.detail
        )
    }
}

/// The verification result for one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainStatus {
    pub chain: String,
    /// Events checked (after the anchor).
    pub events: u64,
    /// Last pruned position (0 and [`GENESIS_HASH`] when never pruned).
    pub anchor_seq: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
}

/// The result of [`crate::audit::AuditLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when every chain verifies.
    pub ok: bool,
    pub events_checked: u64,
    pub chains: Vec<ChainStatus>,
    /// The first break found (chains are walked in name order).
    pub first_break: Option<ChainBreak>,
}

impl VerifyReport {
    pub fn from_chains(chains: Vec<ChainStatus>) -> Self {
        let first_break = chains.iter().find_map(|c| c.broken.clone());
        Self {
            ok: first_break.is_none(),
            events_checked: chains.iter().map(|c| c.events).sum(),
            chains,
            first_break,
        }
    }
}

/// One prune anchor: verification of a chain starts after `seq`, whose hash was `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Anchor {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
}

/// Reads the anchors a checkpoint event's `params` records.
pub fn checkpoint_anchors(params: &Value) -> Vec<Anchor> {
    params
        .get("anchors")
        .and_then(|a| serde_json::from_value::<Vec<Anchor>>(a.clone()).ok())
        .unwrap_or_default()
}

/// The chain head row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub chain: String,
    pub head_seq: i64,
    pub head_hash: String,
    pub anchor_seq: i64,
    pub anchor_hash: String,
}

/// Walks one chain's events in `seq` order and remembers the first break.
#[derive(Debug)]
pub struct Verifier {
    head: ChainHead,
    expected_seq: i64,
    expected_prev: String,
    last_id: Option<String>,
    events: u64,
    broken: Option<ChainBreak>,
}

impl Verifier {
    pub fn new(head: ChainHead) -> Self {
        Self {
            expected_seq: head.anchor_seq + 1,
            expected_prev: head.anchor_hash.clone(),
            head,
            last_id: None,
            events: 0,
            broken: None,
        }
    }

    /// Whether a break has been found (further events are ignored).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    fn brk(&mut self, seq: i64, id: Option<String>, kind: BreakKind, detail: String) {
        if self.broken.is_none() {
            self.broken = Some(ChainBreak {
                chain: self.head.chain.clone(),
                seq,
                event_id: id,
                kind,
                detail,
            });
        }
    }

    /// Feeds the next event (by `seq`) together with its stored `ticket` column.
    pub fn feed(&mut self, ev: &AuditEvent, ticket_column: Option<&str>) {
        if self.broken.is_some() {
            return;
        }
        self.events += 1;
        let id = Some(ev.id.clone());
        if ev.chain != self.head.chain {
            self.brk(
                ev.seq,
                id,
                BreakKind::UnknownChain,
                format!("event of chain {} in chain {}", ev.chain, self.head.chain),
            );
            return;
        }
        if ev.seq > self.head.head_seq {
            self.brk(
                ev.seq,
                id,
                BreakKind::BeyondHead,
                format!(
                    "event past the recorded chain head seq {} (inserted row)",
                    self.head.head_seq
                ),
            );
            return;
        }
        let computed = event_hash(ev);
        if computed != ev.hash {
            self.brk(
                ev.seq,
                id,
                BreakKind::HashMismatch,
                format!(
                    "stored hash {} but the fields hash to {} (row edited, forged or moved)",
                    ev.hash, computed
                ),
            );
            return;
        }
        if ev.seq != self.expected_seq {
            let detail = if ev.seq > self.expected_seq {
                format!(
                    "expected seq {}, found {}: {} event(s) missing (rows deleted)",
                    self.expected_seq,
                    ev.seq,
                    ev.seq - self.expected_seq
                )
            } else {
                format!(
                    "expected seq {}, found {} (rows reordered or duplicated)",
                    self.expected_seq, ev.seq
                )
            };
            self.brk(ev.seq, id, BreakKind::SeqGap, detail);
            return;
        }
        if ev.prev_hash != self.expected_prev {
            self.brk(
                ev.seq,
                id,
                BreakKind::PrevHashMismatch,
                format!(
                    "prev_hash {} but the previous event's hash is {} (a row before it was replaced)",
                    ev.prev_hash, self.expected_prev
                ),
            );
            return;
        }
        let ticket = ev.event.ticket();
        if ticket.as_deref() != ticket_column {
            self.brk(
                ev.seq,
                id,
                BreakKind::ColumnMismatch,
                format!(
                    "ticket column {:?} differs from params.ticket {:?}",
                    ticket_column, ticket
                ),
            );
            return;
        }
        self.expected_seq = ev.seq + 1;
        self.expected_prev = ev.hash.clone();
        self.last_id = Some(ev.id.clone());
    }

    /// Ends the walk. `confirmed` holds every anchor recorded by a checkpoint event.
    pub fn finish(mut self, confirmed: &HashSet<Anchor>) -> ChainStatus {
        if self.broken.is_none() {
            let last_seq = self.expected_seq - 1;
            if last_seq < self.head.head_seq {
                self.brk(
                    last_seq + 1,
                    None,
                    BreakKind::MissingTail,
                    format!(
                        "chain head says seq {} exists but the last stored event is seq {} (rows deleted)",
                        self.head.head_seq, last_seq
                    ),
                );
            } else if self.expected_prev != self.head.head_hash {
                self.brk(
                    last_seq,
                    self.last_id.clone(),
                    BreakKind::HeadMismatch,
                    format!(
                        "chain head hash {} but the last event hashes to {}",
                        self.head.head_hash, self.expected_prev
                    ),
                );
            }
        }
        if self.broken.is_none() && self.head.anchor_seq > 0 {
            let anchor = Anchor {
                chain: self.head.chain.clone(),
                seq: self.head.anchor_seq,
                hash: self.head.anchor_hash.clone(),
            };
            if !confirmed.contains(&anchor) {
                self.brk(
                    self.head.anchor_seq,
                    None,
                    BreakKind::AnchorUnconfirmed,
                    format!(
                        "prune anchor seq {} hash {} is not recorded by any checkpoint event",
                        anchor.seq, anchor.hash
                    ),
                );
            }
        }
        ChainStatus {
            chain: self.head.chain.clone(),
            events: self.events,
            anchor_seq: self.head.anchor_seq,
            head_seq: self.head.head_seq,
            head_hash: self.head.head_hash.clone(),
            broken: self.broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Actor, EventKind, NewEvent, Target};

    fn chain_of(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let mut ev = AuditEvent {
                id: uuid::Uuid::now_v7().to_string(),
                chain: "c".into(),
                seq,
                time: from_unix_micros(1_700_000_000_000_000 + seq),
                event: NewEvent {
                    kind: Some(EventKind::Request),
                    request_id: format!("r{seq}"),
                    actor: Actor {
                        id: "apikey:a".into(),
                        roles: vec!["operator".into()],
                        ..Default::default()
                    },
                    action: "logoff".into(),
                    target: Target {
                        pool: Some("p".into()),
                        session_id: Some(3),
                        ..Default::default()
                    },
                    params: serde_json::json!({"z": 1, "a": {"y": [1, "x"], "b": null}}),
                    outcome: "done".into(),
                    ..Default::default()
                },
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            ev.hash = event_hash(&ev);
            prev = ev.hash.clone();
            out.push(ev);
        }
        out
    }

    fn head(evs: &[AuditEvent]) -> ChainHead {
        let last = evs.last().map(|e| (e.seq, e.hash.clone()));
        let (s, h) = last.unwrap_or((0, GENESIS_HASH.into()));
        ChainHead {
            chain: "c".into(),
            head_seq: s,
            head_hash: h,
            anchor_seq: 0,
            anchor_hash: GENESIS_HASH.into(),
        }
    }

    fn run(h: ChainHead, evs: &[AuditEvent]) -> ChainStatus {
        let mut v = Verifier::new(h);
        for e in evs {
            v.feed(e, None);
        }
        v.finish(&HashSet::new())
    }

    #[test]
    fn canonical_is_sorted_and_stable() {
        let evs = chain_of(1);
        let c = canonical(&evs[0]);
        assert!(c.starts_with("{\"action\":\"logoff\",\"actor_auth_method\":null,"));
        assert!(c.contains("\"params\":{\"a\":{\"b\":null,\"y\":[1,\"x\"]},\"z\":1}"));
        assert!(c.contains("\"v\":1"));
        assert_eq!(canonical(&evs[0]), c);
        assert_eq!(evs[0].hash.len(), 64);
    }

    #[test]
    fn intact_chain_verifies() {
        let evs = chain_of(5);
        let st = run(head(&evs), &evs);
        assert_eq!(st.broken, None);
        assert_eq!(st.events, 5);
    }

    #[test]
    fn edited_event_detected() {
        let mut evs = chain_of(5);
        let h = head(&evs);
        evs[2].event.outcome = "failed".into();
        let b = run(h, &evs).broken.unwrap();
        assert_eq!((b.seq, b.kind), (3, BreakKind::HashMismatch));
    }

    #[test]
    fn deleted_event_detected() {
        let mut evs = chain_of(5);
        let h = head(&evs);
        evs.remove(1);
        let b = run(h, &evs).broken.unwrap();
        assert_eq!((b.seq, b.kind), (3, BreakKind::SeqGap));
        let mut evs = chain_of(5);
        let h = head(&evs);
        evs.pop();
        let b = run(h, &evs).broken.unwrap();
        assert_eq!(b.kind, BreakKind::MissingTail);
    }

    #[test]
    fn relinked_chain_detected() {
        // Delete seq 2 and renumber seq 3.. down by one, recomputing their own hashes but not
        // able to forge the links: prev_hash of the new seq 2 points to the deleted event.
        let mut evs = chain_of(4);
        let h = head(&evs);
        evs.remove(1);
        for e in evs.iter_mut().skip(1) {
            e.seq -= 1;
            e.hash = event_hash(e);
        }
        let b = run(h, &evs).broken.unwrap();
        assert_eq!((b.seq, b.kind), (2, BreakKind::PrevHashMismatch));
    }

    #[test]
    fn anchor_must_be_confirmed() {
        let evs = chain_of(4);
        let mut h = head(&evs);
        h.anchor_seq = 2;
        h.anchor_hash = evs[1].hash.clone();
        let mut v = Verifier::new(h.clone());
        v.feed(&evs[2], None);
        v.feed(&evs[3], None);
        let st = v.finish(&HashSet::new());
        assert_eq!(st.broken.unwrap().kind, BreakKind::AnchorUnconfirmed);
        let mut v = Verifier::new(h);
        v.feed(&evs[2], None);
        v.feed(&evs[3], None);
        let confirmed: HashSet<Anchor> = [Anchor {
            chain: "c".into(),
            seq: 2,
            hash: evs[1].hash.clone(),
        }]
        .into();
        assert_eq!(v.finish(&confirmed).broken, None);
    }

    #[test]
    fn micros_roundtrip() {
        let t = from_unix_micros(1_763_780_000_123_456);
        assert_eq!(unix_micros(t), 1_763_780_000_123_456);
    }
}
