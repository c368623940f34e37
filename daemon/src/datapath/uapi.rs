//! The client side of WireGuard's cross-platform UAPI (`get=1` / `set=1` on
//! `/var/run/wireguard/IFACE.sock`): encoding a device plan, decoding a device.
//! Pure text handling, so both directions are tested without a socket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use thiserror::Error;
use wireseal_core::{DevicePlan, ObservedDevice, PeerConfig, PublicKey};
use wireseal_keymgr::PrivateKey;

use super::{DeviceObservation, PeerStats};

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
/// plan asks for it; the request text is never logged.
///
/// Upserts replace the peer's allowed IPs (`replace_allowed_ips=true`): the
/// tunnel swaps the list under its device lock, so no packet sees it half
/// done, and `plan.remove_allowed_ips` (for the kernel, which has no such
/// lock) is already covered by it.
#[must_use]
pub fn encode_set(plan: &DevicePlan, key: &PrivateKey) -> String {
    let mut out = String::from("set=1\n");
    if plan.set_private_key.is_some() {
        out.push_str("private_key=");
        for byte in key.as_bytes() {
            let _ = write!(out, "{byte:02x}");
        }
        out.push('\n');
    }
    if let Some(port) = plan.listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    if let Some(mark) = plan.fwmark {
        let _ = writeln!(out, "fwmark={mark}");
    }
    for (peer, config) in &plan.upsert_peers {
        let _ = writeln!(out, "public_key={}", hex(peer.as_bytes()));
        if let Some(endpoint) = config.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            config.persistent_keepalive.unwrap_or(0)
        );
        out.push_str("replace_allowed_ips=true\n");
        for ip in &config.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    for peer in &plan.remove_peers {
        let _ = writeln!(out, "public_key={}\nremove=true", hex(peer.as_bytes()));
    }
    out.push('\n');
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
                peer_stats.last_handshake =
                    Some(UNIX_EPOCH + Duration::new(handshake.0, handshake.1));
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
                // The key never leaves this scope: only its public half is kept.
                device.public_key = if bytes == [0; 32] {
                    None
                } else {
                    Some(
                        PrivateKey::from_bytes(bytes)
                            .map_err(|_| bad())?
                            .public_key(),
                    )
                };
            }
            "listen_port" => device.listen_port = value.parse().map_err(|_| bad())?,
            "fwmark" => device.fwmark = value.parse().map_err(|_| bad())?,
            "public_key" => {
                finish(&mut peer, &mut handshake, &mut device);
                let bytes = unhex(value).ok_or_else(bad)?;
                let key = PublicKey::from_bytes(bytes).map_err(|_| bad())?;
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

/// The time of a last handshake, for tests and callers that need `SystemTime`.
#[must_use]
pub fn handshake_time(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn parse_endpoint(value: &str) -> Option<SocketAddr> {
    SocketAddr::from_str(value).ok()
}

fn hex(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
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
        let text = encode_set(&plan, &private);
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51830\nfwmark=268435456\npublic_key={}\nendpoint=192.0.2.11:51830\n\
             persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.244.1.0/24\n\
             public_key={}\nremove=true\n\n",
            "07".repeat(32),
            hex(key(1).as_bytes()),
            hex(key(2).as_bytes())
        );
        assert_eq!(text, expected);
        // Without a key change, the private key is not sent.
        plan.set_private_key = None;
        assert!(!encode_set(&plan, &private).contains("private_key"));
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
            hex(key(1).as_bytes()),
            hex(key(2).as_bytes())
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
