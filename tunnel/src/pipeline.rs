//! The I/O threads: TUN → encrypt → UDP, UDP → decrypt → TUN, and the timer tick.
//!
//! With `threads = N` there are N threads per direction sharing one TUN fd and one UDP
//! socket (the kernel hands each packet to one reader). The machine this targets has
//! 2 cores, so the default is 1 + 1: each direction is a pipeline on its own core,
//! with no hand-off between threads inside a direction.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::TIMER_TICK;
use crate::device::{Device, MAX_DATAGRAM, Sink};
use crate::gro::GroBatch;
use crate::health::Beat;
use crate::offload::{self, VNET_HDR_LEN};
use crate::tun::Tun;
use crate::udp::{BATCH, RecvBatch, SendBatch, Udp, UdpSlot};

/// How long the TUN reader sleeps in poll before it re-checks for a new socket.
const TUN_POLL: Duration = Duration::from_millis(500);

/// Sends to the network through a batch, flushing when it fills; writes to the TUN
/// directly (one write per packet: without a vnet header the TUN takes one at a time).
struct BatchSink<'a> {
    tun: Option<&'a Tun>,
    /// With TUN offloads, decrypted packets are merged (GRO) and written per burst.
    gro: Option<&'a mut GroBatch>,
    udp: &'a Udp,
    out: &'a mut SendBatch,
}

impl Sink for BatchSink<'_> {
    fn to_tunnel(&mut self, packet: &[u8]) {
        let Some(tun) = self.tun else { return };
        match self.gro.as_deref_mut() {
            Some(gro) => {
                if !gro.push(packet) {
                    gro.flush(|buf| tun.write_raw(buf));
                    gro.push(packet);
                }
            }
            None => tun.write_packet(packet),
        }
    }

    fn to_network(&mut self, datagram: &[u8], dst: SocketAddr) {
        if !self.out.push(datagram, dst) {
            self.udp.send_batch(self.out);
            self.out.clear();
            self.out.push(datagram, dst);
        }
    }
}

/// Spawns the datapath threads. They run until the process exits.
///
/// # Errors
/// When a thread cannot be spawned.
pub fn spawn(
    device: &Arc<Device>,
    udp: &Arc<UdpSlot>,
    tun: &Arc<Tun>,
    threads: usize,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let (d, u, t) = (Arc::clone(device), Arc::clone(udp), Arc::clone(tun));
        let name = format!("tun-rx-{i}");
        let beat = device.health().register(&name);
        handles.push(
            thread::Builder::new()
                .name(name)
                .spawn(move || tun_to_udp(&d, &u, &t, &beat))?,
        );
        let (d, u, t) = (Arc::clone(device), Arc::clone(udp), Arc::clone(tun));
        let name = format!("udp-rx-{i}");
        let beat = device.health().register(&name);
        handles.push(
            thread::Builder::new()
                .name(name)
                .spawn(move || udp_to_tun(&d, &u, &t, &beat))?,
        );
    }
    let (d, u) = (Arc::clone(device), Arc::clone(udp));
    let beat = device.health().register("timers");
    handles.push(
        thread::Builder::new()
            .name("timers".into())
            .spawn(move || timers(&d, &u, &beat))?,
    );
    Ok(handles)
}

/// Why the datapath stopped by itself, for the main thread to report.
static FATAL: OnceLock<String> = OnceLock::new();

/// The reason the datapath gave up, if it did (the main thread exits non-zero then).
#[must_use]
pub fn fatal_error() -> Option<&'static str> {
    FATAL.get().map(String::as_str)
}

/// Gives up: records why and sends the process SIGTERM, which the main thread waits
/// for, so the socket is cleaned up the usual way.
fn give_up(reason: String) {
    tracing::error!(reason = %reason, "datapath stopping");
    let _ = FATAL.set(reason);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
}

fn tun_read_failed(err: &io::Error) {
    // EBADFD: the interface was deleted under us (`ip link del`). Nothing can be
    // forwarded any more; exit so the supervisor starts a fresh datapath.
    if err.raw_os_error() == Some(libc::EBADFD) {
        give_up(format!("the TUN device is gone: {err}"));
        thread::sleep(Duration::from_secs(3600));
    }
    tracing::warn!(error = %err, "tun read failed");
    // Never spin on a persistent error.
    thread::sleep(Duration::from_millis(100));
}

/// Room for the segments of one TSO read: 64 KiB of payload plus one copy of the
/// headers (≤ 120 bytes) per segment even at the smallest MSS Linux allows.
const SEGMENT_ROOM: usize = 4 * MAX_DATAGRAM;

fn tun_to_udp(device: &Device, slot: &UdpSlot, tun: &Tun, beat: &Beat) {
    let mut batch = SendBatch::default();
    let mut packet = vec![0u8; VNET_HDR_LEN + MAX_DATAGRAM];
    let mut segments = vec![0u8; SEGMENT_ROOM];
    let mut segs: Vec<(usize, usize)> = Vec::with_capacity(1024);
    loop {
        beat.beat();
        match tun.wait_readable(TUN_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "tun poll failed");
                thread::sleep(TUN_POLL);
                continue;
            }
        }
        let Some(udp) = slot.get() else {
            // No socket yet: drain the TUN so it does not fill up, and drop.
            while let Ok(Some(_)) = tun.try_read(&mut packet) {}
            continue;
        };
        // One read lock per burst, not per packet.
        let state = device.read();
        for _ in 0..BATCH {
            let n = match tun.try_read(&mut packet) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    tun_read_failed(&e);
                    break;
                }
            };
            let (source, segs) = if tun.vnet() {
                if let Err(e) = offload::split(&mut packet[..n], &mut segments, &mut segs) {
                    tracing::debug!(error = ?e, "dropping a TUN packet that cannot be segmented");
                    continue;
                }
                (&segments[..], &segs[..])
            } else {
                segs.clear();
                segs.push((0, n));
                (&packet[..], &segs[..])
            };
            for &(off, len) in segs {
                if batch.is_full() {
                    udp.send_batch(&batch);
                    batch.clear();
                }
                if let Some((len, dst)) =
                    state.encapsulate(&source[off..off + len], batch.next_slot())
                {
                    batch.commit(len, dst);
                }
            }
        }
        drop(state);
        if !batch.is_empty() {
            udp.send_batch(&batch);
            batch.clear();
        }
    }
}

fn udp_to_tun(device: &Device, slot: &UdpSlot, tun: &Tun, beat: &Beat) {
    let mut batch = RecvBatch::default();
    let mut gro = tun.tso().then(GroBatch::default);
    let mut out = SendBatch::default();
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    loop {
        beat.beat();
        let Some(udp) = slot.get() else {
            thread::sleep(crate::udp::RECV_TIMEOUT);
            continue;
        };
        let n = match udp.recv_batch(&mut batch) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if n == 0 {
            continue;
        }
        {
            let state = device.read();
            let mut sink = BatchSink {
                tun: Some(tun),
                gro: gro.as_mut(),
                udp: &udp,
                out: &mut out,
            };
            for i in 0..n {
                for (src, datagram) in batch.datagrams(i) {
                    state.decapsulate(src, datagram, &mut scratch, &mut sink);
                }
            }
        }
        if let Some(gro) = gro.as_mut() {
            gro.flush(|buf| tun.write_raw(buf));
        }
        if !out.is_empty() {
            udp.send_batch(&out);
            out.clear();
        }
    }
}

fn timers(device: &Device, slot: &UdpSlot, beat: &Beat) {
    let mut out = SendBatch::default();
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    loop {
        beat.beat();
        thread::sleep(TIMER_TICK);
        let Some(udp) = slot.get() else { continue };
        {
            let state = device.read();
            let mut sink = BatchSink {
                tun: None,
                gro: None,
                udp: &udp,
                out: &mut out,
            };
            state.tick_timers(&mut scratch, &mut sink);
        }
        if !out.is_empty() {
            udp.send_batch(&out);
            out.clear();
        }
    }
}
