//! The `wireseal.dev/` annotation codec and the validation of every value a
//! Node carries into wireseal.
//!
//! Every error names the node, the field (annotation or Node field) and the
//! offending value (shortened, so a megabyte of garbage does not end up in a log
//! line or an Event), and says what is wrong with it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::key::{KeyError, PublicKey};

/// Prefix of every annotation wireseal reads or writes.
pub const PREFIX: &str = "wireseal.dev/";
/// The node's WireGuard public key, standard base64 as `wg pubkey` prints it.
pub const PUBLIC_KEY: &str = "wireseal.dev/public-key";
/// Where peers send this node's encrypted packets: `ip:port` or `[ipv6]:port`.
pub const ENDPOINT: &str = "wireseal.dev/endpoint";
/// Comma-separated pod CIDRs, overriding `spec.podCIDRs` for CNIs that do not fill it.
pub const POD_CIDRS: &str = "wireseal.dev/pod-cidrs";
/// A readable JSON status written by the node's own agent.
pub const STATUS: &str = "wireseal.dev/status";

/// Longest accepted public-key value (a key is 44 characters).
pub const MAX_KEY_LEN: usize = 64;
/// Longest accepted endpoint (`[` + 45-character IPv6 + `]:65535` is 53).
pub const MAX_ENDPOINT_LEN: usize = 64;
/// Longest accepted pod-CIDR list.
pub const MAX_POD_CIDRS_LEN: usize = 1024;
/// Most pod CIDRs one node may claim.
pub const MAX_POD_CIDRS: usize = 16;
/// Longest accepted status value.
pub const MAX_STATUS_LEN: usize = 4096;
/// How much of a bad value an error quotes.
const QUOTE_LEN: usize = 64;

/// Which input of a Node a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// A `wireseal.dev/` annotation, by full name.
    Annotation(&'static str),
    /// `spec.podCIDRs` (or the older single `spec.podCIDR`).
    SpecPodCidrs,
    /// `status.addresses`.
    StatusAddresses,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Annotation(name) => write!(f, "annotation {name}"),
            Self::SpecPodCidrs => f.write_str("spec.podCIDRs"),
            Self::StatusAddresses => f.write_str("status.addresses"),
        }
    }
}

/// A bad value on a Node: which node, which field, the value, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("node {node:?}, {field} = {value:?}: {kind}")]
pub struct NodeInputError {
    /// Name of the Node the value is on.
    pub node: String,
    /// The annotation or Node field it came from.
    pub field: Field,
    /// The value, shortened to at most 64 characters plus a length note.
    pub value: String,
    /// What is wrong with it.
    pub kind: InputErrorKind,
}

impl NodeInputError {
    /// Builds an error, quoting a shortened form of `value`.
    #[must_use]
    pub fn new(node: &str, field: Field, value: &str, kind: InputErrorKind) -> Self {
        Self {
            node: node.to_owned(),
            field,
            value: quote(value),
            kind,
        }
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputErrorKind {
    /// Empty where a value is required.
    #[error("is empty")]
    Empty,
    /// Longer than wireseal accepts for this field.
    #[error("is {len} bytes long, at most {max} are accepted")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
        /// Accepted maximum.
        max: usize,
    },
    /// A character outside printable ASCII (control characters, look-alike unicode).
    #[error("contains {found:?} at byte {position}; only printable ASCII is accepted")]
    BadCharacter {
        /// The character.
        found: char,
        /// Its byte offset.
        position: usize,
    },
    /// The public key is unusable.
    #[error("is not a usable WireGuard public key: it {0}")]
    Key(#[from] KeyError),
    /// An endpoint that is not `ip:port`.
    #[error("is not an endpoint of the form ip:port or [ipv6]:port")]
    EndpointSyntax,
    /// An endpoint with an address but no port.
    #[error("has no port; write ip:port, or [ipv6]:port for IPv6")]
    EndpointMissingPort,
    /// Port 0 cannot be sent to.
    #[error("has port 0")]
    EndpointPortZero,
    /// 0.0.0.0, ::, multicast or broadcast: nothing a peer can send to.
    #[error("is not a unicast address a peer can send to")]
    EndpointNotUnicast,
    /// Not a CIDR at all.
    #[error("{item:?} is not a CIDR (address/prefix-length)")]
    CidrSyntax {
        /// The offending list item.
        item: String,
    },
    /// Host bits set: `10.0.0.1/24` instead of `10.0.0.0/24`.
    #[error("{item} has host bits set; the network is {network}")]
    CidrHostBits {
        /// The offending list item.
        item: IpNetwork,
        /// The network address it probably meant.
        network: IpNetwork,
    },
    /// Two CIDRs of one list overlap (or repeat).
    #[error("{first} and {second} overlap")]
    CidrOverlap {
        /// One CIDR.
        first: IpNetwork,
        /// The CIDR it overlaps.
        second: IpNetwork,
    },
    /// A pod CIDR contains one of the node's own addresses: routing it into the
    /// tunnel would send the tunnel's own packets into itself.
    #[error("{cidr} contains the node address {address}")]
    CidrContainsNodeAddress {
        /// The pod CIDR.
        cidr: IpNetwork,
        /// The node address inside it.
        address: IpAddr,
    },
    /// More CIDRs than a node may claim.
    #[error("lists {count} CIDRs, at most {max} are accepted")]
    TooManyCidrs {
        /// How many were listed.
        count: usize,
        /// Accepted maximum.
        max: usize,
    },
    /// A Node address that is not an IP address.
    #[error("is not an IP address")]
    AddressSyntax,
    /// The status annotation is not the JSON wireseal writes.
    #[error("is not a wireseal status: {0}")]
    Status(String),
}

/// Shortens a value for quoting in errors: at most [`QUOTE_LEN`] characters,
/// with the full length noted when cut.
fn quote(value: &str) -> String {
    if value.chars().count() <= QUOTE_LEN {
        return value.to_owned();
    }
    let head: String = value.chars().take(QUOTE_LEN).collect();
    format!("{head}… ({} bytes)", value.len())
}

/// Checks length and characters shared by every annotation value.
fn check_text(value: &str, max: usize) -> Result<&str, InputErrorKind> {
    if value.len() > max {
        return Err(InputErrorKind::TooLong {
            len: value.len(),
            max,
        });
    }
    if let Some((position, found)) = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_graphic() || *c == ' '))
    {
        return Err(InputErrorKind::BadCharacter { found, position });
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(InputErrorKind::Empty);
    }
    Ok(trimmed)
}

/// Decodes `wireseal.dev/public-key`.
///
/// # Errors
/// Length, character and key problems ([`InputErrorKind::Key`]).
pub fn decode_public_key(value: &str) -> Result<PublicKey, InputErrorKind> {
    let text = check_text(value, MAX_KEY_LEN)?;
    Ok(PublicKey::from_base64(text)?)
}

/// Decodes `wireseal.dev/endpoint`.
///
/// Only literal addresses are accepted: resolving names would make the desired
/// state depend on DNS, and the agent always publishes an address.
///
/// # Errors
/// Length, character, syntax, missing or zero port, non-unicast address.
pub fn decode_endpoint(value: &str) -> Result<SocketAddr, InputErrorKind> {
    let text = check_text(value, MAX_ENDPOINT_LEN)?;
    let Ok(endpoint) = SocketAddr::from_str(text) else {
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        return Err(if IpAddr::from_str(bare).is_ok() {
            InputErrorKind::EndpointMissingPort
        } else {
            InputErrorKind::EndpointSyntax
        });
    };
    if endpoint.port() == 0 {
        return Err(InputErrorKind::EndpointPortZero);
    }
    if !is_unicast(endpoint.ip()) {
        return Err(InputErrorKind::EndpointNotUnicast);
    }
    Ok(endpoint)
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Decodes `wireseal.dev/pod-cidrs`: a comma-separated list of network CIDRs.
///
/// # Errors
/// Length, character, syntax, host bits, overlap, count.
pub fn decode_pod_cidrs(value: &str) -> Result<Vec<IpNetwork>, InputErrorKind> {
    let text = check_text(value, MAX_POD_CIDRS_LEN)?;
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    parse_cidr_list(&items)
}

/// Validates a list of pod CIDRs from any source (annotation or `spec.podCIDRs`).
///
/// # Errors
/// Syntax, host bits, overlap, count.
pub fn parse_cidr_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<IpNetwork>, InputErrorKind> {
    if items.len() > MAX_POD_CIDRS {
        return Err(InputErrorKind::TooManyCidrs {
            count: items.len(),
            max: MAX_POD_CIDRS,
        });
    }
    let mut cidrs: Vec<IpNetwork> = Vec::with_capacity(items.len());
    for item in items {
        let cidr = parse_cidr(item.as_ref())?;
        if let Some(first) = cidrs.iter().find(|other| overlaps(**other, cidr)) {
            return Err(InputErrorKind::CidrOverlap {
                first: *first,
                second: cidr,
            });
        }
        cidrs.push(cidr);
    }
    Ok(cidrs)
}

fn parse_cidr(item: &str) -> Result<IpNetwork, InputErrorKind> {
    let syntax = || InputErrorKind::CidrSyntax { item: quote(item) };
    // ipnetwork reads a bare address as a /32 or /128; a pod CIDR must say its prefix.
    if !item.contains('/') {
        return Err(syntax());
    }
    let cidr = IpNetwork::from_str(item).map_err(|_| syntax())?;
    let network = IpNetwork::new(cidr.network(), cidr.prefix()).map_err(|_| syntax())?;
    if network.ip() != cidr.ip() {
        return Err(InputErrorKind::CidrHostBits {
            item: cidr,
            network,
        });
    }
    Ok(cidr)
}

/// True when two networks share at least one address.
#[must_use]
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(_), IpNetwork::V4(_)) | (IpNetwork::V6(_), IpNetwork::V6(_)) => {
            a.contains(b.network()) || b.contains(a.network())
        }
        _ => false,
    }
}

/// What kind of datapath a node runs, as published in its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// In-kernel WireGuard (`ip link add type wireguard`).
    Kernel,
    /// wireseal's userspace datapath (boringtun's protocol core).
    Userspace,
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        })
    }
}

/// The readable status a node's agent publishes in `wireseal.dev/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// The datapath in use, once one is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathKind>,
    /// True when every expected peer has a working, encrypted tunnel.
    pub encryption_ready: bool,
    /// Peers expected (valid remote nodes).
    pub peers_expected: u32,
    /// Peers with a recent handshake.
    pub peers_encrypted: u32,
    /// A short human-readable reason when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Decodes `wireseal.dev/status`.
///
/// # Errors
/// Length, or [`InputErrorKind::Status`] when the JSON does not match.
pub fn decode_status(value: &str) -> Result<NodeStatus, InputErrorKind> {
    if value.len() > MAX_STATUS_LEN {
        return Err(InputErrorKind::TooLong {
            len: value.len(),
            max: MAX_STATUS_LEN,
        });
    }
    serde_json::from_str(value).map_err(|err| InputErrorKind::Status(err.to_string()))
}

/// The annotations a node's agent publishes on its own Node.
///
/// `status` is JSON; serialising this plain struct cannot fail, but should it
/// ever, the status annotation is left out rather than written half.
#[must_use]
pub fn encode_own(
    key: &PublicKey,
    endpoint: Option<SocketAddr>,
    status: Option<&NodeStatus>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(PUBLIC_KEY.to_owned(), key.to_base64());
    if let Some(endpoint) = endpoint {
        out.insert(ENDPOINT.to_owned(), endpoint.to_string());
    }
    if let Some(json) = status.and_then(|status| serde_json::to_string(status).ok()) {
        out.insert(STATUS.to_owned(), json);
    }
    out
}

#[cfg(test)]
#[path = "annotation_tests.rs"]
mod tests;
