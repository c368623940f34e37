//! Parser for the cross-platform WireGuard UAPI (`get=1` / `set=1`).
//!
//! A `set` request is parsed completely and validated before anything is applied, so a
//! bad line anywhere in it leaves the device exactly as it was (stricter than
//! wireguard-go, which applies line by line and can stop half way).

use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use super::UapiError;
use crate::key::{PublicKey, Secret};

/// Longest accepted line. The longest valid line is a hex key (~76 bytes) or an IPv6
/// endpoint; anything far above is garbage or an attack on our memory.
pub const MAX_LINE: usize = 4096;

/// Largest accepted request, to bound memory for a hostile client while leaving room
/// for thousands of peers in one `wg setconf`.
pub const MAX_REQUEST: usize = 64 * 1024 * 1024;

/// Most lines in one request: ~10 per peer leaves room for 100,000 peers, while a
/// flood of one-byte lines cannot cost more than a few tens of MiB of bookkeeping.
pub const MAX_LINES: usize = 1_000_000;

/// One UAPI operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `get=1`: dump the configuration and statistics.
    Get,
    /// `set=1`: change the configuration.
    Set(SetRequest),
    /// `health=1` (wireseal's own, not in `wg`): whether every datapath thread made
    /// progress lately; the liveness probe asks it.
    Health,
}

/// A validated `set=1` request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key`: `Some(None)` removes the key (all-zero hex), as wireguard-go does.
    pub private_key: Option<Option<Secret>>,
    /// `wireseal_alternate_private_key` (wireseal's extension for key
    /// rotation): a second private key whose handshakes are answered too;
    /// `Some(None)` removes it (all-zero hex).
    pub alternate_private_key: Option<Option<Secret>>,
    /// `listen_port`.
    pub listen_port: Option<u16>,
    /// `fwmark`; 0 removes the mark.
    pub fwmark: Option<u32>,
    /// `replace_peers=true`: drop every peer not named afterwards.
    pub replace_peers: bool,
    /// Peer sections, in order.
    pub peers: Vec<PeerChange>,
}

/// One `public_key=` section of a `set` request.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerChange {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: ignore this section unless the peer exists.
    pub update_only: bool,
    /// `preshared_key`: `Some(None)` removes it (all-zero hex).
    pub preshared_key: Option<Option<Secret>>,
    /// `endpoint`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval` in seconds; 0 disables.
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`.
    pub replace_allowed_ips: bool,
    /// `allowed_ip` lines, in order.
    pub allowed_ips: Vec<IpNetwork>,
}

impl PeerChange {
    fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

fn invalid(what: &str, line: usize) -> UapiError {
    UapiError::Invalid(format!("line {line}: {what}"))
}

fn parse_true(key: &str, value: &str, line: usize) -> Result<bool, UapiError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(invalid(&format!("{key} must be \"true\""), line))
    }
}

/// Parses a number the way wireguard-go does (`strconv.ParseUint(v, 0, …)`): decimal,
/// or hexadecimal with `0x`, since `wg` users write fwmarks as `0x…`.
fn parse_uint(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()
    } else if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        None
    } else {
        value.parse().ok()
    }
}

fn parse_endpoint(value: &str, line: usize) -> Result<SocketAddr, UapiError> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| invalid("endpoint is not IP:port or [IPv6]:port", line))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(invalid(
            "endpoint has port 0 or an unspecified address",
            line,
        ));
    }
    Ok(addr)
}

fn parse_cidr(value: &str, line: usize) -> Result<IpNetwork, UapiError> {
    // `IpNetwork::from_str` accepts a bare address as /32 or /128; the UAPI always
    // carries the prefix, so a missing one means a broken client.
    if !value.contains('/') {
        return Err(invalid("allowed_ip needs an explicit /prefix", line));
    }
    let net: IpNetwork = value
        .parse()
        .map_err(|_| invalid("allowed_ip is not a CIDR", line))?;
    Ok(crate::allowed_ips::canonical(net))
}

/// Parses one request from its lines (without the terminating empty line).
///
/// # Errors
/// [`UapiError::Invalid`] for a malformed line, an unknown key or a bad value,
/// [`UapiError::Protocol`] for an unknown operation.
pub fn parse_request<'a>(mut lines: impl Iterator<Item = &'a str>) -> Result<Request, UapiError> {
    match lines.next() {
        Some("get=1") => {
            if lines.next().is_some() {
                return Err(invalid("get=1 takes no further lines", 2));
            }
            Ok(Request::Get)
        }
        Some("health=1") => {
            if lines.next().is_some() {
                return Err(invalid("health=1 takes no further lines", 2));
            }
            Ok(Request::Health)
        }
        Some("set=1") => parse_set(lines).map(Request::Set),
        Some(_) | None => Err(UapiError::Protocol(
            "first line must be get=1, set=1 or health=1".into(),
        )),
    }
}

fn parse_set<'a>(lines: impl Iterator<Item = &'a str>) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for (i, text) in lines.enumerate() {
        let line = i + 2;
        if text.len() > MAX_LINE {
            return Err(invalid("line too long", line));
        }
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected key=value", line))?;
        if key == "public_key" {
            let public_key = PublicKey::from_hex(value)
                .map_err(|e| invalid(&format!("public_key {e}"), line))?;
            req.peers.push(PeerChange::new(public_key));
            continue;
        }
        match req.peers.last_mut() {
            None => set_interface_key(&mut req, key, value, line)?,
            Some(peer) => set_peer_key(peer, key, value, line)?,
        }
    }
    Ok(req)
}

fn set_interface_key(
    req: &mut SetRequest,
    key: &str,
    value: &str,
    line: usize,
) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let secret =
                Secret::from_hex(value).map_err(|e| invalid(&format!("{key} {e}"), line))?;
            req.private_key = Some((!secret.is_zero()).then_some(secret));
        }
        "wireseal_alternate_private_key" => {
            let secret =
                Secret::from_hex(value).map_err(|e| invalid(&format!("{key} {e}"), line))?;
            req.alternate_private_key = Some((!secret.is_zero()).then_some(secret));
        }
        "listen_port" => {
            let port = parse_uint(value)
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| invalid("listen_port is not a port number", line))?;
            req.listen_port = Some(port);
        }
        "fwmark" => {
            let mark = parse_uint(value)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| invalid("fwmark is not a 32-bit number", line))?;
            req.fwmark = Some(mark);
        }
        "replace_peers" => req.replace_peers = parse_true(key, value, line)?,
        _ => return Err(invalid("unknown interface key", line)),
    }
    Ok(())
}

fn set_peer_key(
    peer: &mut PeerChange,
    key: &str,
    value: &str,
    line: usize,
) -> Result<(), UapiError> {
    match key {
        "remove" => peer.remove = parse_true(key, value, line)?,
        "update_only" => peer.update_only = parse_true(key, value, line)?,
        "preshared_key" => {
            let secret =
                Secret::from_hex(value).map_err(|e| invalid(&format!("{key} {e}"), line))?;
            peer.preshared_key = Some((!secret.is_zero()).then_some(secret));
        }
        "endpoint" => peer.endpoint = Some(parse_endpoint(value, line)?),
        "persistent_keepalive_interval" => {
            let secs = parse_uint(value)
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| invalid("persistent_keepalive_interval is not 0..65535", line))?;
            peer.persistent_keepalive = Some(secs);
        }
        "replace_allowed_ips" => peer.replace_allowed_ips = parse_true(key, value, line)?,
        "allowed_ip" => peer.allowed_ips.push(parse_cidr(value, line)?),
        "protocol_version" => {
            if value != "1" {
                return Err(invalid("only protocol_version=1 exists", line));
            }
        }
        _ => return Err(invalid("unknown peer key", line)),
    }
    Ok(())
}
