//! Encoding, splitting and decoding, round-tripped through the bytes the
//! kernel would see. No WireGuard module needed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAttribute, WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer,
    WireguardPeerAttribute, WireguardPeerFlags, WireguardTimeSpec,
};
use wireseal_core::{DevicePlan, PeerConfig, PublicKey};

use super::*;
use crate::wireguard::MAX_MESSAGE_LEN;

const FAMILY_ID: u16 = 0x15;
const SECRET: [u8; 32] = [0xA5; 32];

fn key(n: u32) -> PublicKey {
    let mut bytes = [0x5a; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    PublicKey::from_bytes(bytes).unwrap()
}

fn peer(n: u32, ips: usize) -> PeerConfig {
    let b = n.to_be_bytes();
    let allowed_ips = (0..ips)
        .map(|i| -> IpNetwork {
            if i.is_multiple_of(2) && i < 512 {
                format!("10.{}.{}.{}/32", b[2], b[3], i / 2)
                    .parse()
                    .unwrap()
            } else {
                format!("fd00:{:x}:{:x}::{:x}/128", b[2], b[3], i)
                    .parse()
                    .unwrap()
            }
        })
        .collect();
    PeerConfig {
        endpoint: Some(SocketAddr::from(([192, 0, 2, b[3]], 51830))),
        allowed_ips,
        persistent_keepalive: n.is_multiple_of(2).then_some(25),
    }
}

/// Serialises as it would go on the wire.
fn wire(message: WireguardMessage) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(message);
    genl.set_resolved_family_id(FAMILY_ID);
    let mut netlink = NetlinkMessage::from(genl);
    netlink.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    netlink.finalize();
    let mut buffer = vec![0; netlink.buffer_len()];
    netlink.serialize(&mut buffer);
    buffer
}

fn parse(bytes: &[u8]) -> WireguardMessage {
    let message = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(bytes).unwrap();
    assert_eq!(message.header.message_type, FAMILY_ID);
    match message.payload {
        NetlinkPayload::InnerMessage(genl) => genl.payload,
        other => panic!("not a genl message: {other:?}"),
    }
}

/// Every peer part of every message, after a trip through bytes, checking the
/// size limit and the absence of `WGDEVICE_F_REPLACE_PEERS` on the way.
fn round_trip(messages: Vec<WireguardMessage>) -> Vec<(usize, WireguardPeer)> {
    let mut parts = Vec::new();
    for (index, message) in messages.into_iter().enumerate() {
        let bytes = wire(message.clone());
        assert!(
            bytes.len() <= MAX_MESSAGE_LEN,
            "message {index} is {} bytes",
            bytes.len()
        );
        let parsed = parse(&bytes);
        assert_eq!(parsed, message, "message {index} does not round-trip");
        assert_eq!(parsed.cmd, WireguardCmd::SetDevice);
        assert_eq!(
            parsed.attributes[0],
            WireguardAttribute::IfName("wireseal0".into())
        );
        for attribute in parsed.attributes {
            match attribute {
                WireguardAttribute::Flags(flags) => {
                    assert!(!flags.contains(WireguardDeviceFlags::ReplacePeers));
                }
                WireguardAttribute::Peers(peers) => {
                    parts.extend(peers.into_iter().map(|peer| (index, peer)));
                }
                _ => {}
            }
        }
    }
    parts
}

/// `plan`'s messages for one step, as the agent sends them.
fn encode(plan: &DevicePlan) -> Vec<WireguardMessage> {
    encode_set("wireseal0", plan, &SECRET, MAX_MESSAGE_LEN)
}

fn peer_key(peer: &WireguardPeer) -> [u8; 32] {
    peer.iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::PublicKey(k) => Some(*k),
            _ => None,
        })
        .unwrap()
}

fn peer_flags(peer: &WireguardPeer) -> WireguardPeerFlags {
    peer.iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or(WireguardPeerFlags::empty())
}

#[test]
fn five_thousand_peers_split_under_the_limit_each_exactly_once() {
    let upsert: BTreeMap<_, _> = (0..5_000).map(|n| (key(n), peer(n, 4))).collect();
    let plan = DevicePlan {
        set_private_key: Some(key(99_999)),
        listen_port: Some(51830),
        fwmark: Some(0x1000_0000),
        upsert_peers: upsert.clone(),
        remove_peers: BTreeSet::new(),
        remove_allowed_ips: BTreeSet::new(),
    };
    let messages = encode(&plan);
    assert!(
        messages.len() > 50,
        "5,000 peers cannot fit in {} messages",
        messages.len()
    );
    // Device settings only in the first message, private key included.
    assert!(
        messages[0]
            .attributes
            .contains(&WireguardAttribute::PrivateKey(SECRET))
    );
    assert!(
        messages[0]
            .attributes
            .contains(&WireguardAttribute::ListenPort(51830))
    );
    assert!(
        messages[0]
            .attributes
            .contains(&WireguardAttribute::Fwmark(0x1000_0000))
    );
    for message in &messages[1..] {
        assert!(!message.attributes.iter().any(|a| matches!(
            a,
            WireguardAttribute::PrivateKey(_) | WireguardAttribute::ListenPort(_)
        )));
    }
    let parts = round_trip(messages);
    assert_eq!(parts.len(), 5_000, "small peers are never split");
    let mut seen = BTreeMap::new();
    for (_, part) in &parts {
        assert_eq!(
            peer_flags(part),
            WireguardPeerFlags::empty(),
            "upserts add allowed IPs, never replace them"
        );
        assert!(
            seen.insert(peer_key(part), part.clone()).is_none(),
            "a peer appears twice"
        );
    }
    // Decoding the parts gives back exactly the planned peers.
    let decoded = decode_get(vec![WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::Peers(
            parts.into_iter().map(|(_, p)| p).collect(),
        )],
    }]);
    let observed = decoded.to_observation().device.unwrap();
    assert_eq!(observed.peers, upsert);
}

#[test]
fn a_peer_too_big_for_one_message_continues_with_update_only() {
    let big = peer(7, 1_000);
    let plan = DevicePlan {
        upsert_peers: [
            (key(1), peer(1, 2)),
            (key(7), big.clone()),
            (key(9), peer(9, 2)),
        ]
        .into(),
        ..DevicePlan::default()
    };
    let messages = encode(&plan);
    assert!(
        !messages
            .iter()
            .flat_map(|m| &m.attributes)
            .any(|a| matches!(a, WireguardAttribute::PrivateKey(_))),
        "no key unless the plan sets it"
    );
    let parts = round_trip(messages);
    let big_parts: Vec<_> = parts
        .iter()
        .filter(|(_, p)| peer_key(p) == *key(7).as_bytes())
        .collect();
    assert!(
        big_parts.len() >= 3,
        "1,000 allowed IPs need several messages"
    );
    assert_eq!(peer_flags(&big_parts[0].1), WireguardPeerFlags::empty());
    for (_, part) in &big_parts[1..] {
        assert_eq!(peer_flags(part), WireguardPeerFlags::UpdateOnly);
    }
    // One part per message, in consecutive messages.
    let indexes: Vec<usize> = big_parts.iter().map(|(i, _)| *i).collect();
    assert!(indexes.windows(2).all(|w| w[1] == w[0] + 1), "{indexes:?}");
    // The kernel's dump splits the same way; decoding merges the parts.
    let replies = parts
        .into_iter()
        .map(|(_, p)| WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![p])],
        })
        .collect();
    let device = decode_get(replies);
    assert_eq!(device.peers.len(), 3);
    assert_eq!(device.to_observation().device.unwrap().peers[&key(7)], big);
}

#[test]
fn removals_use_remove_me() {
    let plan = DevicePlan {
        remove_peers: (10..5_010).map(key).collect(),
        ..DevicePlan::default()
    };
    let parts = round_trip(encode(&plan));
    assert_eq!(parts.len(), 5_000);
    let keys: BTreeSet<[u8; 32]> = parts.iter().map(|(_, p)| peer_key(p)).collect();
    assert_eq!(keys.len(), 5_000);
    for (_, part) in &parts {
        assert_eq!(peer_flags(part), WireguardPeerFlags::RemoveMe);
        assert!(
            !part
                .iter()
                .any(|a| matches!(a, WireguardPeerAttribute::AllowedIps(_)))
        );
    }
}

#[test]
fn an_empty_plan_encodes_nothing_and_settings_alone_one_message() {
    assert!(encode(&DevicePlan::default()).is_empty());
    let plan = DevicePlan {
        fwmark: Some(0x1000_0000),
        ..DevicePlan::default()
    };
    let messages = encode(&plan);
    assert_eq!(messages.len(), 1);
    assert_eq!(
        parse(&wire(messages[0].clone())).attributes,
        vec![
            WireguardAttribute::IfName("wireseal0".into()),
            WireguardAttribute::Fwmark(0x1000_0000)
        ]
    );
    // A peer without keepalive turns it off explicitly; without allowed IPs
    // it sends no (empty) list.
    let plan = DevicePlan {
        upsert_peers: [(key(3), PeerConfig::default())].into(),
        ..DevicePlan::default()
    };
    let parts = round_trip(encode(&plan));
    assert!(
        parts[0]
            .1
            .contains(&WireguardPeerAttribute::PersistentKeepalive(0))
    );
    assert!(
        !parts[0]
            .1
            .iter()
            .any(|a| matches!(a, WireguardPeerAttribute::AllowedIps(_)))
    );
}

#[test]
fn allowed_ips_no_peer_keeps_go_through_the_sink_peer_after_upserts_and_removals() {
    // The sink must survive the core's key checks, or a leftover sink could
    // never be observed and removed.
    assert!(PublicKey::from_bytes(ALLOWED_IP_SINK).is_ok());
    let gone: BTreeSet<IpNetwork> = ["10.244.101.0/24", "fd00:244:101::/64"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let plan = DevicePlan {
        upsert_peers: [(key(1), peer(1, 1))].into(),
        remove_peers: [key(2)].into(),
        remove_allowed_ips: gone.clone(),
        ..DevicePlan::default()
    };
    let parts = round_trip(encode(&plan));
    let steps: Vec<([u8; 32], WireguardPeerFlags)> = parts
        .iter()
        .map(|(_, p)| (peer_key(p), peer_flags(p)))
        .collect();
    assert_eq!(
        steps,
        vec![
            (*key(1).as_bytes(), WireguardPeerFlags::empty()),
            (*key(2).as_bytes(), WireguardPeerFlags::RemoveMe),
            (ALLOWED_IP_SINK, WireguardPeerFlags::empty()),
            (ALLOWED_IP_SINK, WireguardPeerFlags::RemoveMe),
        ],
        "upserts, removals, then the sink claims the IPs and goes with them"
    );
    let decoded = decode_get(vec![WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::Peers(vec![parts[2].1.clone()])],
    }]);
    assert_eq!(decoded.peers[0].allowed_ips, gone);
}

#[test]
fn get_device_replies_decode_without_keeping_the_private_key() {
    let request = parse(&wire(encode_get("wireseal0")));
    assert_eq!(request.cmd, WireguardCmd::GetDevice);
    let public = *key(5).as_bytes();
    let reply = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![
            WireguardAttribute::IfIndex(4),
            WireguardAttribute::IfName("wireseal0".into()),
            WireguardAttribute::PrivateKey(SECRET),
            WireguardAttribute::PublicKey(public),
            WireguardAttribute::ListenPort(51830),
            WireguardAttribute::Fwmark(0x1000_0000),
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*key(6).as_bytes()),
                WireguardPeerAttribute::PresharedKey([0; 32]),
                WireguardPeerAttribute::Endpoint("[2001:db8::6]:51830".parse().unwrap()),
                WireguardPeerAttribute::PersistentKeepalive(0),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                    seconds: 1_700_000_000,
                    nano_seconds: 5,
                }),
                WireguardPeerAttribute::RxBytes(10),
                WireguardPeerAttribute::TxBytes(20),
                WireguardPeerAttribute::AllowedIps(vec![]),
            ])]),
        ],
    };
    let device = decode_get(vec![parse(&wire(reply))]);
    assert!(device.has_private_key);
    assert_eq!((device.ifindex, device.iface.as_str()), (4, "wireseal0"));
    assert_eq!(device.public_key, Some(public));
    let text = format!("{device:?}");
    assert!(
        !text.contains(&format!("{:?}", SECRET[0])) || !text.contains("165, 165, 165"),
        "private key bytes in Debug"
    );
    let peer = &device.peers[0];
    assert!(!peer.has_preshared_key);
    assert_eq!(peer.last_handshake, Some(Duration::new(1_700_000_000, 5)));
    assert_eq!((peer.rx_bytes, peer.tx_bytes), (10, 20));
    let observation = device.to_observation();
    let observed = observation.device.unwrap();
    assert_eq!(observed.public_key, Some(key(5)));
    assert_eq!(observed.listen_port, 51830);
    assert_eq!(observed.peers[&key(6)].persistent_keepalive, None);
    // The same statistics the UAPI decoder gives for the userspace datapath.
    let stats = observation.stats[&key(6)];
    assert_eq!((stats.rx_bytes, stats.tx_bytes), (10, 20));
    assert_eq!(
        stats.last_handshake,
        Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
    );
}

/// Found by fuzzing (fuzz/, target agent_uapi; the kernel's decoder had the
/// same arithmetic): a handshake time past what `Duration` or `SystemTime`
/// holds panicked; it is no handshake now.
#[test]
fn an_impossible_handshake_time_is_no_handshake() {
    for (seconds, nano_seconds) in [(i64::MAX, 2_000_000_000), (i64::MAX, 1_000_000_000)] {
        let reply = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*key(6).as_bytes()),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                    seconds,
                    nano_seconds,
                }),
            ])])],
        };
        let device = decode_get(vec![parse(&wire(reply))]);
        let stats = device.to_observation().stats[&key(6)];
        assert_eq!(stats.last_handshake, None, "{seconds}.{nano_seconds}");
    }
}
