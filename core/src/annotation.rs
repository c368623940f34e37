//! The `wireseal.dev/` annotation codec and the validation of every value a
//! Node carries into wireseal.
//!
//! Every error names the node, the field (annotation or Node field) and the
//! offending value (shortened, so a megabyte of garbage does not end up in a log
//! line or an Event), and says what is wrong with it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::key::{KeyError, PublicKey};
use crate::rotation::{NextKey, decode_switch_at, format_switch_at};

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
/// The public key the node switches to at `wireseal.dev/key-switch-at`
/// (scheduled rotation; see [`crate::rotation`]).
pub const NEXT_PUBLIC_KEY: &str = "wireseal.dev/next-public-key";
/// When the node switches to its next key: RFC 3339 in UTC, to the second.
pub const KEY_SWITCH_AT: &str = "wireseal.dev/key-switch-at";
/// IPsec mode: the node's key epoch, a decimal counter. The SAs towards a
/// node are keyed by its epoch; it counts up with each rekey (see
/// [`crate::ipsec`]).
pub const IPSEC_EPOCH: &str = "wireseal.dev/ipsec-epoch";

/// Longest accepted epoch (`u32::MAX` has 10 digits).
const MAX_EPOCH_LEN: usize = 10;

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
/// Longest accepted message inside a status.
pub const MAX_STATUS_MESSAGE_LEN: usize = 512;
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
    /// An address that is not another node's across the network: loopback
    /// (each peer would send to itself), link-local (169.254.169.254 is the
    /// cloud's metadata service), IPv4-mapped IPv6, or an IPv6 zone.
    #[error("is {0}, not an address another node can be reached at")]
    EndpointNotRoutable(&'static str),
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
    /// A switch time that is not RFC 3339 in UTC to the second.
    #[error("is not a time of the form 2026-12-03T14:00:00Z")]
    SwitchAtSyntax,
    /// A switch time further ahead than a rotation announces it.
    #[error("is more than {max_days} days ahead; the next key is ignored")]
    SwitchTooFar {
        /// The bound, in days.
        max_days: i64,
    },
    /// One of the two rotation annotations without the other.
    #[error("comes without {missing}; the rotation is ignored")]
    RotationIncomplete {
        /// The annotation that is missing.
        missing: &'static str,
    },
    /// An IPsec epoch that is not a decimal number up to 4294967295.
    #[error("is not an epoch (a decimal number up to 4294967295)")]
    EpochSyntax,
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

/// `text` with everything but printable ASCII escaped (`\u{1b}`).
fn escape_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
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
    if let SocketAddr::V6(v6) = endpoint
        && (v6.scope_id() != 0 || text.contains('%'))
    {
        return Err(InputErrorKind::EndpointNotRoutable(
            "an IPv6 address with a zone",
        ));
    }
    check_endpoint_address(endpoint.ip())?;
    Ok(endpoint)
}

/// The IPv6 address of AWS's instance metadata service: a unique local
/// address, so none of the standard library's checks sees it as special.
pub const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Checks an address peers would send a node's encrypted packets to (a
/// published endpoint, or the InternalIP used in its place): unicast, and
/// reachable across the network.
///
/// # Errors
/// [`InputErrorKind::EndpointNotUnicast`] or [`InputErrorKind::EndpointNotRoutable`].
pub fn check_endpoint_address(ip: IpAddr) -> Result<(), InputErrorKind> {
    let not_routable = match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                return Err(InputErrorKind::EndpointNotUnicast);
            }
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.octets()[0] == 0 {
                Some("in 0.0.0.0/8")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() || v6.is_multicast() {
                return Err(InputErrorKind::EndpointNotUnicast);
            }
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unicast_link_local() {
                Some("a link-local address")
            } else if v6.to_ipv4_mapped().is_some() {
                Some("an IPv4-mapped IPv6 address")
            } else if v6 == AWS_METADATA_V6 {
                Some("the AWS metadata service's IPv6 address")
            } else {
                None
            }
        }
    };
    match not_routable {
        Some(why) => Err(InputErrorKind::EndpointNotRoutable(why)),
        None => Ok(()),
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

/// How a node encrypts pod traffic to its peers, as published in its status.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// WireGuard (kernel or userspace).
    #[default]
    WireGuard,
    /// Kernel IPsec: ESP in tunnel mode over XFRM, keys derived per node pair.
    Ipsec,
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WireGuard => "wireguard",
            Self::Ipsec => "ipsec",
        })
    }
}

/// The readable status a node's agent publishes in `wireseal.dev/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored: during a rolling upgrade an older agent reads
// the status of a newer one, and must not take a field it does not know for
// bad input (an Event on that node, a refusal in its metrics).
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The datapath in use, once one is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathKind>,
    /// The encryption in use; absent from agents older than IPsec mode,
    /// which all ran WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// True when every expected peer has a working, encrypted tunnel.
    pub encryption_ready: bool,
    /// Peers expected (valid remote nodes).
    pub peers_expected: u32,
    /// Peers with a recent handshake.
    pub peers_encrypted: u32,
    /// A short human-readable reason when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The addresses (at most one per family) the node's own traffic into
    /// the tunnel leaves from: `wireseal verify` on a peer probes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_sources: Vec<IpAddr>,
}

/// Decodes `wireseal.dev/status`.
///
/// # Errors
/// Length, or [`InputErrorKind::Status`] when the JSON does not match.
pub fn decode_status(value: &str) -> Result<NodeStatus, InputErrorKind> {
    // The same text rules as every other value: what an agent writes is
    // printable ASCII (serde_json escapes the rest).
    let text = check_text(value, MAX_STATUS_LEN)?;
    // serde_json's message quotes the offending JSON string decoded, so a
    // `\u001b` in the value would come back as a raw escape character.
    let status: NodeStatus = serde_json::from_str(text)
        .map_err(|err| InputErrorKind::Status(escape_text(&err.to_string())))?;
    // The message is shown to operators: the same text rules as every other
    // value, so no escape sequence reaches a terminal through it.
    if let Some(message) = &status.message {
        check_text(message, MAX_STATUS_MESSAGE_LEN)?;
    }
    let v4 = status.host_sources.iter().filter(|ip| ip.is_ipv4()).count();
    if v4 > 1 || status.host_sources.len() - v4 > 1 {
        return Err(InputErrorKind::Status(format!(
            "{} host sources: at most one per family",
            status.host_sources.len()
        )));
    }
    Ok(status)
}

/// Decodes `wireseal.dev/ipsec-epoch`: plain decimal digits only (no sign,
/// no leading zeros beyond "0"), so that one number has one spelling.
///
/// # Errors
/// Length, characters, or [`InputErrorKind::EpochSyntax`].
pub fn decode_epoch(value: &str) -> Result<u32, InputErrorKind> {
    let text = check_text(value, MAX_EPOCH_LEN)?;
    let canonical =
        text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(InputErrorKind::EpochSyntax);
    }
    text.parse().map_err(|_| InputErrorKind::EpochSyntax)
}

/// Decodes `wireseal.dev/next-public-key` and `wireseal.dev/key-switch-at`
/// together: both or neither.
///
/// # Errors
/// The annotation at fault and what is wrong with it: one without the
/// other, or either value malformed.
pub fn decode_next_key(
    key: Option<&str>,
    switch_at: Option<&str>,
) -> Result<Option<NextKey>, (&'static str, String, InputErrorKind)> {
    match (key, switch_at) {
        (None, None) => Ok(None),
        (Some(key), None) => Err((
            NEXT_PUBLIC_KEY,
            key.to_owned(),
            InputErrorKind::RotationIncomplete {
                missing: KEY_SWITCH_AT,
            },
        )),
        (None, Some(at)) => Err((
            KEY_SWITCH_AT,
            at.to_owned(),
            InputErrorKind::RotationIncomplete {
                missing: NEXT_PUBLIC_KEY,
            },
        )),
        (Some(key), Some(at)) => {
            let key =
                decode_public_key(key).map_err(|kind| (NEXT_PUBLIC_KEY, key.to_owned(), kind))?;
            let switch_at = check_text(at, MAX_KEY_LEN)
                .and_then(decode_switch_at)
                .map_err(|kind| (KEY_SWITCH_AT, at.to_owned(), kind))?;
            Ok(Some(NextKey { key, switch_at }))
        }
    }
}

/// The annotations a node's agent publishes on its own Node.
///
/// `status` is JSON; serialising this plain struct cannot fail, but should it
/// ever, the status annotation is left out rather than written half.
#[must_use]
pub fn encode_own(
    key: &PublicKey,
    next: Option<&NextKey>,
    endpoint: Option<SocketAddr>,
    status: Option<&NodeStatus>,
    ipsec_epoch: Option<u32>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(PUBLIC_KEY.to_owned(), key.to_base64());
    if let Some(epoch) = ipsec_epoch {
        out.insert(IPSEC_EPOCH.to_owned(), epoch.to_string());
    }
    if let Some(next) = next {
        out.insert(NEXT_PUBLIC_KEY.to_owned(), next.key.to_base64());
        out.insert(KEY_SWITCH_AT.to_owned(), format_switch_at(next.switch_at));
    }
    if let Some(endpoint) = endpoint {
        out.insert(ENDPOINT.to_owned(), endpoint.to_string());
    }
    if let Some(json) = status.and_then(|status| serde_json::to_string(status).ok()) {
        out.insert(STATUS.to_owned(), json);
    }
    out
}

#[cfg(test)]
mod tests;
