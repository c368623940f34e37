//! The few `nf_tables` netlink messages the leak counter needs, encoded and
//! decoded by hand (see the module above for why): a batch that creates
//! wireseal's table, its two sets and its counting chain; one that replaces
//! the sets' elements; one that deletes the table; and the rule dump the
//! counters are read from.
//!
//! Numbers are from `linux/netfilter/nf_tables.h` and `nfnetlink.h`; every
//! numeric `NFTA_*` value is big-endian, as `nf_tables` wants.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLA_F_NESTED, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NlaBuffer,
    NlasIterator,
};
use wireseal_core::Family;

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 17;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFPROTO_UNSPEC: u8 = 0;
pub(crate) const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_ACCEPT: u32 = 1;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// `libnftnl`'s user-data TLV for a rule comment, which `nft list` shows.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFT_REG_1: u32 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFT_SET_INTERVAL: u32 = 0x4;
/// `nft`'s data type numbers, so `nft list` prints the keys as addresses.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

const IFNAMSIZ: usize = 16;
const HEADER_LEN: usize = 16;

/// wireseal's table (family `inet`), chain and sets.
/// wireseal's `nftables` table (family `inet`).
pub const TABLE: &str = "wireseal";
/// The table's counting chain.
pub const CHAIN: &str = "leaks";
/// The chain's priority on the postrouting hook. Any works for counting by
/// destination; after source NAT (100) so the rule sees what really leaves.
const PRIORITY: i32 = 300;

pub(crate) fn set_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "remote4",
        Family::V6 => "remote6",
    }
}

/// The comment on a family's counting rule. It names the tunnel, so a rule
/// made for another interface name is recognised as stale and replaced.
pub(crate) fn rule_comment(family: Family, tunnel: &str) -> String {
    let name = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    format!(
        "wireseal leaks {name}: daddr @{} oifname != {tunnel}, lo",
        set_name(family)
    )
}

fn set_id(family: Family) -> u32 {
    match family {
        Family::V4 => 1,
        Family::V6 => 2,
    }
}

/// A netlink datagram being built: messages one after the other.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) bytes: Vec<u8>,
    /// Sequence numbers of the messages that ask for an acknowledgement.
    pub(crate) acked: Vec<u32>,
    next_seq: u32,
}

impl Batch {
    pub(crate) fn new(first_seq: u32) -> Self {
        Self {
            bytes: Vec::new(),
            acked: Vec::new(),
            next_seq: first_seq,
        }
    }

    /// The sequence number the next batch should start from.
    pub(crate) fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Starts a message; the closure writes its attributes.
    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: impl FnOnce(&mut Vec<u8>),
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]); // length, patched below
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg
        self.bytes.push(family);
        self.bytes.push(0); // NFNETLINK_V0
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut self.bytes);
        patch_len(&mut self.bytes, start);
        if flags & NLM_F_ACK != 0 {
            self.acked.push(seq);
        }
        seq
    }

    fn nft(&mut self, msg: u16, flags: u16, family: u8, attrs: impl FnOnce(&mut Vec<u8>)) -> u32 {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family,
            0,
            attrs,
        )
    }

    /// Wraps `body` in a transaction: the kernel applies all of it or none.
    pub(crate) fn transaction(first_seq: u32, body: impl FnOnce(&mut Self)) -> Self {
        let mut batch = Self::new(first_seq);
        batch.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        body(&mut batch);
        batch.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        batch
    }

    /// The table made afresh: created if missing, deleted (with whatever was
    /// in it) and created again, in one transaction.
    pub(crate) fn recreate_table(&mut self) {
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET, table_attrs);
        self.nft(NFT_MSG_DELTABLE, 0, NFPROTO_INET, table_attrs);
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET, table_attrs);
    }

    /// Deletes the table; `ENOENT` means it was not there.
    pub(crate) fn delete_table(&mut self) {
        self.nft(NFT_MSG_DELTABLE, 0, NFPROTO_INET, table_attrs);
    }

    /// The counting chain: a base chain on postrouting whose policy is
    /// accept, so it never changes a packet's fate.
    pub(crate) fn chain(&mut self) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, NFPROTO_INET, |b| {
            put_str(b, NFTA_CHAIN_TABLE, TABLE);
            put_str(b, NFTA_CHAIN_NAME, CHAIN);
            nest(b, NFTA_CHAIN_HOOK, |b| {
                put_u32(b, NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING);
                put(b, NFTA_HOOK_PRIORITY, &PRIORITY.to_be_bytes());
            });
            put_u32(b, NFTA_CHAIN_POLICY, NF_ACCEPT);
            put_str(b, NFTA_CHAIN_TYPE, "filter");
        });
    }

    /// A family's set of remote pod CIDRs (an interval set of addresses).
    pub(crate) fn set(&mut self, family: Family) {
        let (key_type, key_len) = match family {
            Family::V4 => (TYPE_IPADDR, 4),
            Family::V6 => (TYPE_IP6ADDR, 16),
        };
        self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, NFPROTO_INET, |b| {
            put_str(b, NFTA_SET_TABLE, TABLE);
            put_str(b, NFTA_SET_NAME, set_name(family));
            put_u32(b, NFTA_SET_FLAGS, NFT_SET_INTERVAL);
            put_u32(b, NFTA_SET_KEY_TYPE, key_type);
            put_u32(b, NFTA_SET_KEY_LEN, key_len);
            put_u32(b, NFTA_SET_ID, set_id(family));
        });
    }

    /// A family's counting rule: packets of that family whose destination is
    /// in the family's set and whose output interface is neither the tunnel
    /// nor loopback are counted. The rule has no verdict.
    pub(crate) fn rule(&mut self, family: Family, tunnel: &str) {
        let (nfproto, offset, len) = match family {
            Family::V4 => (NFPROTO_IPV4, 16, 4),
            Family::V6 => (NFPROTO_IPV6, 24, 16),
        };
        let comment = rule_comment(family, tunnel);
        self.nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            NFPROTO_INET,
            |b| {
                put_str(b, NFTA_RULE_TABLE, TABLE);
                put_str(b, NFTA_RULE_CHAIN, CHAIN);
                nest(b, NFTA_RULE_EXPRESSIONS, |b| {
                    for name in ["lo", tunnel] {
                        meta(b, NFT_META_OIFNAME);
                        cmp(b, NFT_CMP_NEQ, &ifname(name));
                    }
                    meta(b, NFT_META_NFPROTO);
                    cmp(b, NFT_CMP_EQ, &[nfproto]);
                    expr(b, "payload", |b| {
                        put_u32(b, NFTA_PAYLOAD_DREG, NFT_REG_1);
                        put_u32(b, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
                        put_u32(b, NFTA_PAYLOAD_OFFSET, offset);
                        put_u32(b, NFTA_PAYLOAD_LEN, len);
                    });
                    expr(b, "lookup", |b| {
                        put_str(b, NFTA_LOOKUP_SET, set_name(family));
                        put_u32(b, NFTA_LOOKUP_SREG, NFT_REG_1);
                        put_u32(b, NFTA_LOOKUP_SET_ID, set_id(family));
                    });
                    expr(b, "counter", |b| {
                        put(b, NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                        put(b, NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
                    });
                });
                let mut udata = vec![NFTNL_UDATA_RULE_COMMENT];
                // A comment fits in the one-byte length: it is ours and short.
                udata.push(u8::try_from(comment.len() + 1).unwrap_or(u8::MAX));
                udata.extend_from_slice(comment.as_bytes());
                udata.push(0);
                put(b, NFTA_RULE_USERDATA, &udata);
            },
        );
    }

    /// Empties a family's set (a element deletion without elements).
    pub(crate) fn flush_elements(&mut self, family: Family) {
        self.nft(NFT_MSG_DELSETELEM, 0, NFPROTO_INET, |b| {
            put_str(b, NFTA_SET_ELEM_LIST_TABLE, TABLE);
            put_str(b, NFTA_SET_ELEM_LIST_SET, set_name(family));
        });
    }

    /// Adds intervals to a family's set.
    pub(crate) fn add_elements(&mut self, family: Family, ranges: &[Interval]) {
        if ranges.is_empty() {
            // The kernel refuses an element message without elements.
            return;
        }
        self.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE, NFPROTO_INET, |b| {
            put_str(b, NFTA_SET_ELEM_LIST_TABLE, TABLE);
            put_str(b, NFTA_SET_ELEM_LIST_SET, set_name(family));
            nest(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                for range in ranges {
                    element(b, &range.start, false);
                    if let Some(end) = &range.end {
                        element(b, end, true);
                    }
                }
            });
        });
    }

    /// The dump of the counting chain's rules (a single message).
    pub(crate) fn dump_rules(seq: u32) -> Self {
        let mut batch = Self::new(seq);
        batch.message(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
            NLM_F_REQUEST | NLM_F_DUMP,
            NFPROTO_INET,
            0,
            |b| {
                put_str(b, NFTA_RULE_TABLE, TABLE);
                put_str(b, NFTA_RULE_CHAIN, CHAIN);
            },
        );
        batch
    }
}

/// One interval of a set: `[start, end)` as key bytes; no end when the
/// interval runs to the top of the address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interval {
    pub(crate) start: Vec<u8>,
    pub(crate) end: Option<Vec<u8>>,
}

/// The family's CIDRs as sorted, merged intervals: the kernel's interval
/// sets refuse overlaps, and two nodes' pod CIDRs may overlap or touch.
pub(crate) fn intervals(family: Family, cidrs: &[IpNetwork]) -> Vec<Interval> {
    let bits: u32 = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let mut ranges: Vec<(u128, Option<u128>)> = cidrs
        .iter()
        .filter(|cidr| Family::of_ip(cidr.ip()) == family)
        .map(|cidr| {
            let start = to_u128(cidr.network());
            let size_bits = bits - u32::from(cidr.prefix());
            let end = 1u128
                .checked_shl(size_bits)
                .and_then(|size| start.checked_add(size))
                .filter(|end| bits == 128 || *end < (1u128 << bits));
            (start, end)
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u128, Option<u128>)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if last_end.is_none_or(|last| start <= last) => {
                *last_end = match (*last_end, end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            _ => merged.push((start, end)),
        }
    }
    let key = |value: u128| -> Vec<u8> {
        let bytes = value.to_be_bytes();
        match family {
            Family::V4 => bytes[12..].to_vec(),
            Family::V6 => bytes.to_vec(),
        }
    };
    merged
        .into_iter()
        .map(|(start, end)| Interval {
            start: key(start),
            end: end.map(key),
        })
        .collect()
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn table_attrs(b: &mut Vec<u8>) {
    put_str(b, NFTA_TABLE_NAME, TABLE);
}

fn element(b: &mut Vec<u8>, key: &[u8], interval_end: bool) {
    nest(b, NFTA_LIST_ELEM, |b| {
        nest(b, NFTA_SET_ELEM_KEY, |b| put(b, NFTA_DATA_VALUE, key));
        if interval_end {
            put_u32(b, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
    });
}

fn expr(b: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nest(b, NFTA_LIST_ELEM, |b| {
        put_str(b, NFTA_EXPR_NAME, name);
        nest(b, NFTA_EXPR_DATA, data);
    });
}

fn meta(b: &mut Vec<u8>, key: u32) {
    expr(b, "meta", |b| {
        put_u32(b, NFTA_META_KEY, key);
        put_u32(b, NFTA_META_DREG, NFT_REG_1);
    });
}

fn cmp(b: &mut Vec<u8>, op: u32, value: &[u8]) {
    expr(b, "cmp", |b| {
        put_u32(b, NFTA_CMP_SREG, NFT_REG_1);
        put_u32(b, NFTA_CMP_OP, op);
        nest(b, NFTA_CMP_DATA, |b| put(b, NFTA_DATA_VALUE, value));
    });
}

/// An interface name as `meta oifname` loads it: NUL-padded to `IFNAMSIZ`.
fn ifname(name: &str) -> [u8; IFNAMSIZ] {
    let mut out = [0; IFNAMSIZ];
    let len = name.len().min(IFNAMSIZ - 1);
    out[..len].copy_from_slice(&name.as_bytes()[..len]);
    out
}

fn put(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    pad(b);
}

fn put_u32(b: &mut Vec<u8>, kind: u16, value: u32) {
    put(b, kind, &value.to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, kind: u16, value: &str) {
    let mut bytes = value.as_bytes().to_vec();
    bytes.push(0);
    put(b, kind, &bytes);
}

fn nest(b: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    inner(b);
    let len = u16::try_from(b.len() - start).unwrap_or(u16::MAX);
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn pad(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

fn patch_len(b: &mut [u8], start: usize) {
    let len = u32::try_from(b.len() - start).unwrap_or(u32::MAX);
    b[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One netlink message of a reply datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply<'a> {
    pub(crate) kind: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram into its messages; a truncated tail is dropped.
pub(crate) fn replies(datagram: &[u8]) -> Vec<Reply<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= datagram.len() {
        let field = |range: std::ops::Range<usize>| &datagram[at + range.start..at + range.end];
        let len = u32::from_ne_bytes(field(0..4).try_into().unwrap_or_default()) as usize;
        if len < HEADER_LEN || at + len > datagram.len() {
            break;
        }
        out.push(Reply {
            kind: u16::from_ne_bytes(field(4..6).try_into().unwrap_or_default()),
            seq: u32::from_ne_bytes(field(8..12).try_into().unwrap_or_default()),
            payload: &datagram[at + HEADER_LEN..at + len],
        });
        at += len.next_multiple_of(4);
    }
    out
}

/// The error code of an `NLMSG_ERROR` reply: 0 for an acknowledgement,
/// else a positive errno.
pub(crate) fn error_code(payload: &[u8]) -> Option<i32> {
    let raw = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    Some(raw.saturating_abs())
}

/// What the dump says about one rule of the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DumpedRule {
    pub(crate) comment: Option<String>,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

/// Decodes a `NFT_MSG_NEWRULE` reply's payload (after its `nfgenmsg`).
pub(crate) fn parse_rule(payload: &[u8]) -> Option<DumpedRule> {
    let mut rule = DumpedRule::default();
    for attr in NlasIterator::new(payload.get(4..)?) {
        let attr = attr.ok()?;
        match attr.kind() {
            NFTA_RULE_USERDATA => rule.comment = comment(attr.value()),
            NFTA_RULE_EXPRESSIONS => {
                for elem in NlasIterator::new(attr.value()) {
                    if let Some((packets, bytes)) = counter(&elem.ok()?) {
                        rule.packets = packets;
                        rule.bytes = bytes;
                    }
                }
            }
            _ => {}
        }
    }
    Some(rule)
}

fn counter(elem: &NlaBuffer<&[u8]>) -> Option<(u64, u64)> {
    let mut name = None;
    let mut data = None;
    for attr in NlasIterator::new(elem.value()) {
        let attr = attr.ok()?;
        match attr.kind() {
            NFTA_EXPR_NAME => name = Some(value_of(attr)),
            NFTA_EXPR_DATA => data = Some(value_of(attr)),
            _ => {}
        }
    }
    if name? != b"counter\0" {
        return None;
    }
    let (mut packets, mut bytes) = (0, 0);
    for attr in NlasIterator::new(data?) {
        let attr = attr.ok()?;
        let value = u64::from_be_bytes(attr.value().get(..8)?.try_into().ok()?);
        match attr.kind() {
            NFTA_COUNTER_PACKETS => packets = value,
            NFTA_COUNTER_BYTES => bytes = value,
            _ => {}
        }
    }
    Some((packets, bytes))
}

/// An attribute's value, borrowed from the datagram rather than the buffer view.
fn value_of(attr: NlaBuffer<&[u8]>) -> &[u8] {
    let len = usize::from(attr.length());
    attr.into_inner().get(4..len).unwrap_or_default()
}

/// The comment TLV of a rule's user data.
fn comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail.get(..len)?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        rest = &tail[len..];
    }
    None
}

#[cfg(test)]
mod tests;
