//! Every message against what `ip xfrm` (iproute2 6.1) sends for the same
//! command, captured with `strace -e trace=sendmsg -xx` (the payload after
//! the netlink header). The commands are in each test.

use super::*;

fn golden(lines: &[&str]) -> Vec<u8> {
    let hex: String = lines.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn node(last: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, last])
}

fn cidr(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

const IF_ID: u32 = 0x51830;

/// ip xfrm state add src 198.18.0.1 dst 198.18.0.2 proto esp spi 0x44bed817
///   reqid 1 mode tunnel replay-window 128 flag esn
///   aead 'rfc4106(gcm(aes))' 0x1111…11 (36 bytes) 128 if_id 0x51830
const NEW_SA: &[&str] = &[
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000c612000200000000000000000000000044bed81732000000c6120001000000000000000000000000",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff00000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000100000002000100800000000000000070001200726663343130362867636d28",
    "616573292900000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000002001000080000000111111111111111111111111111111111111111111111111111111111111111111111111",
    "1c00170004000000000000000000000000000000000000008000000008001f0030180500",
];

/// ip xfrm policy add src 10.244.0.0/24 dst 10.244.1.0/24 dir out if_id 0x51830
///   tmpl src 198.18.0.1 dst 198.18.0.2 proto esp reqid 1 mode tunnel
const NEW_POLICY_OUT: &[&str] = &[
    "0af401000000000000000000000000000af4000000000000000000000000000000000000000000000200181800000000",
    "0000000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000010000000000000044000500c612000200000000000000000000000000000000",
    "3200000002000000c61200010000000000000000000000000100000001000000ffffffffffffffffffffffff08001f00",
    "30180500",
];

/// ip xfrm policy add src 10.244.1.0/24 dst 10.244.0.0/24 dir in if_id 0x51830
///   tmpl src 198.18.0.2 dst 198.18.0.1 proto esp reqid 1 mode tunnel
const NEW_POLICY_IN: &[&str] = &[
    "0af400000000000000000000000000000af4010000000000000000000000000000000000000000000200181800000000",
    "0000000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000000000000000000044000500c612000100000000000000000000000000000000",
    "3200000002000000c61200020000000000000000000000000100000001000000ffffffffffffffffffffffff08001f00",
    "30180500",
];

/// ip xfrm state delete src 198.18.0.1 dst 198.18.0.2 proto esp spi 0x44bed817
const DEL_SA: &[&str] =
    &["c612000200000000000000000000000044bed8170200320014000d00c6120001000000000000000000000000"];

/// ip xfrm policy delete src 10.244.0.0/24 dst 10.244.1.0/24 dir out if_id 0x51830
const DEL_POLICY_OUT: &[&str] = &[
    "0af401000000000000000000000000000af4000000000000000000000000000000000000000000000200181800000000",
    "0000000000000000000000000100000008001f0030180500",
];

fn sa() -> Sa {
    Sa {
        src: node(1),
        dst: node(2),
        spi: 0x44be_d817,
        reqid: 1,
        if_id: IF_ID,
        replay_window: 128,
        oseq: 0,
    }
}

#[test]
fn a_new_sa_is_what_ip_xfrm_sends() {
    let message = new_sa(&sa(), &[0x11; AEAD_KEY_LEN], false).unwrap();
    assert_eq!(message.kind, XFRM_MSG_NEWSA);
    assert_eq!(*message.payload, golden(NEW_SA));
    assert_eq!(
        new_sa(&sa(), &[0x11; AEAD_KEY_LEN], true).unwrap().kind,
        XFRM_MSG_UPDSA
    );
    // The key never prints.
    let debug = format!("{message:?}");
    assert!(
        !debug.contains("11, 17") && !debug.contains("0x11"),
        "{debug}"
    );
}

#[test]
fn an_sa_installed_again_starts_from_the_sequence_number_it_is_given() {
    let again = Sa {
        oseq: 0x0000_0002_8000_0005,
        ..sa()
    };
    let payload = new_sa(&again, &[0x11; AEAD_KEY_LEN], false)
        .unwrap()
        .payload;
    let fresh = new_sa(&sa(), &[0x11; AEAD_KEY_LEN], false).unwrap().payload;
    // Only the ESN attribute's oseq and oseq_hi differ from ip xfrm's bytes.
    let differ: Vec<usize> = (0..payload.len())
        .filter(|at| payload[*at] != fresh[*at])
        .collect();
    let attr = USERSA_INFO_LEN
        + payload[USERSA_INFO_LEN..]
            .windows(4)
            .position(|w| w == [28, 0, XFRMA_REPLAY_ESN_VAL as u8, 0])
            .expect("the ESN attribute");
    let value = attr + 4;
    assert_eq!(
        payload[value + 4..value + 8],
        0x8000_0005u32.to_ne_bytes(),
        "oseq"
    );
    assert_eq!(
        payload[value + 12..value + 16],
        2u32.to_ne_bytes(),
        "oseq_hi"
    );
    assert!(
        differ.iter().all(|at| (value + 4..value + 16).contains(at)),
        "{differ:?}"
    );
}

#[test]
fn policies_are_what_ip_xfrm_sends() {
    let out = Policy {
        src: cidr("10.244.0.0/24"),
        dst: cidr("10.244.1.0/24"),
        dir: Direction::Out,
        tunnel_src: node(1),
        tunnel_dst: node(2),
        reqid: 1,
        if_id: IF_ID,
        priority: 0,
    };
    assert_eq!(new_policy(&out).unwrap(), golden(NEW_POLICY_OUT));
    let inbound = Policy {
        src: cidr("10.244.1.0/24"),
        dst: cidr("10.244.0.0/24"),
        dir: Direction::In,
        tunnel_src: node(2),
        tunnel_dst: node(1),
        ..out
    };
    assert_eq!(new_policy(&inbound).unwrap(), golden(NEW_POLICY_IN));
}

#[test]
fn deletions_are_what_ip_xfrm_sends() {
    assert_eq!(
        delete_sa(node(1), node(2), 0x44be_d817).unwrap(),
        golden(DEL_SA)
    );
    assert_eq!(
        delete_policy(
            cidr("10.244.0.0/24"),
            cidr("10.244.1.0/24"),
            Direction::Out,
            IF_ID
        )
        .unwrap(),
        golden(DEL_POLICY_OUT)
    );
}

#[test]
fn mixed_families_are_refused_by_name() {
    let v6: IpAddr = "fd00::2".parse().unwrap();
    let err = new_sa(&Sa { dst: v6, ..sa() }, &[0; AEAD_KEY_LEN], false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the SA mixes address families: 198.18.0.1 and fd00::2"
    );
    assert!(delete_policy(cidr("10.0.0.0/8"), cidr("fd00::/64"), Direction::Fwd, 1).is_err());
}

/// ip xfrm state add src fd00::1 dst fd00::2 proto esp spi 0x81d6d278 reqid 7
///   mode tunnel replay-window 256 flag esn aead 'rfc4106(gcm(aes))'
///   0x2222…22 (36 bytes) 128 if_id 0x51830
const NEW_SA_V6: &[&str] = &[
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000fd00000000000000000000000000000281d6d27832000000fd000000000000000000000000000001",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff00000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000070000000a000100800000000000000070001200726663343130362867636d28",
    "616573292900000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000002001000080000000222222222222222222222222222222222222222222222222222222222222222222222222",
    "1c00170008000000000000000000000000000000000000000001000008001f0030180500",
];

/// ip xfrm policy add src fd10:244::/64 dst fd10:244:1::/64 dir fwd priority 100
///   if_id 0x51830 tmpl src fd00::2 dst fd00::1 proto esp reqid 7 mode tunnel
const NEW_POLICY_FWD_V6: &[&str] = &[
    "fd100244000100000000000000000000fd10024400000000000000000000000000000000000000000a00404000000000",
    "0000000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000006400000000000000020000000000000044000500fd00000000000000000000000000000100000000",
    "320000000a000000fd0000000000000000000000000000020700000001000000ffffffffffffffffffffffff08001f00",
    "30180500",
];

#[test]
fn ipv6_sas_and_policies_are_what_ip_xfrm_sends() {
    let v6 = |text: &str| -> IpAddr { text.parse().unwrap() };
    let sa = Sa {
        src: v6("fd00::1"),
        dst: v6("fd00::2"),
        spi: 0x81d6_d278,
        reqid: 7,
        if_id: IF_ID,
        replay_window: 256,
        oseq: 0,
    };
    let message = new_sa(&sa, &[0x22; AEAD_KEY_LEN], false).unwrap();
    assert_eq!(*message.payload, golden(NEW_SA_V6));
    let policy = Policy {
        src: cidr("fd10:244::/64"),
        dst: cidr("fd10:244:1::/64"),
        dir: Direction::Fwd,
        tunnel_src: v6("fd00::2"),
        tunnel_dst: v6("fd00::1"),
        reqid: 7,
        if_id: IF_ID,
        priority: 100,
    };
    assert_eq!(new_policy(&policy).unwrap(), golden(NEW_POLICY_FWD_V6));
}

#[test]
fn what_is_installed_reads_back_the_same() {
    // A dump answers with the same structures a NEWSA/NEWPOLICY carries.
    let message = new_sa(&sa(), &[0x11; AEAD_KEY_LEN], false).unwrap();
    let read = parse_sa(&message.payload).unwrap();
    assert_eq!(
        read,
        SaInfo {
            src: node(1),
            dst: node(2),
            spi: 0x44be_d817,
            proto: 50,
            reqid: 1,
            if_id: Some(IF_ID),
            bytes: 0,
            packets: 0,
            replay_errors: 0,
            integrity_errors: 0,
            oseq: Some(0),
        }
    );
    let again = Sa {
        oseq: 0x0000_0002_8000_0005,
        ..sa()
    };
    let message = new_sa(&again, &[0x11; AEAD_KEY_LEN], false).unwrap();
    assert_eq!(
        parse_sa(&message.payload).unwrap().oseq,
        Some(0x0000_0002_8000_0005)
    );
    for golden_policy in [NEW_POLICY_OUT, NEW_POLICY_FWD_V6] {
        let read = parse_policy(&golden(golden_policy)).unwrap();
        assert_eq!(read.if_id, Some(IF_ID));
        assert!(read.template.is_some());
    }
    let read = parse_policy(&golden(NEW_POLICY_FWD_V6)).unwrap();
    assert_eq!(
        read,
        PolicyInfo {
            src: cidr("fd10:244::/64"),
            dst: cidr("fd10:244:1::/64"),
            dir: Some(Direction::Fwd),
            priority: 100,
            if_id: Some(IF_ID),
            template: Some(("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap(), 7)),
        }
    );
}

#[test]
fn short_or_garbled_answers_are_errors_not_panics() {
    let policy = golden(NEW_POLICY_OUT);
    for len in [0, 10, USERPOLICY_INFO_LEN - 1] {
        assert!(parse_policy(&policy[..len]).is_err(), "{len}");
    }
    // An attribute claiming more bytes than there are.
    let mut broken = policy.clone();
    broken[USERPOLICY_INFO_LEN] = 0xff;
    assert!(parse_policy(&broken).is_err());
    // An unknown family.
    let mut alien = policy;
    alien[40] = 99;
    assert!(matches!(parse_policy(&alien), Err(XfrmError::Family(99))));
    let sa = new_sa(&sa(), &[0; AEAD_KEY_LEN], false).unwrap();
    assert!(parse_sa(&sa.payload[..USERSA_INFO_LEN - 1]).is_err());
}
