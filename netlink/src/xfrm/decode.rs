//! The kernel's XFRM dump answers, read back: SAs (without their keys) and
//! policies, so the agent can adopt what a previous run installed and
//! report each SA's counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::{
    AF_INET, AF_INET6, Direction, USERPOLICY_INFO_LEN, USERSA_INFO_LEN, XFRMA_IF_ID,
    XFRMA_REPLAY_ESN_VAL, XFRMA_TMPL, XfrmError,
};

/// An SA as the kernel reports it. Its key is not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaInfo {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// SPI.
    pub spi: u32,
    /// IP protocol (50 for ESP).
    pub proto: u8,
    /// reqid.
    pub reqid: u32,
    /// Its XFRM interface, when it has one.
    pub if_id: Option<u32>,
    /// Bytes it carried.
    pub bytes: u64,
    /// Packets it carried.
    pub packets: u64,
    /// Packets dropped as replays.
    pub replay_errors: u32,
    /// Packets that failed authentication.
    pub integrity_errors: u32,
    /// The last outbound sequence number used (extended sequence numbers),
    /// when the SA has them.
    pub oseq: Option<u64>,
}

/// A policy as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Inner source.
    pub src: IpNetwork,
    /// Inner destination.
    pub dst: IpNetwork,
    /// Direction (`None` for the kernel's socket policies).
    pub dir: Option<Direction>,
    /// Priority.
    pub priority: u32,
    /// Its XFRM interface, when it has one.
    pub if_id: Option<u32>,
    /// Its first template: outer source, outer destination, reqid.
    pub template: Option<(IpAddr, IpAddr, u32)>,
}

fn short(what: &'static str, need: usize, got: usize) -> XfrmError {
    XfrmError::Truncated { what, need, got }
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(raw)
}

/// An `xfrm_address_t` at `at` of `family`.
fn addr_at(buf: &[u8], at: usize, family: u16) -> Result<IpAddr, XfrmError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            buf[at],
            buf[at + 1],
            buf[at + 2],
            buf[at + 3],
        ))),
        AF_INET6 => {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&buf[at..at + 16]);
            Ok(IpAddr::V6(Ipv6Addr::from(raw)))
        }
        other => Err(XfrmError::Family(other)),
    }
}

/// The attributes after a fixed header: (type, value).
fn attributes(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, XfrmError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = usize::from(u16_at(buf, at));
        let kind = u16_at(buf, at + 2) & 0x3fff;
        if len < 4 || at + len > buf.len() {
            return Err(short("an XFRM attribute", len.max(4), buf.len() - at));
        }
        out.push((kind, &buf[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

fn if_id(attrs: &[(u16, &[u8])]) -> Option<u32> {
    attrs
        .iter()
        .find(|(kind, value)| *kind == XFRMA_IF_ID && value.len() >= 4)
        .map(|(_, value)| u32_at(value, 0))
}

/// Reads one `XFRM_MSG_NEWSA` answer of a dump.
///
/// # Errors
/// When it is shorter than the kernel's structure or of an unknown family.
pub fn parse_sa(payload: &[u8]) -> Result<SaInfo, XfrmError> {
    if payload.len() < USERSA_INFO_LEN {
        return Err(short("an SA", USERSA_INFO_LEN, payload.len()));
    }
    let family = u16_at(payload, 212);
    let attrs = attributes(&payload[USERSA_INFO_LEN..])?;
    Ok(SaInfo {
        dst: addr_at(payload, 56, family)?,
        spi: u32::from_be_bytes([payload[72], payload[73], payload[74], payload[75]]),
        proto: payload[76],
        src: addr_at(payload, 80, family)?,
        // curlft { bytes, packets, add_time, use_time } at 160
        bytes: u64_at(payload, 160),
        packets: u64_at(payload, 168),
        // stats { replay_window, replay, integrity_failed } at 192
        replay_errors: u32_at(payload, 196),
        integrity_errors: u32_at(payload, 200),
        reqid: u32_at(payload, 208),
        if_id: if_id(&attrs),
        oseq: attrs
            .iter()
            .find(|(kind, value)| *kind == XFRMA_REPLAY_ESN_VAL && value.len() >= 16)
            .map(|(_, value)| u64::from(u32_at(value, 12)) << 32 | u64::from(u32_at(value, 4))),
    })
}

/// Reads one `XFRM_MSG_NEWPOLICY` answer of a dump.
///
/// # Errors
/// When it is shorter than the kernel's structure, or of an unknown family.
pub fn parse_policy(payload: &[u8]) -> Result<PolicyInfo, XfrmError> {
    if payload.len() < USERPOLICY_INFO_LEN {
        return Err(short("a policy", USERPOLICY_INFO_LEN, payload.len()));
    }
    let family = u16_at(payload, 40);
    let net = |at: usize, prefix: u8| -> Result<IpNetwork, XfrmError> {
        let ip = addr_at(payload, at, family)?;
        IpNetwork::new(ip, prefix).map_err(|_| XfrmError::Prefix(prefix))
    };
    let attrs = attributes(&payload[USERPOLICY_INFO_LEN..])?;
    let template = attrs
        .iter()
        .find(|(kind, _)| *kind == XFRMA_TMPL)
        .map(|(_, tmpl)| -> Result<_, XfrmError> {
            if tmpl.len() < 48 {
                return Err(short("a policy template", 48, tmpl.len()));
            }
            let outer = u16_at(tmpl, 24);
            Ok((
                addr_at(tmpl, 28, outer)?,
                addr_at(tmpl, 0, outer)?,
                u32_at(tmpl, 44),
            ))
        })
        .transpose()?;
    Ok(PolicyInfo {
        dst: net(0, payload[42])?,
        src: net(16, payload[43])?,
        // priority, index, dir after sel (56), lft (64), curlft (32)
        priority: u32_at(payload, 152),
        dir: match payload[160] {
            0 => Some(Direction::In),
            1 => Some(Direction::Out),
            2 => Some(Direction::Fwd),
            _ => None,
        },
        if_id: if_id(&attrs),
        template,
    })
}
