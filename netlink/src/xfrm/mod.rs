//! XFRM (kernel IPsec) messages for IPsec mode: ESP security associations
//! and the policies that send a peer's pod CIDRs through them, tied to an
//! XFRM interface by its `if_id` so routing works as it does for WireGuard
//! (routes in wireseal's table into the interface, one rule per family).
//!
//! Encoded here, on the `netlink-packet-core` the other protocols use:
//! rust-netlink's `netlink-packet-xfrm` 0.3 is built on
//! `netlink-packet-core` 0.7, two releases behind, and would pull a second
//! copy of the netlink stack in. The layouts are `linux/xfrm.h`'s, and the
//! tests hold every message to the bytes `ip xfrm` (iproute2) sends for the
//! same command, captured with strace.
//!
//! The SA's key travels in the message buffer: [`SaMessage`] keeps it in a
//! [`Zeroizing`] buffer that is wiped on drop.

mod conn;
mod decode;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use zeroize::Zeroizing;

pub use conn::Xfrm;
pub use decode::{PolicyInfo, SaInfo, parse_policy, parse_sa};

/// `XFRM_MSG_NEWSA`.
pub const XFRM_MSG_NEWSA: u16 = 0x10;
/// `XFRM_MSG_DELSA`.
pub const XFRM_MSG_DELSA: u16 = 0x11;
/// `XFRM_MSG_NEWPOLICY`.
pub const XFRM_MSG_NEWPOLICY: u16 = 0x13;
/// `XFRM_MSG_DELPOLICY`.
pub const XFRM_MSG_DELPOLICY: u16 = 0x14;
/// `XFRM_MSG_UPDPOLICY`: installs a policy, or replaces the one with the
/// same selector, direction and interface.
pub const XFRM_MSG_UPDPOLICY: u16 = 0x19;
/// `XFRM_MSG_UPDSA`: replaces an SA with the same (daddr, SPI, proto).
pub const XFRM_MSG_UPDSA: u16 = 0x1a;

pub(crate) const XFRMA_TMPL: u16 = 5;
const XFRMA_SRCADDR: u16 = 13;
const XFRMA_ALG_AEAD: u16 = 18;
pub(crate) const XFRMA_REPLAY_ESN_VAL: u16 = 23;
pub(crate) const XFRMA_IF_ID: u16 = 31;

const IPPROTO_ESP: u8 = 50;
const XFRM_MODE_TUNNEL: u8 = 1;
const XFRM_STATE_ESN: u8 = 128;
pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;

/// The AEAD every SA uses: AES-GCM with a 128-bit ICV (RFC 4106).
pub const AEAD_NAME: &str = "rfc4106(gcm(aes))";
/// Bytes of its key: AES-256 and the 4-byte salt.
pub const AEAD_KEY_LEN: usize = 36;
const AEAD_ICV_BITS: u32 = 128;

/// Sizes of the kernel structures (x86-64 and every other Linux ABI: the
/// structures hold only fixed-width fields with explicit padding).
const SELECTOR_LEN: usize = 56;
const LIFETIME_CFG_LEN: usize = 64;
const LIFETIME_CUR_LEN: usize = 32;
pub(crate) const USERSA_INFO_LEN: usize = 224;
const USERSA_ID_LEN: usize = 24;
pub(crate) const USERPOLICY_INFO_LEN: usize = 168;
const USERPOLICY_ID_LEN: usize = 64;
const USER_TMPL_LEN: usize = 64;
const ALG_NAME_LEN: usize = 64;

/// Which way a policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Packets this node receives for itself (`XFRM_POLICY_IN`).
    In = 0,
    /// Packets it sends (`XFRM_POLICY_OUT`).
    Out = 1,
    /// Packets it forwards, e.g. to its pods (`XFRM_POLICY_FWD`).
    Fwd = 2,
}

/// One ESP SA in tunnel mode between two node addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sa {
    /// Outer source: the sending node's address.
    pub src: IpAddr,
    /// Outer destination: the receiving node's address.
    pub dst: IpAddr,
    /// Its SPI (`wireseal_core::ipsec`).
    pub spi: u32,
    /// Ties the SA to its policies' templates.
    pub reqid: u32,
    /// The XFRM interface it belongs to.
    pub if_id: u32,
    /// Anti-replay window, packets (with extended sequence numbers).
    pub replay_window: u32,
    /// The outbound sequence number the SA starts from (its first packet
    /// carries the next one): 0 for a new SA. AES-GCM's nonce is built from
    /// it, so an SA installed again with the same key must start past every
    /// number it sent before.
    pub oseq: u64,
}

/// A policy: traffic from `src` to `dst` (inner addresses) in `dir` goes
/// through the SA between `tunnel_src` and `tunnel_dst` with `reqid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Inner source CIDR.
    pub src: IpNetwork,
    /// Inner destination CIDR.
    pub dst: IpNetwork,
    /// Direction.
    pub dir: Direction,
    /// Outer source of the template.
    pub tunnel_src: IpAddr,
    /// Outer destination of the template.
    pub tunnel_dst: IpAddr,
    /// The SA's reqid.
    pub reqid: u32,
    /// The XFRM interface.
    pub if_id: u32,
    /// Lower wins.
    pub priority: u32,
}

/// Why a message cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    /// Addresses of different families in one SA or policy.
    #[error("{what} mixes address families: {a} and {b}")]
    MixedFamilies {
        /// Which pair.
        what: &'static str,
        /// One address.
        a: String,
        /// The other.
        b: String,
    },
    /// The kernel's answer is shorter than its structure.
    #[error("{what} from the kernel has {got} bytes, expected at least {need}")]
    Truncated {
        /// What was read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        got: usize,
    },
    /// An address family other than IPv4 and IPv6.
    #[error("address family {0} in an XFRM answer")]
    Family(u16),
    /// A prefix length too long for its family.
    #[error("prefix length {0} in an XFRM selector")]
    Prefix(u8),
    /// The `NETLINK_XFRM` socket could not be opened.
    #[error("opening the NETLINK_XFRM socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{op}: {errno}")]
    Kernel {
        /// What was asked.
        op: String,
        /// The kernel's answer.
        errno: crate::Errno,
    },
    /// The connection to the kernel broke.
    #[error("{op}: the netlink connection failed: {detail}")]
    Connection {
        /// What was asked.
        op: String,
        /// What went wrong.
        detail: String,
    },
}

/// A message ready to send: its type and payload (after the netlink header).
pub struct SaMessage {
    /// `XFRM_MSG_NEWSA` or `XFRM_MSG_UPDSA`.
    pub kind: u16,
    /// Holds the key: wiped on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SaMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SaMessage({:#x}, {} bytes, key redacted)",
            self.kind,
            self.payload.len()
        )
    }
}

fn family(addr: IpAddr) -> u16 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn same_family(what: &'static str, a: IpAddr, b: IpAddr) -> Result<u16, XfrmError> {
    if a.is_ipv4() == b.is_ipv4() {
        Ok(family(a))
    } else {
        Err(XfrmError::MixedFamilies {
            what,
            a: a.to_string(),
            b: b.to_string(),
        })
    }
}

/// `xfrm_address_t`: 16 bytes, an IPv4 address in the first four.
fn put_addr(out: &mut Vec<u8>, addr: IpAddr) {
    let mut raw = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => raw.copy_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&raw);
}

fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn pad_to(out: &mut Vec<u8>, start: usize, len: usize) {
    out.resize(start + len, 0);
}

/// `xfrm_selector`: inner addresses, no ports or protocol.
fn put_selector(out: &mut Vec<u8>, src: Option<IpNetwork>, dst: Option<IpNetwork>, family: u16) {
    let start = out.len();
    match dst {
        Some(net) => put_addr(out, net.network()),
        None => out.extend_from_slice(&[0; 16]),
    }
    match src {
        Some(net) => put_addr(out, net.network()),
        None => out.extend_from_slice(&[0; 16]),
    }
    // dport, dport_mask, sport, sport_mask
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&family.to_ne_bytes());
    out.push(dst.map_or(0, |n| n.prefix()));
    out.push(src.map_or(0, |n| n.prefix()));
    // proto, padding, ifindex, user
    pad_to(out, start, SELECTOR_LEN);
}

/// `xfrm_lifetime_cfg` with no limits: byte and packet limits at their
/// maximum (the kernel's "infinite"), no expiry times.
fn put_no_limits(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xff; LIFETIME_CFG_LEN / 2]);
    out.extend_from_slice(&[0; LIFETIME_CFG_LEN / 2]);
}

/// `XFRM_MSG_NEWSA` (or, with `update`, `XFRM_MSG_UPDSA`) for `sa` with
/// `key` (`rfc4106(gcm(aes))`, 36 bytes).
///
/// # Errors
/// When `sa.src` and `sa.dst` are of different families.
pub fn new_sa(sa: &Sa, key: &[u8; AEAD_KEY_LEN], update: bool) -> Result<SaMessage, XfrmError> {
    let family = same_family("the SA", sa.src, sa.dst)?;
    let mut out = Zeroizing::new(Vec::with_capacity(USERSA_INFO_LEN + 160));
    // xfrm_usersa_info: the selector matches anything (the policies select).
    put_selector(&mut out, None, None, 0);
    // xfrm_id: daddr, spi (network order), proto
    put_addr(&mut out, sa.dst);
    out.extend_from_slice(&sa.spi.to_be_bytes());
    out.push(IPPROTO_ESP);
    out.extend_from_slice(&[0; 3]);
    put_addr(&mut out, sa.src);
    put_no_limits(&mut out);
    // curlft and stats: zero; seq: zero
    out.extend_from_slice(&[0; LIFETIME_CUR_LEN + 12 + 4]);
    out.extend_from_slice(&sa.reqid.to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.push(XFRM_MODE_TUNNEL);
    // replay_window here is the legacy one: with ESN the attribute has it.
    out.push(0);
    out.push(XFRM_STATE_ESN);
    pad_to(&mut out, 0, USERSA_INFO_LEN);

    // XFRMA_ALG_AEAD: xfrm_algo_aead { name[64], key_len (bits), icv_len, key }
    let mut aead = Zeroizing::new(Vec::with_capacity(ALG_NAME_LEN + 8 + AEAD_KEY_LEN));
    aead.extend_from_slice(AEAD_NAME.as_bytes());
    aead.resize(ALG_NAME_LEN, 0);
    let key_bits = u32::try_from(AEAD_KEY_LEN * 8).unwrap_or(u32::MAX);
    aead.extend_from_slice(&key_bits.to_ne_bytes());
    aead.extend_from_slice(&AEAD_ICV_BITS.to_ne_bytes());
    aead.extend_from_slice(key);
    put_attr(&mut out, XFRMA_ALG_AEAD, &aead);

    // XFRMA_REPLAY_ESN_VAL: xfrm_replay_state_esn { bmp_len, oseq, seq,
    // oseq_hi, seq_hi, replay_window } (the bitmap is the kernel's).
    let mut esn = Vec::with_capacity(24);
    esn.extend_from_slice(&sa.replay_window.div_ceil(32).to_ne_bytes());
    let (oseq_hi, oseq) = split_seq(sa.oseq);
    esn.extend_from_slice(&oseq.to_ne_bytes());
    esn.extend_from_slice(&0u32.to_ne_bytes());
    esn.extend_from_slice(&oseq_hi.to_ne_bytes());
    esn.extend_from_slice(&0u32.to_ne_bytes());
    esn.extend_from_slice(&sa.replay_window.to_ne_bytes());
    put_attr(&mut out, XFRMA_REPLAY_ESN_VAL, &esn);

    put_attr(&mut out, XFRMA_IF_ID, &sa.if_id.to_ne_bytes());
    Ok(SaMessage {
        kind: if update {
            XFRM_MSG_UPDSA
        } else {
            XFRM_MSG_NEWSA
        },
        payload: out,
    })
}

/// A 64-bit sequence number as ESN's (high, low) halves.
fn split_seq(seq: u64) -> (u32, u32) {
    let high = u32::try_from(seq >> 32).unwrap_or(u32::MAX);
    let low = u32::try_from(seq & 0xffff_ffff).unwrap_or(u32::MAX);
    (high, low)
}

/// `XFRM_MSG_DELSA` payload for the SA `spi` from `src` to `dst`.
///
/// # Errors
/// When `src` and `dst` are of different families.
pub fn delete_sa(src: IpAddr, dst: IpAddr, spi: u32) -> Result<Vec<u8>, XfrmError> {
    let family = same_family("the SA", src, dst)?;
    let mut out = Vec::with_capacity(USERSA_ID_LEN + 20);
    // xfrm_usersa_id { daddr, spi, family, proto }
    put_addr(&mut out, dst);
    out.extend_from_slice(&spi.to_be_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.push(IPPROTO_ESP);
    pad_to(&mut out, 0, USERSA_ID_LEN);
    let mut addr = Vec::with_capacity(16);
    put_addr(&mut addr, src);
    put_attr(&mut out, XFRMA_SRCADDR, &addr);
    Ok(out)
}

/// `XFRM_MSG_NEWPOLICY` payload for `policy`.
///
/// # Errors
/// When its addresses mix families.
pub fn new_policy(policy: &Policy) -> Result<Vec<u8>, XfrmError> {
    let inner = same_family("the policy's selector", policy.src.ip(), policy.dst.ip())?;
    let outer = same_family("the policy's tunnel", policy.tunnel_src, policy.tunnel_dst)?;
    let mut out = Vec::with_capacity(USERPOLICY_INFO_LEN + 80);
    // xfrm_userpolicy_info { sel, lft, curlft, priority, index, dir,
    // action (allow), flags, share }
    put_selector(&mut out, Some(policy.src), Some(policy.dst), inner);
    put_no_limits(&mut out);
    out.extend_from_slice(&[0; LIFETIME_CUR_LEN]);
    out.extend_from_slice(&policy.priority.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(policy.dir as u8);
    pad_to(&mut out, 0, USERPOLICY_INFO_LEN);

    // XFRMA_TMPL: one xfrm_user_tmpl { id { daddr, spi (any), proto },
    // family, saddr, reqid, mode, share, optional, aalgos, ealgos, calgos }
    let mut tmpl = Vec::with_capacity(USER_TMPL_LEN);
    put_addr(&mut tmpl, policy.tunnel_dst);
    tmpl.extend_from_slice(&[0; 4]);
    tmpl.push(IPPROTO_ESP);
    tmpl.extend_from_slice(&[0; 3]);
    tmpl.extend_from_slice(&outer.to_ne_bytes());
    tmpl.extend_from_slice(&[0; 2]);
    put_addr(&mut tmpl, policy.tunnel_src);
    tmpl.extend_from_slice(&policy.reqid.to_ne_bytes());
    tmpl.push(XFRM_MODE_TUNNEL);
    // share, optional (a required template: no SA means no packet), pad
    tmpl.extend_from_slice(&[0; 3]);
    tmpl.extend_from_slice(&[0xff; 12]);
    put_attr(&mut out, XFRMA_TMPL, &tmpl);
    put_attr(&mut out, XFRMA_IF_ID, &policy.if_id.to_ne_bytes());
    Ok(out)
}

/// `XFRM_MSG_DELPOLICY` payload for the policy from `src` to `dst` in `dir`
/// on interface `if_id`.
///
/// # Errors
/// When `src` and `dst` are of different families.
pub fn delete_policy(
    src: IpNetwork,
    dst: IpNetwork,
    dir: Direction,
    if_id: u32,
) -> Result<Vec<u8>, XfrmError> {
    let family = same_family("the policy's selector", src.ip(), dst.ip())?;
    let mut out = Vec::with_capacity(USERPOLICY_ID_LEN + 8);
    // xfrm_userpolicy_id { sel, index, dir }
    put_selector(&mut out, Some(src), Some(dst), family);
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(dir as u8);
    pad_to(&mut out, 0, USERPOLICY_ID_LEN);
    put_attr(&mut out, XFRMA_IF_ID, &if_id.to_ne_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests;
