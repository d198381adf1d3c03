//! Snapshots on the wire as parts — version, each route's bytes, and the rest — so that one
//! snapshot can travel as a change to another ([`SnapshotDelta`]) and be put back together,
//! byte for byte, on the other side. The version is the content hash of the encoding, so the
//! data plane proves its reassembly right before it builds anything.
//!
//! Both halves rely on prost's encoding being canonical: fields in declaration order, so an
//! encoded [`Snapshot`](crate::Snapshot) is its version (field 1), then its routes (field 2,
//! one after the other), then the rest (fields 3 to 5: the *tail*).

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint, skip_field,
};
use sha2::{Digest, Sha256};

use crate::v1::{RoutePiece, SnapshotDelta};

/// Field numbers of `Snapshot`.
const VERSION: u32 = 1;
const ROUTES: u32 = 2;

/// Why a delta cannot be applied or an encoded snapshot cannot be split.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta changes version {base}, but {running} is running")]
    WrongBase { base: String, running: String },
    #[error("route piece {piece} keeps routes {from}..{end} of a base with {routes}")]
    OutOfRange {
        piece: usize,
        from: u64,
        end: u64,
        routes: usize,
    },
    #[error("the delta keeps {kept} routes of a base with {routes}")]
    KeepsTooMany { kept: u64, routes: usize },
    #[error("the snapshot the delta makes hashes to {actual}, not {expected}")]
    Mismatch { expected: String, actual: String },
    #[error("not a canonical encoded snapshot: {0}")]
    NotCanonical(&'static str),
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
}

/// An encoded snapshot, split: every part is a slice of the encoding it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parts {
    pub version: String,
    /// Each route's encoding (`Route` message bytes), in the snapshot's order.
    pub routes: Vec<Bytes>,
    /// Fields 3 to 5 as encoded.
    pub tail: Bytes,
}

impl Parts {
    /// Splits `encoded` without decoding any route. Refuses an encoding whose fields are
    /// out of declaration order (prost never writes one).
    pub fn split(encoded: &Bytes) -> Result<Self, DeltaError> {
        let mut rest = encoded.clone();
        let mut parts = Parts::default();
        let mut last_field = 0;
        while rest.has_remaining() {
            let before = rest.clone();
            let (field, wire_type) = decode_key(&mut rest)?;
            if field < last_field {
                return Err(DeltaError::NotCanonical("fields out of order"));
            }
            last_field = field;
            match field {
                VERSION | ROUTES => {
                    if wire_type != WireType::LengthDelimited {
                        return Err(DeltaError::NotCanonical("wrong wire type"));
                    }
                    let length = decode_varint(&mut rest)?;
                    let length = usize::try_from(length)
                        .ok()
                        .filter(|&length| length <= rest.remaining())
                        .ok_or(DeltaError::NotCanonical("a field runs past the end"))?;
                    let value = rest.split_to(length);
                    if field == VERSION {
                        parts.version = String::from_utf8(value.to_vec())
                            .map_err(|_| DeltaError::NotCanonical("the version is not UTF-8"))?;
                    } else {
                        parts.routes.push(value);
                    }
                }
                _ => {
                    // The rest is the tail; it must not hold a version or a route either.
                    skip_field(wire_type, field, &mut rest, DecodeContext::default())?;
                    while rest.has_remaining() {
                        let (next, wire_type) = decode_key(&mut rest)?;
                        if next < field || next == VERSION || next == ROUTES {
                            return Err(DeltaError::NotCanonical("fields out of order"));
                        }
                        skip_field(wire_type, next, &mut rest, DecodeContext::default())?;
                    }
                    parts.tail = before;
                    break;
                }
            }
        }
        Ok(parts)
    }

    /// The encoding with `version` computed, as the control plane publishes it. Returns
    /// the version and the encoded snapshot.
    pub fn seal(routes: &[impl AsRef<[u8]>], tail: &[u8]) -> (String, Bytes) {
        let mut body = Vec::with_capacity(body_len(routes, tail));
        write_body(routes, tail, &mut body);
        seal_body(&body)
    }

    /// The encoded snapshot, under the version it holds (no hashing: it was checked when
    /// the parts were made).
    pub fn encode(&self) -> Bytes {
        let mut encoded =
            Vec::with_capacity(2 + self.version.len() + body_len(&self.routes, &self.tail));
        prost::encoding::string::encode(VERSION, &self.version, &mut encoded);
        write_body(&self.routes, &self.tail, &mut encoded);
        encoded.into()
    }
}

/// Bytes of the routes' fields and the tail, encoded.
fn body_len(routes: &[impl AsRef<[u8]>], tail: &[u8]) -> usize {
    let routes_len: usize = routes
        .iter()
        .map(|route| {
            let len = route.as_ref().len();
            1 + prost::length_delimiter_len(len) + len
        })
        .sum();
    routes_len + tail.len()
}

/// Writes the routes' fields (2), then the tail (fields 3 to 5), as prost would.
fn write_body(routes: &[impl AsRef<[u8]>], tail: &[u8], out: &mut Vec<u8>) {
    for route in routes {
        let route = route.as_ref();
        encode_key(ROUTES, WireType::LengthDelimited, out);
        encode_varint(route.len() as u64, out);
        out.extend_from_slice(route);
    }
    out.extend_from_slice(tail);
}

/// The version of a snapshot from its parts, hashed as its encoding would be without
/// putting the encoding together.
fn version_of(routes: &[Bytes], tail: &[u8]) -> String {
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(16);
    for route in routes {
        head.clear();
        encode_key(ROUTES, WireType::LengthDelimited, &mut head);
        encode_varint(route.len() as u64, &mut head);
        hasher.update(&head);
        hasher.update(route);
    }
    hasher.update(tail);
    hex_version(&hasher.finalize())
}

fn hex_version(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Versions `body` (a snapshot encoded with an empty version): the first 8 bytes of its
/// SHA-256 in hex, and the encoding with that version in front — prost writes `version`
/// first and leaves an empty one out, so that is exactly the snapshot's encoding.
pub fn seal_body(body: &[u8]) -> (String, Bytes) {
    let version = hex_version(&Sha256::digest(body));
    let mut encoded = Vec::with_capacity(body.len() + 2 + version.len());
    prost::encoding::string::encode(VERSION, &version, &mut encoded);
    encoded.extend_from_slice(body);
    (version, encoded.into())
}

/// `next` as a change to `base`. Routes are found in `base` by their bytes; consecutive
/// ones become one piece, so an unchanged list of any length is a single piece.
pub fn diff(base: &Parts, next: &Parts) -> SnapshotDelta {
    // Built on the first route not found right after the previous one kept.
    let mut index: Option<HashMap<&[u8], u32>> = None;
    let mut pieces: Vec<RoutePiece> = Vec::new();
    let mut following: Option<u32> = Some(0);
    for route in &next.routes {
        let at = following
            .filter(|&i| base.routes.get(i as usize) == Some(route))
            .or_else(|| {
                index
                    .get_or_insert_with(|| {
                        let mut index = HashMap::with_capacity(base.routes.len());
                        for (i, route) in base.routes.iter().enumerate().rev() {
                            index.insert(&route[..], i as u32);
                        }
                        index
                    })
                    .get(&route[..])
                    .copied()
            });
        match (at, pieces.last_mut()) {
            (Some(at), Some(last))
                if last.keep_count > 0 && last.keep_from + last.keep_count == at =>
            {
                last.keep_count += 1;
            }
            (Some(at), _) => pieces.push(RoutePiece {
                keep_from: at,
                keep_count: 1,
                route: Bytes::new(),
            }),
            (None, _) => pieces.push(RoutePiece {
                keep_from: 0,
                keep_count: 0,
                route: route.clone(),
            }),
        }
        following = at.map(|at| at + 1);
    }
    SnapshotDelta {
        version: next.version.clone(),
        base: base.version.clone(),
        routes: pieces,
        tail: (next.tail != base.tail).then(|| next.tail.clone()),
    }
}

/// The snapshot `delta` makes of the base whose routes are `routes` and whose tail is
/// `tail`, checked against `delta.version`: its parts, slices of the base's and the delta's.
pub fn apply_parts(
    routes: &[Bytes],
    tail: &Bytes,
    delta: &SnapshotDelta,
) -> Result<Parts, DeltaError> {
    // A control plane keeps each route of the base at most once: more is refused before
    // it is put together (a bogus delta could otherwise name the base millions of times).
    let kept: u64 = delta.routes.iter().map(|p| u64::from(p.keep_count)).sum();
    if kept > routes.len() as u64 {
        return Err(DeltaError::KeepsTooMany {
            kept,
            routes: routes.len(),
        });
    }
    let mut next: Vec<Bytes> = Vec::with_capacity(routes.len() + delta.routes.len());
    for (piece_index, piece) in delta.routes.iter().enumerate() {
        if piece.keep_count == 0 {
            next.push(piece.route.clone());
            continue;
        }
        let from = u64::from(piece.keep_from);
        let end = from + u64::from(piece.keep_count);
        let kept = routes
            .get(from as usize..end as usize)
            .ok_or(DeltaError::OutOfRange {
                piece: piece_index,
                from,
                end,
                routes: routes.len(),
            })?;
        next.extend_from_slice(kept);
    }
    let tail = delta.tail.clone().unwrap_or_else(|| tail.clone());
    let version = version_of(&next, &tail);
    if version != delta.version {
        return Err(DeltaError::Mismatch {
            expected: delta.version.clone(),
            actual: version,
        });
    }
    Ok(Parts {
        version,
        routes: next,
        tail,
    })
}

/// [`apply_parts`], encoded.
pub fn apply(routes: &[Bytes], tail: &Bytes, delta: &SnapshotDelta) -> Result<Bytes, DeltaError> {
    Ok(apply_parts(routes, tail, delta)?.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKey, Route, Snapshot};
    use prost::Message;

    fn route(name: &str, host: &str) -> Route {
        Route {
            namespace: "ns".into(),
            name: name.into(),
            hosts: vec![host.into()],
            ..Default::default()
        }
    }

    fn sealed(routes: Vec<Route>, keys: Vec<ApiKey>) -> (Bytes, Parts) {
        let snapshot = Snapshot {
            routes,
            api_keys: keys,
            ..Default::default()
        };
        let (version, encoded) = seal_body(&snapshot.encode_to_vec());
        let parts = Parts::split(&encoded).unwrap();
        assert_eq!(parts.version, version);
        (encoded, parts)
    }

    #[test]
    fn split_and_seal_give_back_the_same_bytes() {
        let key = ApiKey {
            namespace: "ns".into(),
            id: "k".into(),
            ..Default::default()
        };
        let routes: Vec<Route> = (0..5).map(|i| route(&format!("r{i}"), "a")).collect();
        let (encoded, parts) = sealed(routes.clone(), vec![key.clone()]);
        assert_eq!(parts.routes.len(), 5);
        assert_eq!(Route::decode(parts.routes[3].clone()).unwrap(), routes[3]);
        assert!(!parts.tail.is_empty());
        let (version, again) = Parts::seal(&parts.routes, &parts.tail);
        assert_eq!((version, again), (parts.version.clone(), encoded));
        let decoded = Snapshot::decode(Parts::seal(&parts.routes, &parts.tail).1).unwrap();
        assert_eq!(decoded.api_keys, vec![key]);
        // No routes, no tail: just the version.
        let (empty, parts) = sealed(vec![], vec![]);
        assert_eq!((parts.routes.len(), parts.tail.len()), (0, 0));
        assert_eq!(Parts::seal(&[] as &[Bytes], &[]).1, empty);
    }

    #[test]
    fn out_of_order_fields_are_refused() {
        let snapshot = Snapshot {
            routes: vec![route("a", "a")],
            ..Default::default()
        };
        let mut encoded = Vec::new();
        prost::encoding::message::encode(2, &snapshot.routes[0], &mut encoded);
        prost::encoding::string::encode(1, &"v".to_owned(), &mut encoded);
        assert!(matches!(
            Parts::split(&encoded.into()),
            Err(DeltaError::NotCanonical(_))
        ));
        assert!(Parts::split(&Bytes::from_static(&[0x12, 0x05, 0x00])).is_err());
        // A route after the rest began.
        let mut late = Snapshot {
            api_keys: vec![ApiKey::default()],
            ..Default::default()
        }
        .encode_to_vec();
        prost::encoding::message::encode(2, &route("a", "a"), &mut late);
        assert!(matches!(
            Parts::split(&late.into()),
            Err(DeltaError::NotCanonical(_))
        ));
    }

    /// Random edits (insert, remove, change, move, key change) of random route lists:
    /// applying the diff to the base gives the new snapshot's exact bytes.
    #[test]
    fn a_delta_applied_to_its_base_makes_the_snapshot() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..300 {
            let count = rng.usize(0..40);
            let mut routes: Vec<Route> = (0..count)
                .map(|i| route(&format!("r{i}"), &format!("h{}", rng.u8(..4))))
                .collect();
            let keys = |n: u8| {
                (0..n)
                    .map(|i| ApiKey {
                        namespace: "ns".into(),
                        id: format!("k{i}"),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
            };
            let base_keys = rng.u8(0..3);
            let (_, base) = sealed(routes.clone(), keys(base_keys));
            for _ in 0..rng.usize(0..6) {
                match rng.u8(..4) {
                    0 => {
                        let at = rng.usize(..=routes.len());
                        routes.insert(at, route(&format!("new{round}-{at}"), "n"));
                    }
                    1 if !routes.is_empty() => {
                        routes.remove(rng.usize(..routes.len()));
                    }
                    2 if !routes.is_empty() => {
                        let at = rng.usize(..routes.len());
                        routes[at].hosts.push("changed".into());
                    }
                    _ if routes.len() > 1 => {
                        let moved = routes.remove(rng.usize(..routes.len()));
                        routes.insert(rng.usize(..=routes.len()), moved);
                    }
                    _ => {}
                }
            }
            let next_keys = if rng.bool() { base_keys } else { rng.u8(0..3) };
            let (encoded, next) = sealed(routes, keys(next_keys));
            let delta = diff(&base, &next);
            assert_eq!(delta.tail.is_some(), base.tail != next.tail);
            let made = apply(&base.routes, &base.tail, &delta).unwrap();
            assert_eq!(made, encoded, "round {round}");
            // Through the wire too.
            let delta = SnapshotDelta::decode(delta.encode_to_vec().as_slice()).unwrap();
            assert_eq!(apply(&base.routes, &base.tail, &delta).unwrap(), encoded);
        }
    }

    #[test]
    fn one_changed_route_of_many_travels_alone() {
        let routes: Vec<Route> = (0..1000).map(|i| route(&format!("r{i}"), "h")).collect();
        let (_, base) = sealed(routes.clone(), vec![]);
        let mut changed = routes;
        changed[500].hosts.push("x".into());
        let (_, next) = sealed(changed, vec![]);
        let delta = diff(&base, &next);
        let sent: Vec<_> = delta.routes.iter().filter(|p| p.keep_count == 0).collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            delta.routes.len(),
            3,
            "kept, sent, kept: {:?}",
            delta.routes
        );
        assert!(delta.tail.is_none());
        assert!(delta.encoded_len() < 100, "{}", delta.encoded_len());
    }

    #[test]
    fn a_delta_on_the_wrong_base_is_caught() {
        let (_, a) = sealed(
            (0..3).map(|i| route(&format!("a{i}"), "h")).collect(),
            vec![],
        );
        let (_, b) = sealed(
            (0..3).map(|i| route(&format!("b{i}"), "h")).collect(),
            vec![],
        );
        let (_, c) = sealed(
            (0..4).map(|i| route(&format!("a{i}"), "h")).collect(),
            vec![],
        );
        let delta = diff(&a, &c);
        assert!(matches!(
            apply(&b.routes, &b.tail, &delta),
            Err(DeltaError::Mismatch { .. })
        ));
        assert!(matches!(
            apply(&b.routes[..1], &b.tail, &delta),
            Err(DeltaError::KeepsTooMany { kept: 3, routes: 1 })
        ));
        let past_the_end = SnapshotDelta {
            routes: vec![RoutePiece {
                keep_from: 1,
                keep_count: 1,
                route: Bytes::new(),
            }],
            ..delta.clone()
        };
        assert!(matches!(
            apply(&b.routes[..1], &b.tail, &past_the_end),
            Err(DeltaError::OutOfRange { .. })
        ));
        let greedy = SnapshotDelta {
            routes: vec![
                RoutePiece {
                    keep_from: 0,
                    keep_count: 3,
                    route: Bytes::new(),
                };
                1000
            ],
            ..delta
        };
        assert!(matches!(
            apply(&a.routes, &a.tail, &greedy),
            Err(DeltaError::KeepsTooMany { kept: 3000, .. })
        ));
    }
}
