//! The userspace backend's encoder: the client side of WireGuard's
//! cross-platform UAPI (`get=1` / `set=1` on `/var/run/wireguard/IFACE.sock`),
//! which `wireseal-tunnel` and wireguard-go serve. The same [`DevicePlan`] as
//! the kernel backend's [`super::kernel::encode_set`], the same
//! [`DeviceObservation`] back. Pure text handling, so both directions are
//! tested without a socket; the socket is the agent's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use thiserror::Error;
use wireseal_core::key::{decode_hex_key_bytes, push_hex};
use wireseal_core::{
    DeviceObservation, DevicePlan, ObservedDevice, PeerConfig, PeerStats, PublicKey,
};
use wireseal_keymgr::PrivateKey;
use zeroize::Zeroizing;

/// A UAPI answer that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UapiError {
    /// The datapath refused the request.
    #[error("the datapath answered errno={0}")]
    Errno(i32),
    /// A line is not `key=value`.
    #[error("line {line}: not key=value")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A value is malformed.
    #[error("line {line}: bad {key} value")]
    Value {
        /// 1-based line number.
        line: usize,
        /// The key whose value is bad (never the value: it may be a private key).
        key: String,
    },
    /// The answer ended without `errno=`.
    #[error("the answer ended without errno=")]
    Truncated,
}

/// The `set=1` request for `plan`. The private key is written only when the
/// plan asks for it; the request text is never logged, and is wiped when
/// dropped.
///
/// Upserts replace the peer's allowed IPs (`replace_allowed_ips=true`): the
/// tunnel swaps the list under its device lock, so no packet sees it half
/// done, and `plan.remove_allowed_ips` (for the kernel, which has no such
/// lock) is already covered by it.
#[must_use]
pub fn encode_set(plan: &DevicePlan, private_key: &[u8; 32]) -> Zeroizing<String> {
    // Everything but the key first, in a plain String; then the request is
    // allocated once at its exact size, so the text holding the key is never
    // reallocated (which would leave an unwiped copy behind).
    let mut rest = String::new();
    if let Some(port) = plan.listen_port {
        let _ = writeln!(rest, "listen_port={port}");
    }
    if let Some(mark) = plan.fwmark {
        let _ = writeln!(rest, "fwmark={mark}");
    }
    for (peer, config) in &plan.upsert_peers {
        let _ = writeln!(rest, "public_key={}", peer.to_hex());
        if let Some(endpoint) = config.endpoint {
            let _ = writeln!(rest, "endpoint={endpoint}");
        }
        let _ = writeln!(
            rest,
            "persistent_keepalive_interval={}",
            config.persistent_keepalive.unwrap_or(0)
        );
        rest.push_str("replace_allowed_ips=true\n");
        for ip in &config.allowed_ips {
            let _ = writeln!(rest, "allowed_ip={ip}");
        }
    }
    for peer in &plan.remove_peers {
        let _ = writeln!(rest, "public_key={}\nremove=true", peer.to_hex());
    }
    const KEY_LINE: usize = "private_key=".len() + 64 + 1;
    let mut out = Zeroizing::new(String::with_capacity(
        "set=1\n".len() + KEY_LINE + rest.len() + 1,
    ));
    out.push_str("set=1\n");
    if plan.set_private_key.is_some() {
        out.push_str("private_key=");
        push_hex(private_key, &mut out);
        out.push('\n');
    }
    out.push_str(&rest);
    out.push('\n');
    out
}

/// A `set=1` of wireseal's own userspace datapath (not the standard UAPI):
/// a second private key whose handshakes the device answers too, during a
/// key rotation; `None` removes it.
#[must_use]
pub fn encode_alternate_key(private_key: Option<&[u8; 32]>) -> Zeroizing<String> {
    const LINE: &str = "wireseal_alternate_private_key=";
    let mut out = Zeroizing::new(String::with_capacity("set=1\n".len() + LINE.len() + 64 + 2));
    out.push_str("set=1\n");
    out.push_str(LINE);
    push_hex(private_key.unwrap_or(&[0; 32]), &mut out);
    out.push_str("\n\n");
    out
}

/// Checks the answer to a `set=1`.
///
/// # Errors
/// [`UapiError::Errno`] for a non-zero errno, [`UapiError::Truncated`] without one.
pub fn decode_set_answer(answer: &str) -> Result<(), UapiError> {
    for (index, line) in answer.lines().enumerate() {
        if let Some(value) = line.strip_prefix("errno=") {
            let errno: i32 = value.trim().parse().map_err(|_| UapiError::Value {
                line: index + 1,
                key: "errno".into(),
            })?;
            return if errno == 0 {
                Ok(())
            } else {
                Err(UapiError::Errno(errno))
            };
        }
    }
    Err(UapiError::Truncated)
}

/// Decodes the answer to a `get=1`.
///
/// # Errors
/// Syntax and value errors naming the line and key, or the datapath's errno.
pub fn decode_get(answer: &str) -> Result<DeviceObservation, UapiError> {
    let mut device = ObservedDevice::default();
    let mut stats = BTreeMap::new();
    let mut peer: Option<(PublicKey, PeerConfig, PeerStats)> = None;
    let mut handshake = (0u64, 0u32);
    let mut finish = |peer: &mut Option<(PublicKey, PeerConfig, PeerStats)>,
                      handshake: &mut (u64, u32),
                      device: &mut ObservedDevice| {
        if let Some((key, config, mut peer_stats)) = peer.take() {
            if *handshake != (0, 0) {
                // A time past what SystemTime holds is no handshake, not a panic.
                peer_stats.last_handshake = Duration::from_secs(handshake.0)
                    .checked_add(Duration::from_nanos(handshake.1.into()))
                    .and_then(|since| UNIX_EPOCH.checked_add(since));
            }
            device.peers.insert(key, config);
            stats.insert(key, peer_stats);
        }
        *handshake = (0, 0);
    };
    let mut ended = false;
    for (index, line) in answer.lines().enumerate() {
        let number = index + 1;
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(UapiError::Syntax { line: number })?;
        let bad = || UapiError::Value {
            line: number,
            key: key.to_owned(),
        };
        match key {
            "errno" => {
                let errno: i32 = value.parse().map_err(|_| bad())?;
                if errno != 0 {
                    return Err(UapiError::Errno(errno));
                }
                ended = true;
            }
            "private_key" => {
                let bytes = unhex(value).ok_or_else(bad)?;
                // The key never leaves this scope: only its public half is
                // kept, and both copies of the secret are wiped on drop.
                device.public_key = if *bytes == [0; 32] {
                    None
                } else {
                    Some(
                        PrivateKey::from_bytes(*bytes)
                            .map_err(|_| bad())?
                            .public_key(),
                    )
                };
            }
            "listen_port" => device.listen_port = value.parse().map_err(|_| bad())?,
            "fwmark" => device.fwmark = value.parse().map_err(|_| bad())?,
            "public_key" => {
                finish(&mut peer, &mut handshake, &mut device);
                let key = PublicKey::from_hex(value).map_err(|_| bad())?;
                peer = Some((key, PeerConfig::default(), PeerStats::default()));
            }
            _ => {
                let Some((_, config, peer_stats)) = peer.as_mut() else {
                    // Device-level keys wireseal does not use (e.g. protocol_version).
                    continue;
                };
                match key {
                    "endpoint" => config.endpoint = Some(parse_endpoint(value).ok_or_else(bad)?),
                    "allowed_ip" => {
                        config
                            .allowed_ips
                            .insert(IpNetwork::from_str(value).map_err(|_| bad())?);
                    }
                    "persistent_keepalive_interval" => {
                        let seconds: u16 = value.parse().map_err(|_| bad())?;
                        config.persistent_keepalive = (seconds != 0).then_some(seconds);
                    }
                    "last_handshake_time_sec" => handshake.0 = value.parse().map_err(|_| bad())?,
                    "last_handshake_time_nsec" => handshake.1 = value.parse().map_err(|_| bad())?,
                    "rx_bytes" => peer_stats.rx_bytes = value.parse().map_err(|_| bad())?,
                    "tx_bytes" => peer_stats.tx_bytes = value.parse().map_err(|_| bad())?,
                    _ => {}
                }
            }
        }
    }
    finish(&mut peer, &mut handshake, &mut device);
    if !ended {
        return Err(UapiError::Truncated);
    }
    Ok(DeviceObservation {
        device: Some(device),
        stats,
    })
}

fn parse_endpoint(value: &str) -> Option<SocketAddr> {
    SocketAddr::from_str(value).ok()
}

fn unhex(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    decode_hex_key_bytes(text).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PublicKey {
        PublicKey::from_bytes(x25519_dalek::x25519(
            [i; 32],
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
        .unwrap()
    }

    #[test]
    fn the_alternate_key_request_sets_or_clears_it() {
        let set = encode_alternate_key(Some(&[0xab; 32]));
        assert_eq!(
            set.as_str(),
            format!(
                "set=1\nwireseal_alternate_private_key={}\n\n",
                "ab".repeat(32)
            )
        );
        let clear = encode_alternate_key(None);
        assert_eq!(
            clear.as_str(),
            format!(
                "set=1\nwireseal_alternate_private_key={}\n\n",
                "0".repeat(64)
            )
        );
    }

    #[test]
    fn set_request_carries_the_plan() {
        let private = PrivateKey::from_bytes([7; 32]).unwrap();
        let mut plan = DevicePlan {
            set_private_key: Some(private.public_key()),
            listen_port: Some(51830),
            fwmark: Some(0x1000_0000),
            ..DevicePlan::default()
        };
        plan.upsert_peers.insert(
            key(1),
            PeerConfig {
                endpoint: Some("192.0.2.11:51830".parse().unwrap()),
                allowed_ips: ["10.244.1.0/24".parse().unwrap()].into(),
                persistent_keepalive: None,
            },
        );
        plan.remove_peers.insert(key(2));
        let text = encode_set(&plan, private.as_bytes());
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51830\nfwmark=268435456\npublic_key={}\nendpoint=192.0.2.11:51830\n\
             persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.244.1.0/24\n\
             public_key={}\nremove=true\n\n",
            "07".repeat(32),
            key(1).to_hex(),
            key(2).to_hex()
        );
        assert_eq!(*text, expected);
        // Without a key change, the private key is not sent.
        plan.set_private_key = None;
        assert!(!encode_set(&plan, private.as_bytes()).contains("private_key"));
    }

    #[test]
    fn get_answer_decodes_device_peers_and_stats() {
        let private = PrivateKey::from_bytes([9; 32]).unwrap();
        let answer = format!(
            "private_key={}\nlisten_port=51830\nfwmark=268435456\npublic_key={}\nendpoint=[2001:db8::1]:51830\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n\
             persistent_keepalive_interval=25\nallowed_ip=10.244.1.0/24\nallowed_ip=fd00::/64\nprotocol_version=1\n\
             public_key={}\nerrno=0\n\n",
            "09".repeat(32),
            key(1).to_hex(),
            key(2).to_hex()
        );
        let observed = decode_get(&answer).unwrap();
        let device = observed.device.unwrap();
        assert_eq!(device.public_key, Some(private.public_key()));
        assert_eq!(device.listen_port, 51830);
        assert_eq!(device.fwmark, 0x1000_0000);
        let one = &device.peers[&key(1)];
        assert_eq!(one.endpoint.unwrap().to_string(), "[2001:db8::1]:51830");
        assert_eq!(one.allowed_ips.len(), 2);
        assert_eq!(one.persistent_keepalive, Some(25));
        assert_eq!(observed.stats[&key(1)].rx_bytes, 20);
        assert_eq!(
            observed.stats[&key(1)].last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(device.peers[&key(2)], PeerConfig::default());
        assert_eq!(observed.stats[&key(2)].last_handshake, None);
    }

    /// Found by fuzzing (fuzz/, target agent_uapi): a handshake time past
    /// what `SystemTime` holds panicked the agent's decoder.
    #[test]
    fn an_impossible_handshake_time_is_no_handshake() {
        let peer = key(1).to_hex();
        for (sec, nsec) in [
            ("18446744073709551615", "999999999"),
            ("9223372036854775808", "0"),
            ("18446744073709551615", "4294967295"),
        ] {
            let answer = format!(
                "public_key={peer}\nlast_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\nerrno=0\n\n"
            );
            let observed = decode_get(&answer).unwrap();
            assert_eq!(observed.stats[&key(1)].last_handshake, None, "{sec}.{nsec}");
        }
    }

    #[test]
    fn bad_answers_name_the_line_and_never_the_secret() {
        let secret = "ab".repeat(31) + "zz";
        let err = decode_get(&format!("private_key={secret}\nerrno=0\n")).unwrap_err();
        assert_eq!(
            err,
            UapiError::Value {
                line: 1,
                key: "private_key".into()
            }
        );
        assert!(!err.to_string().contains("abab"));
        assert_eq!(decode_get("listen_port=1\n"), Err(UapiError::Truncated));
        assert_eq!(decode_get("garbage\n"), Err(UapiError::Syntax { line: 1 }));
        assert_eq!(decode_get("errno=19\n\n"), Err(UapiError::Errno(19)));
        assert_eq!(decode_set_answer("errno=0\n\n"), Ok(()));
        assert_eq!(decode_set_answer("errno=22\n\n"), Err(UapiError::Errno(22)));
        assert_eq!(decode_set_answer(""), Err(UapiError::Truncated));
    }
}
