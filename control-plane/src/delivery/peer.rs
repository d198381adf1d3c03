//! Who is on the other end of a snapshot stream, and how much of the control plane it may
//! hold: with mutual TLS a node's id must be a name its client certificate carries (so no
//! data plane can answer for another); without it, anyone who reaches the port is a data
//! plane, which is why the control plane warns loudly at start. Either way, each peer
//! address holds a bounded number of streams, and all of them together are bounded too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tonic::Status;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Caps on snapshot streams.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Streams one peer address may hold (a data plane holds one per control plane).
    pub per_peer: usize,
    /// Streams in all.
    pub total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_peer: 8,
            total: 4096,
        }
    }
}

/// Longest node id accepted (a DNS name's length).
const MAX_NODE_ID: usize = 253;
/// Longest NACK reason kept; the rest is cut (it ends up in statuses and logs).
pub const MAX_ERROR_DETAIL: usize = 1024;

/// The names a client certificate vouches for: its DNS subject alternative names, then its
/// subject common name. Empty when the certificate cannot be read.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = certificate
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.extend(
        certificate
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_owned),
    );
    names
}

/// Checks the node id a stream announces, against its certificate's names when it has one.
pub fn check_node_id(id: &str, certificate: Option<&[String]>) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(
            "the first request must carry node.id",
        ));
    }
    if id.len() > MAX_NODE_ID || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "node.id must be at most {MAX_NODE_ID} characters without control characters"
        )));
    }
    if let Some(names) = certificate
        && !names.iter().any(|name| covers(name, id))
    {
        return Err(Status::permission_denied(format!(
            "node id `{id}` is not a name of the client certificate ({})",
            names.join(", ")
        )));
    }
    Ok(())
}

/// Whether a certificate name covers a node id: equal, or `*.rest` with one non-empty label
/// in front of `rest` (as TLS wildcards cover host names), so one certificate can serve a
/// Deployment's pods (`pod-1.data.pavilion` under `*.data.pavilion`).
fn covers(name: &str, id: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(rest) => id
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && !label.contains('*') && tail == rest),
        None => name == id,
    }
}

/// Streams open, per peer address and in all.
pub struct Streams {
    limits: StreamLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted stream; gives its place back when dropped.
pub struct Slot {
    streams: Arc<Streams>,
    peer: Option<IpAddr>,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        // Counters only: a poisoned lock still holds consistent numbers.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a stream from `peer`, or `RESOURCE_EXHAUSTED` naming the cap reached.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Status> {
        let mut open = self.lock();
        if open.0 >= self.limits.total {
            return Err(Status::resource_exhausted(format!(
                "the control plane holds its maximum of {} snapshot streams",
                self.limits.total
            )));
        }
        if let Some(ip) = peer {
            let count = open.1.entry(ip).or_default();
            if *count >= self.limits.per_peer {
                return Err(Status::resource_exhausted(format!(
                    "{ip} already holds {} snapshot streams, the most one address may",
                    self.limits.per_peer
                )));
            }
            *count += 1;
        }
        open.0 += 1;
        Ok(Slot {
            streams: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        open.0 -= 1;
        if let Some(ip) = self.peer
            && let Some(count) = open.1.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&ip);
            }
        }
    }
}

/// At most [`MAX_ERROR_DETAIL`] bytes of a NACK reason, cut at a character boundary.
pub fn bounded_detail(detail: &str) -> &str {
    if detail.len() <= MAX_ERROR_DETAIL {
        return detail;
    }
    let mut end = MAX_ERROR_DETAIL;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    &detail[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_peer_and_in_all() {
        let streams = Streams::new(StreamLimits {
            per_peer: 2,
            total: 3,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = streams.admit(Some(a)).unwrap();
        let _second = streams.admit(Some(a)).unwrap();
        let refused = streams.admit(Some(a)).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("10.0.0.1"), "{refused:?}");
        let _third = streams.admit(Some(b)).unwrap();
        assert!(streams.admit(Some(b)).is_err(), "the total is reached");
        drop(first);
        assert!(streams.admit(Some(a)).is_ok(), "a place came back");
    }

    #[test]
    fn node_ids_must_be_a_name_of_the_certificate() {
        let names = vec!["dp-1.pavilion".to_owned(), "dp-1".to_owned()];
        assert!(check_node_id("dp-1", Some(&names)).is_ok());
        let refused = check_node_id("dp-2", Some(&names)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(check_node_id("anything", None).is_ok());
        let wildcard = vec!["*.data.pavilion".to_owned()];
        assert!(check_node_id("pod-7.data.pavilion", Some(&wildcard)).is_ok());
        for refused in [
            "data.pavilion",
            ".data.pavilion",
            "a.b.data.pavilion",
            "*.data.pavilion",
            "pod-7.data.pavilion.evil",
        ] {
            assert!(
                check_node_id(refused, Some(&wildcard)).is_err(),
                "{refused}"
            );
        }
        assert!(check_node_id("", None).is_err());
        assert!(check_node_id("a\nb", None).is_err());
        assert!(check_node_id(&"x".repeat(254), None).is_err());
    }

    #[test]
    fn nack_reasons_are_bounded() {
        assert_eq!(bounded_detail("short"), "short");
        let long = "é".repeat(1000);
        let cut = bounded_detail(&long);
        assert!(cut.len() <= MAX_ERROR_DETAIL && long.starts_with(cut));
    }
}
