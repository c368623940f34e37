//! The hostile-input table for the annotation codec: every case must give the
//! expected typed error, and none may panic.

use super::*;

const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

/// What a case expects: a predicate over the error kind, with a name for failures.
type Expect = fn(&InputErrorKind) -> bool;

fn key_cases() -> Vec<(&'static str, String, Expect)> {
    vec![
        ("empty key", String::new(), |e| {
            matches!(e, InputErrorKind::Empty)
        }),
        ("whitespace key", "   ".into(), |e| {
            matches!(e, InputErrorKind::Empty)
        }),
        ("short base64", "AAAA".into(), |e| {
            matches!(e, InputErrorKind::Key(KeyError::Length(3)))
        }),
        ("33-byte key", format!("{}AAAAAA==", &KEY[..43]), |e| {
            matches!(
                e,
                InputErrorKind::Key(KeyError::Length(_) | KeyError::Base64)
            )
        }),
        ("bad alphabet", KEY.replace('/', "!"), |e| {
            matches!(e, InputErrorKind::Key(KeyError::Base64))
        }),
        ("url-safe alphabet", KEY.replace('/', "_"), |e| {
            matches!(e, InputErrorKind::Key(KeyError::Base64))
        }),
        ("missing padding", KEY.trim_end_matches('=').into(), |e| {
            matches!(e, InputErrorKind::Key(_))
        }),
        (
            "all-zero key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            |e| matches!(e, InputErrorKind::Key(KeyError::AllZero)),
        ),
        (
            "low-order key (one)",
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            |e| matches!(e, InputErrorKind::Key(KeyError::LowOrder)),
        ),
        (
            "low-order key (order 8)",
            "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=".into(),
            |e| matches!(e, InputErrorKind::Key(KeyError::LowOrder)),
        ),
        (
            "low-order key (p-1)",
            "7P///////////////////////////////////////38=".into(),
            |e| matches!(e, InputErrorKind::Key(KeyError::LowOrder)),
        ),
        (
            "newline inside",
            format!("{}\n{}", &KEY[..20], &KEY[20..]),
            |e| {
                matches!(
                    e,
                    InputErrorKind::BadCharacter {
                        found: '\n',
                        position: 20
                    }
                )
            },
        ),
        ("NUL byte", format!("{KEY}\0"), |e| {
            matches!(e, InputErrorKind::BadCharacter { found: '\0', .. })
        }),
        ("cyrillic look-alike", KEY.replacen('C', "С", 1), |e| {
            matches!(e, InputErrorKind::BadCharacter { found: 'С', .. })
        }),
        ("emoji", format!("🔑{KEY}"), |e| {
            matches!(e, InputErrorKind::BadCharacter { position: 0, .. })
        }),
        ("1 MiB key", "A".repeat(1 << 20), |e| {
            matches!(
                e,
                InputErrorKind::TooLong {
                    len: 1_048_576,
                    max: MAX_KEY_LEN
                }
            )
        }),
        ("1 MiB of unicode", "é".repeat(1 << 19), |e| {
            matches!(e, InputErrorKind::TooLong { .. })
        }),
        ("two keys", format!("{KEY},{KEY}"), |e| {
            matches!(e, InputErrorKind::TooLong { .. })
        }),
    ]
}

fn endpoint_cases() -> Vec<(&'static str, String, Expect)> {
    vec![
        ("no port", "192.0.2.1".into(), |e| {
            matches!(e, InputErrorKind::EndpointMissingPort)
        }),
        ("ipv6 without brackets", "2001:db8::1".into(), |e| {
            matches!(e, InputErrorKind::EndpointMissingPort)
        }),
        ("ipv6 brackets, no port", "[2001:db8::1]".into(), |e| {
            matches!(e, InputErrorKind::EndpointMissingPort)
        }),
        ("hostname", "node-a.example:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointSyntax)
        }),
        ("port out of range", "192.0.2.1:70000".into(), |e| {
            matches!(e, InputErrorKind::EndpointSyntax)
        }),
        ("port zero", "192.0.2.1:0".into(), |e| {
            matches!(e, InputErrorKind::EndpointPortZero)
        }),
        ("unspecified v4", "0.0.0.0:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotUnicast)
        }),
        ("unspecified v6", "[::]:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotUnicast)
        }),
        ("multicast", "239.1.1.1:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotUnicast)
        }),
        ("broadcast", "255.255.255.255:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotUnicast)
        }),
        // Addresses that are not another node across the network: each would
        // make every peer send this node's traffic somewhere else.
        ("loopback v4", "127.0.0.1:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotRoutable("a loopback address"))
        }),
        ("loopback v4, not .1", "127.3.2.1:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotRoutable("a loopback address"))
        }),
        ("loopback v6", "[::1]:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotRoutable("a loopback address"))
        }),
        ("cloud metadata", "169.254.169.254:51830".into(), |e| {
            matches!(
                e,
                InputErrorKind::EndpointNotRoutable("a link-local address")
            )
        }),
        ("AWS metadata v6", "[fd00:ec2::254]:51830".into(), |e| {
            matches!(
                e,
                InputErrorKind::EndpointNotRoutable("the AWS metadata service's IPv6 address")
            )
        }),
        ("link-local v6", "[fe80::1]:51830".into(), |e| {
            matches!(
                e,
                InputErrorKind::EndpointNotRoutable("a link-local address")
            )
        }),
        ("ipv4-mapped", "[::ffff:192.0.2.1]:51830".into(), |e| {
            matches!(
                e,
                InputErrorKind::EndpointNotRoutable("an IPv4-mapped IPv6 address")
            )
        }),
        ("numeric zone", "[2001:db8::1%2]:51830".into(), |e| {
            matches!(
                e,
                InputErrorKind::EndpointNotRoutable("an IPv6 address with a zone")
            )
        }),
        ("named zone", "[fe80::1%eth0]:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointSyntax)
        }),
        ("this network", "0.1.2.3:51830".into(), |e| {
            matches!(e, InputErrorKind::EndpointNotRoutable("in 0.0.0.0/8"))
        }),
        ("negative port", "192.0.2.1:-1".into(), |e| {
            matches!(e, InputErrorKind::EndpointSyntax)
        }),
        ("tab inside", "192.0.2.1:\t51830".into(), |e| {
            matches!(e, InputErrorKind::BadCharacter { found: '\t', .. })
        }),
        ("1 MiB endpoint", "9".repeat(1 << 20), |e| {
            matches!(e, InputErrorKind::TooLong { .. })
        }),
    ]
}

fn cidr_cases() -> Vec<(&'static str, String, Expect)> {
    vec![
        (
            "host bits set",
            "10.244.1.1/24".into(),
            |e| matches!(e, InputErrorKind::CidrHostBits { network, .. } if network.to_string() == "10.244.1.0/24"),
        ),
        ("v6 host bits", "fd00::1/64".into(), |e| {
            matches!(e, InputErrorKind::CidrHostBits { .. })
        }),
        ("no prefix", "10.244.1.0".into(), |e| {
            matches!(e, InputErrorKind::CidrSyntax { .. })
        }),
        ("prefix too long", "10.244.1.0/33".into(), |e| {
            matches!(e, InputErrorKind::CidrSyntax { .. })
        }),
        ("garbage", "pods".into(), |e| {
            matches!(e, InputErrorKind::CidrSyntax { .. })
        }),
        (
            "empty item",
            "10.244.1.0/24,,10.244.2.0/24".into(),
            |e| matches!(e, InputErrorKind::CidrSyntax { item } if item.is_empty()),
        ),
        ("overlap", "10.244.0.0/16,10.244.1.0/24".into(), |e| {
            matches!(e, InputErrorKind::CidrOverlap { .. })
        }),
        ("duplicate", "10.244.1.0/24,10.244.1.0/24".into(), |e| {
            matches!(e, InputErrorKind::CidrOverlap { .. })
        }),
        (
            "too many",
            (0..17)
                .map(|i| format!("10.{i}.0.0/16"))
                .collect::<Vec<_>>()
                .join(","),
            |e| matches!(e, InputErrorKind::TooManyCidrs { count: 17, .. }),
        ),
        ("1 MiB list", "10.0.0.0/8,".repeat(100_000), |e| {
            matches!(e, InputErrorKind::TooLong { .. })
        }),
        ("only commas", ",,,".into(), |e| {
            matches!(e, InputErrorKind::CidrSyntax { .. })
        }),
        ("unicode digits", "１０.0.0.0/8".into(), |e| {
            matches!(e, InputErrorKind::BadCharacter { .. })
        }),
    ]
}

#[test]
fn hostile_values_give_the_expected_typed_error() {
    let mut count = 0;
    for (name, value, expect) in key_cases() {
        let err = decode_public_key(&value).expect_err(name);
        assert!(expect(&err), "{name}: unexpected {err:?}");
        count += 1;
    }
    for (name, value, expect) in endpoint_cases() {
        let err = decode_endpoint(&value).expect_err(name);
        assert!(expect(&err), "{name}: unexpected {err:?}");
        count += 1;
    }
    for (name, value, expect) in cidr_cases() {
        let err = decode_pod_cidrs(&value).expect_err(name);
        assert!(expect(&err), "{name}: unexpected {err:?}");
        count += 1;
    }
    for (name, value) in [
        ("status not json", "ready"),
        (
            "status with two IPv4 host sources",
            r#"{"encryptionReady":true,"peersExpected":1,"peersEncrypted":1,"hostSources":["10.0.0.1","10.0.0.2"]}"#,
        ),
        (
            "status wrong datapath",
            r#"{"datapath":"magic","encryptionReady":true,"peersExpected":1,"peersEncrypted":1}"#,
        ),
    ] {
        let err = decode_status(value).expect_err(name);
        assert!(matches!(err, InputErrorKind::Status(_)), "{name}: {err:?}");
        count += 1;
    }
    // A message that would move a terminal's cursor when shown.
    let escape =
        r#"{"encryptionReady":false,"peersExpected":1,"peersEncrypted":0,"message":"\u001b[2Jok"}"#;
    assert!(matches!(
        decode_status(escape),
        Err(InputErrorKind::BadCharacter {
            found: '\u{1b}',
            ..
        })
    ));
    count += 1;
    let huge = "{".repeat(1 << 20);
    assert!(matches!(
        decode_status(&huge),
        Err(InputErrorKind::TooLong { .. })
    ));
    assert!(
        count >= 25,
        "the table must keep at least 25 hostile cases, has {count}"
    );
}

#[test]
fn errors_name_node_field_and_a_short_value() {
    let value = "A".repeat(1 << 20);
    let kind = decode_public_key(&value).unwrap_err();
    let err = NodeInputError::new("node-a", Field::Annotation(PUBLIC_KEY), &value, kind);
    let text = err.to_string();
    assert!(
        text.starts_with("node \"node-a\", annotation wireseal.dev/public-key = \"AAAA"),
        "{text}"
    );
    assert!(text.contains("(1048576 bytes)"), "{text}");
    assert!(text.contains("at most 64 are accepted"), "{text}");
    assert!(
        text.len() < 300,
        "an error must not carry the whole value: {} bytes",
        text.len()
    );
}

#[test]
fn good_values_decode() {
    assert_eq!(
        decode_public_key(&format!(" {KEY} ")).unwrap().to_base64(),
        KEY
    );
    assert_eq!(
        decode_endpoint("192.0.2.1:51830").unwrap().to_string(),
        "192.0.2.1:51830"
    );
    assert_eq!(
        decode_endpoint("[2001:db8::1]:51830").unwrap().port(),
        51830
    );
    let cidrs = decode_pod_cidrs("10.244.1.0/24, fd00:10:244:1::/64").unwrap();
    assert_eq!(cidrs.len(), 2);
    // The same prefix in two families does not overlap.
    assert!(!overlaps(cidrs[0], cidrs[1]));
}

#[test]
fn own_annotations_round_trip() {
    let key: PublicKey = KEY.parse().unwrap();
    let status = NodeStatus {
        datapath: Some(DatapathKind::Userspace),
        encryption: Some(Encryption::Ipsec),
        encryption_ready: true,
        peers_expected: 2,
        peers_encrypted: 2,
        message: None,
        host_sources: vec![],
    };
    let endpoint: SocketAddr = "192.0.2.1:51830".parse().unwrap();
    let out = encode_own(&key, None, Some(endpoint), Some(&status), Some(7));
    assert_eq!(decode_public_key(&out[PUBLIC_KEY]).unwrap(), key);
    assert_eq!(decode_endpoint(&out[ENDPOINT]).unwrap(), endpoint);
    assert_eq!(decode_status(&out[STATUS]).unwrap(), status);
    assert_eq!(
        out[STATUS],
        r#"{"datapath":"userspace","encryption":"ipsec","encryptionReady":true,"peersExpected":2,"peersEncrypted":2}"#
    );
    assert_eq!(decode_epoch(&out[IPSEC_EPOCH]).unwrap(), 7);
}

#[test]
fn an_epoch_has_one_spelling() {
    for good in ["0", "1", "4294967295"] {
        assert_eq!(decode_epoch(good).unwrap().to_string(), good);
    }
    for bad in [
        "",
        "-1",
        "+1",
        "01",
        "1.0",
        "0x10",
        "4294967296",
        "1 2",
        "١",
    ] {
        assert!(decode_epoch(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(
        decode_epoch("12345678901"),
        Err(InputErrorKind::TooLong { .. })
    ));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn on_any_string(value in any::<String>()) {
            let _ = decode_public_key(&value);
            let _ = decode_endpoint(&value);
            let _ = decode_pod_cidrs(&value);
            let _ = decode_status(&value);
            let _ = decode_epoch(&value);
        }

        #[test]
        fn on_near_miss_strings(value in "[0-9a-fA-F:./,\\[\\] =+]{0,80}") {
            let _ = decode_endpoint(&value);
            let _ = decode_pod_cidrs(&value);
            let _ = decode_public_key(&value);
        }
    }
}

#[test]
fn a_newer_agents_status_is_read_and_its_unknown_fields_ignored() {
    let status = decode_status(
        r#"{"datapath":"kernel","encryptionReady":true,"peersExpected":2,"peersEncrypted":2,"hostSources":["10.244.1.1","fd00:244:0:1::1"],"somethingNew":{"a":1}}"#,
    )
    .unwrap();
    assert!(status.encryption_ready);
    assert_eq!(
        status.host_sources,
        vec![
            "10.244.1.1".parse::<IpAddr>().unwrap(),
            "fd00:244:0:1::1".parse().unwrap()
        ]
    );
}

#[test]
fn a_status_decode_error_never_carries_control_characters() {
    // serde quotes the offending value in its message: a datapath, an unknown
    // field's type error or a bad host source chosen by another node.
    for value in [
        "{\"datapath\":\"\\u001b]0;owned\\u0007\",\"encryption_ready\":true,\"peers_expected\":0,\"peers_encrypted\":0}",
        "{\"encryption_ready\":\"\\u001b[2J\",\"peers_expected\":0,\"peers_encrypted\":0}",
        "{\"encryption_ready\":true,\"peers_expected\":0,\"peers_encrypted\":0,\"host_sources\":[\"\\u001b[31m\"]}",
        "{\"encryption_ready\":true,\"peers_expected\":0,\"peers_encrypted\":0,\"message\":\"a\\u009bb\"}",
    ] {
        let err = decode_status(value).expect_err(value).to_string();
        assert!(!err.chars().any(char::is_control), "{err:?}");
    }
}

/// Found by fuzzing (fuzz/, target annotations): serde_json's error quoted
/// the unknown datapath decoded, with its escape and DEL characters raw, into
/// the error that Events, logs and `wireseal status` show.
#[test]
fn a_status_error_never_quotes_a_control_character() {
    for value in [
        r#"{"datapath":"\u001b[2J\u007f","encryptionReady":true,"peersExpected":1,"peersEncrypted":1}"#,
        "{\"datapath\":\"user\u{7f}space\"}",
    ] {
        let err = decode_status(value).expect_err(value);
        let shown =
            NodeInputError::new("node-a", Field::Annotation(STATUS), value, err).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
}
