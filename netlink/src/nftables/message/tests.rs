use std::str::FromStr;

use super::*;

/// Attributes as (type, value).
type Attrs = Vec<(u16, Vec<u8>)>;

fn cidrs(list: &[&str]) -> Vec<IpNetwork> {
    list.iter()
        .map(|c| IpNetwork::from_str(c).unwrap())
        .collect()
}

/// Every message of a datagram: (type, flags, nfgenmsg family, attributes).
fn messages(bytes: &[u8]) -> Vec<(u16, u16, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        assert!(
            len >= 20 && at + len <= bytes.len(),
            "bad length {len} at {at}"
        );
        assert_eq!(len % 4, 0, "messages stay aligned");
        let kind = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
        let flags = u16::from_ne_bytes(bytes[at + 6..at + 8].try_into().unwrap());
        out.push((
            kind,
            flags,
            bytes[at + 16],
            bytes[at + 20..at + len].to_vec(),
        ));
        at += len;
    }
    out
}

fn attrs(bytes: &[u8]) -> Attrs {
    NlasIterator::new(bytes)
        .map(|nla| {
            let nla = nla.unwrap();
            (nla.kind(), nla.value().to_vec())
        })
        .collect()
}

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

#[test]
fn a_new_table_message_is_byte_for_byte_what_nf_tables_expects() {
    let mut batch = Batch::new(7);
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET, table_attrs);
    let mut expected = Vec::new();
    expected.extend_from_slice(&36u32.to_ne_bytes()); // 16 header + 4 nfgenmsg + 16 attribute
    expected.extend_from_slice(&0x0a00u16.to_ne_bytes()); // NFNL_SUBSYS_NFTABLES << 8 | NEWTABLE
    expected.extend_from_slice(&(0x0001u16 | 0x0004 | 0x0400).to_ne_bytes()); // REQUEST|ACK|CREATE
    expected.extend_from_slice(&7u32.to_ne_bytes());
    expected.extend_from_slice(&0u32.to_ne_bytes());
    expected.extend_from_slice(&[1, 0, 0, 0]); // NFPROTO_INET, NFNETLINK_V0, res_id 0
    expected.extend_from_slice(&13u16.to_ne_bytes()); // 4 + "wireseal\0"
    expected.extend_from_slice(&1u16.to_ne_bytes()); // NFTA_TABLE_NAME
    expected.extend_from_slice(b"wireseal\0\0\0\0"); // padded to 4
    assert_eq!(batch.bytes, expected);
    assert_eq!(batch.acked, vec![7]);
}

#[test]
fn a_transaction_is_framed_by_batch_begin_and_end_for_nf_tables() {
    let batch = Batch::transaction(1, |b| {
        b.recreate_table();
        b.set(Family::V4);
        b.set(Family::V6);
        b.chain();
        b.rule(Family::V4, "wireseal0");
        b.rule(Family::V6, "wireseal0");
    });
    let msgs = messages(&batch.bytes);
    let kinds: Vec<u16> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(
        kinds,
        vec![
            NFNL_MSG_BATCH_BEGIN,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_DELTABLE),
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWSET),
            nft(NFT_MSG_NEWSET),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            NFNL_MSG_BATCH_END,
        ]
    );
    // The frame messages name the subsystem in res_id (big-endian) and are
    // not acknowledged; every inner one is.
    for frame in [&msgs[0], &msgs[9]] {
        assert_eq!(frame.1, NLM_F_REQUEST);
        let res_id = u16::from_be_bytes([batch.bytes[18], batch.bytes[19]]);
        assert_eq!(res_id, NFNL_SUBSYS_NFTABLES);
    }
    assert_eq!(batch.acked, (2..=9).collect::<Vec<u32>>());
    assert_eq!(batch.next_seq(), 11);
    // Rules are appended; the chain hooks postrouting with policy accept.
    assert_ne!(msgs[7].1 & NLM_F_APPEND, 0);
    let chain = attrs(&msgs[6].3);
    assert!(chain.contains(&(NFTA_CHAIN_POLICY, NF_ACCEPT.to_be_bytes().to_vec())));
    assert!(chain.contains(&(NFTA_CHAIN_TYPE, b"filter\0".to_vec())));
    let hook = chain.iter().find(|(k, _)| *k == NFTA_CHAIN_HOOK).unwrap();
    assert_eq!(
        attrs(&hook.1),
        vec![
            (
                NFTA_HOOK_HOOKNUM,
                NF_INET_POST_ROUTING.to_be_bytes().to_vec()
            ),
            (NFTA_HOOK_PRIORITY, 300i32.to_be_bytes().to_vec()),
        ]
    );
    // The v6 set: an interval set of 16-byte addresses.
    let set = attrs(&msgs[5].3);
    assert!(set.contains(&(NFTA_SET_NAME, b"remote6\0".to_vec())));
    assert!(set.contains(&(NFTA_SET_FLAGS, NFT_SET_INTERVAL.to_be_bytes().to_vec())));
    assert!(set.contains(&(NFTA_SET_KEY_LEN, 16u32.to_be_bytes().to_vec())));
}

/// The expressions of a rule, as (name, attributes of its data).
fn expressions(rule: &[u8]) -> Vec<(String, Attrs)> {
    let exprs = attrs(rule)
        .into_iter()
        .find(|(k, _)| *k == NFTA_RULE_EXPRESSIONS)
        .unwrap()
        .1;
    attrs(&exprs)
        .into_iter()
        .map(|(kind, elem)| {
            assert_eq!(kind, NFTA_LIST_ELEM);
            let parts = attrs(&elem);
            let name = String::from_utf8(parts[0].1.clone()).unwrap();
            (name.trim_end_matches('\0').to_owned(), attrs(&parts[1].1))
        })
        .collect()
}

#[test]
fn the_rule_counts_family_packets_to_the_set_not_leaving_through_the_tunnel_or_lo() {
    let mut batch = Batch::new(1);
    batch.rule(Family::V6, "wg-x");
    let msgs = messages(&batch.bytes);
    let exprs = expressions(&msgs[0].3);
    let names: Vec<&str> = exprs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "meta", "cmp", "meta", "cmp", "meta", "cmp", "payload", "lookup", "counter"
        ]
    );
    let value = |data: &[(u16, Vec<u8>)]| {
        let nested = &data.iter().find(|(k, _)| *k == NFTA_CMP_DATA).unwrap().1;
        attrs(nested)[0].1.clone()
    };
    let op = |data: &[(u16, Vec<u8>)]| {
        data.iter()
            .find(|(k, _)| *k == NFTA_CMP_OP)
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(value(&exprs[1].1), ifname("lo").to_vec());
    assert_eq!(op(&exprs[1].1), NFT_CMP_NEQ.to_be_bytes().to_vec());
    assert_eq!(&value(&exprs[3].1)[..5], b"wg-x\0");
    assert_eq!(value(&exprs[3].1).len(), IFNAMSIZ);
    assert_eq!(value(&exprs[5].1), vec![NFPROTO_IPV6]);
    assert_eq!(op(&exprs[5].1), NFT_CMP_EQ.to_be_bytes().to_vec());
    // The IPv6 destination: 16 bytes at offset 24 of the network header.
    assert!(
        exprs[6]
            .1
            .contains(&(NFTA_PAYLOAD_OFFSET, 24u32.to_be_bytes().to_vec()))
    );
    assert!(
        exprs[6]
            .1
            .contains(&(NFTA_PAYLOAD_LEN, 16u32.to_be_bytes().to_vec()))
    );
    assert!(
        exprs[7]
            .1
            .contains(&(NFTA_LOOKUP_SET, b"remote6\0".to_vec()))
    );
    // No verdict anywhere: the rule only counts.
    assert!(!names.contains(&"immediate"));

    // The dump's decoder finds the comment and the counter in the same encoding.
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    payload.extend_from_slice(&msgs[0].3);
    let rule = parse_rule(&payload).unwrap();
    assert_eq!(
        rule.comment.as_deref(),
        Some(rule_comment(Family::V6, "wg-x").as_str())
    );
    assert_eq!((rule.packets, rule.bytes), (0, 0));
}

#[test]
fn counters_are_read_from_a_rule_dump_reply() {
    let mut reply = Vec::new();
    nest(&mut reply, NFTA_RULE_EXPRESSIONS, |b| {
        expr(b, "counter", |b| {
            put(b, NFTA_COUNTER_BYTES, &8400u64.to_be_bytes());
            put(b, NFTA_COUNTER_PACKETS, &100u64.to_be_bytes());
        });
    });
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    payload.extend_from_slice(&reply);
    let rule = parse_rule(&payload).unwrap();
    assert_eq!((rule.packets, rule.bytes, rule.comment), (100, 8400, None));
}

#[test]
fn cidrs_become_merged_intervals_of_their_family() {
    let v4 = intervals(
        Family::V4,
        &cidrs(&[
            "10.244.2.0/24",
            "10.244.1.0/24",
            "10.244.1.128/25",
            "fd00::/64",
            "10.0.0.0/8",
        ]),
    );
    // 10.0.0.0/8 holds the others: one interval.
    assert_eq!(
        v4,
        vec![Interval {
            start: vec![10, 0, 0, 0],
            end: Some(vec![11, 0, 0, 0]),
        }]
    );
    let touching = intervals(
        Family::V4,
        &cidrs(&["10.244.1.0/24", "10.244.2.0/24", "10.244.4.0/24"]),
    );
    assert_eq!(
        touching,
        vec![
            Interval {
                start: vec![10, 244, 1, 0],
                end: Some(vec![10, 244, 3, 0])
            },
            Interval {
                start: vec![10, 244, 4, 0],
                end: Some(vec![10, 244, 5, 0])
            },
        ]
    );
    // The top of the address space has no end element.
    let top = intervals(Family::V4, &cidrs(&["255.255.255.0/24", "0.0.0.0/0"]));
    assert_eq!(
        top,
        vec![Interval {
            start: vec![0; 4],
            end: None
        }]
    );
    let v6 = intervals(Family::V6, &cidrs(&["fd00:0:0:1::/64", "10.0.0.0/8"]));
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].start.len(), 16);
    assert_eq!(v6[0].end.as_ref().unwrap()[7], 2);
    assert!(intervals(Family::V6, &cidrs(&["::/0"]))[0].end.is_none());
}

#[test]
fn replacing_elements_flushes_then_adds_start_and_end_elements() {
    let mut batch = Batch::new(1);
    for family in [Family::V4, Family::V6] {
        batch.flush_elements(family);
        batch.add_elements(family, &intervals(family, &cidrs(&["10.244.1.0/24"])));
    }
    let msgs = messages(&batch.bytes);
    // v4: flush + add; v6 has no CIDR: flush only.
    let kinds: Vec<u16> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(
        kinds,
        [
            nft(NFT_MSG_DELSETELEM),
            nft(NFT_MSG_NEWSETELEM),
            nft(NFT_MSG_DELSETELEM)
        ]
    );
    assert!(
        !attrs(&msgs[0].3)
            .iter()
            .any(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
    );
    let list = attrs(&msgs[1].3);
    let elements = &list
        .iter()
        .find(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
        .unwrap()
        .1;
    let elements: Vec<Vec<(u16, Vec<u8>)>> = attrs(elements)
        .into_iter()
        .map(|(_, e)| attrs(&e))
        .collect();
    assert_eq!(elements.len(), 2);
    let key = |e: &[(u16, Vec<u8>)]| attrs(&e[0].1)[0].1.clone();
    assert_eq!(key(&elements[0]), vec![10, 244, 1, 0]);
    assert_eq!(elements[0].len(), 1, "a start element has no flags");
    assert_eq!(key(&elements[1]), vec![10, 244, 2, 0]);
    assert_eq!(
        elements[1][1],
        (
            NFTA_SET_ELEM_FLAGS,
            NFT_SET_ELEM_INTERVAL_END.to_be_bytes().to_vec()
        )
    );
}

#[test]
fn replies_split_a_datagram_and_read_error_codes() {
    let mut datagram = Vec::new();
    for (seq, code) in [(3u32, 0i32), (4, -2)] {
        datagram.extend_from_slice(&36u32.to_ne_bytes());
        datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&0u16.to_ne_bytes());
        datagram.extend_from_slice(&seq.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&code.to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]); // the request's header
    }
    datagram.extend_from_slice(&[1, 2, 3]); // truncated tail: ignored
    let replies = replies(&datagram);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1].seq, 4);
    assert_eq!(error_code(replies[0].payload), Some(0));
    assert_eq!(error_code(replies[1].payload), Some(2));
}
