//! The proof of encryption: a packet capture on the underlay bridge, read back
//! and classified packet by packet.
//!
//! Passing means: every IP packet between nodes is UDP to or from the WireGuard
//! port carrying a WireGuard message (types 1–4 with three zero reserved bytes),
//! data messages were seen, and the plaintext canary the pods sent appears in no
//! packet. Traffic to the apiserver is the control plane, counted apart. IPv4
//! and IPv6 alike (each counted apart too); IPv6 neighbour discovery and
//! MLD are the links' own chatter.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::Proc;

/// The 16-byte pattern pods put in their ping payloads (`ping -p`).
pub const CANARY: &[u8; 16] = b"WIRESEAL-CANARY!";

/// The canary as the hex string `ping -p` takes.
#[must_use]
pub fn canary_hex() -> String {
    CANARY.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running tcpdump on one interface of a namespace.
#[derive(Debug)]
pub struct Capture {
    tcpdump: Proc,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing every frame on `interface` in `ns` into `file` (`any`
    /// for every interface: a bridge device itself does not see the frames it
    /// forwards between its ports), and waits until tcpdump is listening.
    ///
    /// # Errors
    /// When tcpdump is missing or does not start listening within 10 s.
    pub fn start(ns: &Netns, interface: &str, file: &Path) -> Result<Self> {
        let log = file.with_extension("log");
        let mut command = ns.command("tcpdump");
        // Immediate mode: packets reach the file as they arrive, not when a ring
        // block fills, so stopping right after the traffic loses nothing.
        command
            .args([
                "-i",
                interface,
                "-s",
                "0",
                "-U",
                "-nn",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
            ])
            .arg(file);
        let mut tcpdump = Proc::spawn("tcpdump (apt-get install tcpdump)", command, &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("listening on")
            {
                return Ok(Self {
                    tcpdump,
                    file: file.to_owned(),
                });
            }
            tcpdump.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "tcpdump did not start listening within 10 s: {}",
                    tcpdump.log_tail(5)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets tcpdump catch up, stops it (which flushes its file on SIGTERM)
    /// and analyses what it captured.
    ///
    /// # Errors
    /// When the capture file cannot be read or parsed.
    pub fn finish(mut self, apiserver: IpAddr, wireguard_port: u16) -> Result<CaptureReport> {
        self.settle();
        self.tcpdump.stop(Duration::from_secs(5));
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        analyse(&bytes, apiserver, wireguard_port)
    }
}

impl Capture {
    /// Stops the capture like [`Capture::finish`] and counts the captured
    /// packets that match the tcpdump `filter` (e.g. `icmp and host 198.18.0.11`),
    /// whatever the link type (a TUN device captures raw IP).
    ///
    /// # Errors
    /// When tcpdump cannot read the file back.
    pub fn finish_matching(mut self, filter: &str) -> Result<usize> {
        self.settle();
        self.tcpdump.stop(Duration::from_secs(5));
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .arg(filter)
            .output()
            .context("running tcpdump -r")?;
        if !out.status.success() {
            bail!(
                "tcpdump -r {} {filter}: {}",
                self.file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// Waits until the capture file has stopped growing for a moment (at
    /// most 2 s). Frames the kernel already handed to tcpdump may not be in
    /// the file yet when the traffic ends: a short exchange that ends the
    /// traffic (one TCP round trip) could otherwise lose its last frames,
    /// which are the ones carrying the payload, to the SIGTERM.
    fn settle(&self) {
        const QUIET: Duration = Duration::from_millis(150);
        let size = || std::fs::metadata(&self.file).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = size();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
            let now = size();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= QUIET {
                return;
            }
        }
    }
}

/// What crossed the underlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureReport {
    /// Frames captured.
    pub frames: usize,
    /// WireGuard messages by type: initiation, response, cookie reply, data.
    pub wireguard: [usize; 4],
    /// Packets to or from the apiserver (control plane).
    pub control_plane: usize,
    /// ARP and other non-IP frames.
    pub non_ip: usize,
    /// IPv6 neighbour discovery and MLD between link-local addresses.
    pub link_local: usize,
    /// Node-to-node IP packets that are not WireGuard, described.
    pub plaintext: Vec<String>,
    /// Number of plaintext packets (the list keeps the first 20).
    pub plaintext_count: usize,
    /// Frames containing the canary.
    pub canary_frames: usize,
    /// Of those, the IPv6 packets (a pod's ICMPv6 in clear).
    pub canary_frames_v6: usize,
    /// Of the plaintext packets, the IPv6 ones.
    pub plaintext_count_v6: usize,
}

impl CaptureReport {
    /// True when everything between nodes was WireGuard, data was carried and
    /// the canary never crossed in clear.
    #[must_use]
    pub fn encrypted(&self) -> bool {
        self.plaintext_count == 0 && self.canary_frames == 0 && self.wireguard[3] > 0
    }

    /// Frames carrying the canary in clear as packets of `family`.
    #[must_use]
    pub fn canary_frames_of(&self, family: crate::topology::Family) -> usize {
        match family {
            crate::topology::Family::V4 => self.canary_frames - self.canary_frames_v6,
            crate::topology::Family::V6 => self.canary_frames_v6,
        }
    }

    /// Plaintext node-to-node packets of `family`.
    #[must_use]
    pub fn plaintext_of(&self, family: crate::topology::Family) -> usize {
        match family {
            crate::topology::Family::V4 => self.plaintext_count - self.plaintext_count_v6,
            crate::topology::Family::V6 => self.plaintext_count_v6,
        }
    }
}

impl fmt::Display for CaptureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames: WireGuard {} (init {}, response {}, cookie {}, data {}), plaintext node-to-node {}, \
             canary seen in {}, control plane {}, link-local ND/MLD {}, non-IP {}",
            self.frames,
            self.wireguard.iter().sum::<usize>(),
            self.wireguard[0],
            self.wireguard[1],
            self.wireguard[2],
            self.wireguard[3],
            self.plaintext_count,
            self.canary_frames,
            self.control_plane,
            self.link_local,
            self.non_ip
        )
    }
}

/// Classifies every frame of a pcap file (Ethernet or Linux cooked capture).
///
/// # Errors
/// When the bytes are not a pcap file of Ethernet frames.
pub fn analyse(pcap: &[u8], apiserver: IpAddr, wireguard_port: u16) -> Result<CaptureReport> {
    let mut report = CaptureReport::default();
    let (link, frames) = frames(pcap)?;
    for frame in frames {
        report.frames += 1;
        let ipv6 = classify(frame, link, apiserver, wireguard_port, &mut report);
        if contains(frame, CANARY) {
            report.canary_frames += 1;
            if ipv6 {
                report.canary_frames_v6 += 1;
            }
        }
    }
    Ok(report)
}

/// Where the protocol field and the network header are in a frame of each link type.
#[derive(Debug, Clone, Copy)]
enum LinkType {
    /// Ethernet: type at 12, header 14 bytes.
    Ethernet,
    /// Linux cooked capture v1 (`-i any`, older tcpdump): type at 14, header 16.
    Sll,
    /// Linux cooked capture v2 (`-i any`): type at 0, header 20.
    Sll2,
}

impl LinkType {
    fn from_pcap(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Ethernet),
            113 => Some(Self::Sll),
            276 => Some(Self::Sll2),
            _ => None,
        }
    }

    /// (offset of the EtherType, length of the link header).
    fn layout(self) -> (usize, usize) {
        match self {
            Self::Ethernet => (12, 14),
            Self::Sll => (14, 16),
            Self::Sll2 => (0, 20),
        }
    }
}

/// Counts one frame in `report`; true when it is an IPv6 packet.
fn classify(
    frame: &[u8],
    link: LinkType,
    apiserver: IpAddr,
    port: u16,
    report: &mut CaptureReport,
) -> bool {
    const ETHERTYPE_IPV4: u16 = 0x0800;
    const ETHERTYPE_IPV6: u16 = 0x86dd;
    let (type_at, header) = link.layout();
    let (Some(ethertype), Some(ip)) = (
        frame
            .get(type_at..type_at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]])),
        frame.get(header..),
    ) else {
        report.non_ip += 1;
        return false;
    };
    // (source, destination, protocol, payload) of either family.
    let packet = match ethertype {
        ETHERTYPE_IPV4 if ip.len() >= 20 => {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip[9], ip.get(header_len..).unwrap_or_default())
        }
        ETHERTYPE_IPV6 if ip.len() >= 40 => {
            let address = |bytes: &[u8]| {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(bytes).unwrap_or_default(),
                ))
            };
            (address(&ip[8..24]), address(&ip[24..40]), ip[6], &ip[40..])
        }
        _ => {
            report.non_ip += 1;
            return false;
        }
    };
    let (src, dst, protocol, payload) = packet;
    let ipv6 = dst.is_ipv6();
    let mut describe = |what: String| {
        report.plaintext_count += 1;
        if ipv6 {
            report.plaintext_count_v6 += 1;
        }
        if report.plaintext.len() < 20 {
            report.plaintext.push(what);
        }
    };
    if src == apiserver || dst == apiserver {
        report.control_plane += 1;
        return ipv6;
    }
    if let (IpAddr::V6(src6), IpAddr::V6(dst6)) = (src, dst) {
        // Neighbour discovery (ICMPv6 133–137, between any addresses) and
        // MLD (ICMPv6, or hop-by-hop for MLD) between link-local addresses
        // or to multicast: the links' own chatter.
        let neighbour_discovery =
            protocol == 58 && payload.first().is_some_and(|t| (133..=137).contains(t));
        let link_scope =
            src6.is_unicast_link_local() || src6.is_unspecified() || dst6.is_multicast();
        if neighbour_discovery || (link_scope && (protocol == 58 || protocol == 0)) {
            report.link_local += 1;
            return ipv6;
        }
    }
    if protocol == 17 && payload.len() >= 12 {
        let sport = u16::from_be_bytes([payload[0], payload[1]]);
        let dport = u16::from_be_bytes([payload[2], payload[3]]);
        let message = &payload[8..];
        if (sport == port || dport == port) && is_wireguard(message) {
            report.wireguard[usize::from(message[0] - 1)] += 1;
            return ipv6;
        }
        describe(format!(
            "UDP {} -> {}",
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport)
        ));
        return ipv6;
    }
    let name = match (protocol, ipv6) {
        (1, false) => "ICMP",
        (58, true) => "ICMPv6",
        (6, _) => "TCP",
        (17, _) => "UDP",
        (_, false) => "IP",
        (_, true) => "IPv6",
    };
    if name == "IPv6" {
        describe(format!("IPv6 {src} -> {dst} (next header {protocol})"));
    } else {
        describe(format!("{name} {src} -> {dst}"));
    }
    ipv6
}

/// A WireGuard message: type 1–4 followed by three zero bytes, with the
/// length each type has (data messages: at least header + tag).
fn is_wireguard(message: &[u8]) -> bool {
    let Some((&kind, rest)) = message.split_first() else {
        return false;
    };
    if rest.get(..3) != Some(&[0, 0, 0]) {
        return false;
    }
    match kind {
        1 => message.len() == 148,
        2 => message.len() == 92,
        3 => message.len() == 64,
        4 => message.len() >= 32,
        _ => false,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The link type and frames of a classic pcap file.
fn frames(pcap: &[u8]) -> Result<(LinkType, Vec<&[u8]>)> {
    let Some(magic) = pcap.get(..4) else {
        bail!("capture file is empty (did tcpdump run?)");
    };
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let read_u32 = |bytes: &[u8]| {
        let array = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if little {
            u32::from_le_bytes(array)
        } else {
            u32::from_be_bytes(array)
        }
    };
    let link_value = read_u32(pcap.get(20..24).context("truncated pcap header")?);
    let link = LinkType::from_pcap(link_value).with_context(|| {
        format!("capture link type {link_value} is neither Ethernet nor Linux cooked")
    })?;
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let captured = usize::try_from(read_u32(&pcap[at + 8..at + 12])).unwrap_or(usize::MAX);
        let start = at + 16;
        let Some(frame) = start
            .checked_add(captured)
            .and_then(|end| pcap.get(start..end))
        else {
            // tcpdump stopped mid-record; what came before is whole.
            break;
        };
        out.push(frame);
        at = start + captured;
    }
    Ok((link, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for frame in frames {
            out.extend_from_slice(&[0; 8]);
            let len = u32::try_from(frame.len()).unwrap();
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(frame);
        }
        out
    }

    fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&sport.to_be_bytes());
        frame.extend_from_slice(&dport.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    const API: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

    #[test]
    fn wireguard_only_passes() {
        let mut init = vec![1, 0, 0, 0];
        init.resize(148, 7);
        let mut data = vec![4, 0, 0, 0];
        data.resize(100, 9);
        let file = pcap(&[
            udp_frame([198, 18, 0, 10], [198, 18, 0, 11], 51830, 51830, &init),
            udp_frame([198, 18, 0, 11], [198, 18, 0, 10], 51830, 51830, &data),
            udp_frame([198, 18, 0, 10], [198, 18, 0, 1], 40000, 6443, b"GET /api"),
        ]);
        let report = analyse(&file, API, 51830).unwrap();
        assert_eq!(report.wireguard, [1, 0, 0, 1]);
        assert_eq!(report.control_plane, 1);
        assert!(report.encrypted(), "{report}");
    }

    #[test]
    fn a_canary_or_plaintext_fails() {
        let mut data = vec![4, 0, 0, 0];
        data.resize(100, 9);
        let mut leaky = b"xxxx".to_vec();
        leaky.extend_from_slice(CANARY);
        let file = pcap(&[
            udp_frame([198, 18, 0, 10], [198, 18, 0, 11], 51830, 51830, &data),
            udp_frame([10, 244, 0, 10], [10, 244, 1, 10], 5000, 5001, &leaky),
        ]);
        let report = analyse(&file, API, 51830).unwrap();
        assert_eq!(report.canary_frames, 1);
        assert_eq!(
            report.plaintext,
            vec!["UDP 10.244.0.10:5000 -> 10.244.1.10:5001".to_owned()]
        );
        assert!(!report.encrypted());
        // A message on the WireGuard port with a wrong shape is not WireGuard.
        let mut fake = vec![1, 0, 0, 0];
        fake.resize(30, 0);
        let file = pcap(&[udp_frame(
            [198, 18, 0, 10],
            [198, 18, 0, 11],
            51830,
            51830,
            &fake,
        )]);
        assert_eq!(analyse(&file, API, 51830).unwrap().plaintext_count, 1);
    }

    fn ipv6_frame(src: [u8; 16], dst: [u8; 16], next_header: u8) -> Vec<u8> {
        ipv6_packet(src, dst, next_header, &[0; 8])
    }

    fn ipv6_packet(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0; 12];
        frame.extend_from_slice(&[0x86, 0xdd]);
        let len = u16::try_from(payload.len()).unwrap().to_be_bytes();
        frame.extend_from_slice(&[0x60, 0, 0, 0, len[0], len[1], next_header, 255]);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(payload);
        frame
    }

    fn v6(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn ipv6_wireguard_passes_and_an_icmpv6_canary_is_counted_as_ipv6() {
        let udp = |sport: u16, dport: u16, message: &[u8]| {
            let mut payload = sport.to_be_bytes().to_vec();
            payload.extend_from_slice(&dport.to_be_bytes());
            payload.extend_from_slice(&[0; 4]);
            payload.extend_from_slice(message);
            payload
        };
        let mut data = vec![4, 0, 0, 0];
        data.resize(100, 9);
        let (n0, n1, api) = (
            v6("fd00:198:18::10"),
            v6("fd00:198:18::11"),
            v6("fd00:198:18::1"),
        );
        // A neighbour advertisement between global addresses is link chatter.
        let mut advert = vec![136, 0, 0, 0];
        advert.resize(24, 0);
        let sealed = pcap(&[
            ipv6_packet(n0, n1, 17, &udp(51830, 51830, &data)),
            ipv6_packet(n1, api, 6, b"GET /api/v1/nodes"),
            ipv6_packet(n1, n0, 58, &advert),
        ]);
        let api_ip = IpAddr::V6(APISERVER_V6);
        let report = analyse(&sealed, api_ip, 51830).unwrap();
        assert_eq!(report.wireguard, [0, 0, 0, 1]);
        assert_eq!((report.control_plane, report.link_local), (1, 1));
        assert!(report.encrypted(), "{report}");

        let mut echo = vec![128, 0, 0, 0, 0, 1, 0, 1];
        echo.extend_from_slice(CANARY);
        let leaky = pcap(&[
            ipv6_packet(v6("fd00:10:244::10"), v6("fd00:10:244:1::10"), 58, &echo),
            udp_frame([10, 244, 0, 10], [10, 244, 1, 10], 5000, 5001, CANARY),
        ]);
        let report = analyse(&leaky, api_ip, 51830).unwrap();
        assert_eq!(report.canary_frames, 2);
        assert_eq!(report.canary_frames_of(crate::topology::Family::V6), 1);
        assert_eq!(report.canary_frames_of(crate::topology::Family::V4), 1);
        assert_eq!(report.plaintext_of(crate::topology::Family::V6), 1);
        assert_eq!(
            report.plaintext,
            vec![
                "ICMPv6 fd00:10:244::10 -> fd00:10:244:1::10".to_owned(),
                "UDP 10.244.0.10:5000 -> 10.244.1.10:5001".to_owned()
            ]
        );
    }

    const APISERVER_V6: Ipv6Addr = crate::topology::APISERVER_IP6;

    #[test]
    fn neighbour_discovery_is_link_chatter_but_other_ipv6_is_plaintext() {
        let mut link_local = [0u8; 16];
        link_local[0] = 0xfe;
        link_local[1] = 0x80;
        link_local[15] = 1;
        let mut multicast = [0u8; 16];
        multicast[0] = 0xff;
        multicast[1] = 0x02;
        multicast[15] = 1;
        let mut global = [0u8; 16];
        global[0] = 0xfd;
        global[15] = 2;
        let file = pcap(&[
            ipv6_frame(link_local, multicast, 58),
            ipv6_frame(global, global, 6),
        ]);
        let report = analyse(&file, API, 51830).unwrap();
        assert_eq!(report.link_local, 1);
        assert_eq!(report.plaintext_count, 1);
        assert!(
            report.plaintext[0].starts_with("TCP fd00::2 -> fd00::2"),
            "{:?}",
            report.plaintext
        );
    }

    #[test]
    fn rejects_what_is_not_pcap() {
        assert!(analyse(b"", API, 1).is_err());
        assert!(analyse(b"hello world, not pcap at all", API, 1).is_err());
        assert_eq!(canary_hex().len(), 32);
    }
}
