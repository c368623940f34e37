//! Batched UDP I/O: recvmmsg with UDP GRO, sendmmsg with UDP GSO.
//!
//! Send: datagrams are packed back to back in one buffer. Runs of equal-sized
//! datagrams to one destination (what a TSO split produces) leave as one GSO
//! "super-datagram" (`UDP_SEGMENT`), so the kernel's UDP/IP path runs once per run
//! instead of once per packet. Receive: with `UDP_GRO` on, the kernel may deliver such
//! a run as one buffer plus the segment size, which we cut up again.

use std::io;
use std::mem;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::{BATCH, Udp, sockaddr_for};
use crate::device::MAX_DATAGRAM;

/// Bytes per receive slot: a whole (possibly GRO-coalesced) datagram.
const SLOT: usize = MAX_DATAGRAM;

/// Datagrams one send batch holds (a full TSO split is ~45).
pub const SEND_ENTRIES: usize = 128;

/// Segments per GSO send; the kernel's limit (UDP_MAX_SEGMENTS) is 64 on older kernels.
const GSO_MAX_SEGMENTS: usize = 64;

/// Bytes per GSO send: the super-datagram must fit an IP packet.
const GSO_MAX_BYTES: usize = 65_000;

/// A control message carrying one u16 (UDP_SEGMENT), laid out as the kernel expects
/// on 64-bit Linux: `cmsghdr` (16 bytes) then the data, padded to 8.
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    pad: [u8; 6],
}

/// Room for the control messages of one received datagram (UDP_GRO is one int).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 64]);

/// Preallocated receive buffers for one thread.
pub struct RecvBatch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    lens: Vec<usize>,
    segs: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            data: vec![0; SLOT * BATCH],
            // SAFETY: sockaddr_storage is plain old data, all-zero is valid.
            names: vec![unsafe { mem::zeroed() }; BATCH],
            cmsgs: vec![CmsgBuf([0; 64]); BATCH],
            lens: vec![0; BATCH],
            segs: vec![0; BATCH],
            addrs: vec![None; BATCH],
        }
    }
}

impl RecvBatch {
    /// The datagrams of the i-th message (several when GRO coalesced them) and their
    /// source.
    pub fn datagrams(&self, i: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        let addr = self.addrs.get(i).copied().flatten();
        let len = self.lens.get(i).copied().unwrap_or(0);
        let data = self.data.get(i * SLOT..i * SLOT + len).unwrap_or(&[]);
        let seg = match self.segs.get(i).copied().unwrap_or(0) {
            0 => len.max(1),
            s => s,
        };
        data.chunks(seg).filter_map(move |d| Some((addr?, d)))
    }
}

/// Finds the UDP_GRO segment size in a received control buffer (0 = not coalesced).
fn gro_size(buf: &CmsgBuf, len: usize) -> usize {
    let hdr = size_of::<libc::cmsghdr>();
    let b = &buf.0[..len.min(buf.0.len())];
    let mut at = 0;
    while at + hdr <= b.len() {
        let word = |o: usize| {
            b.get(o..o + 4)
                .map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        };
        let cmsg_len = b.get(at..at + 8).map_or(0, |s| {
            usize::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
        });
        if cmsg_len < hdr {
            break;
        }
        if word(at + 8) == Some(libc::SOL_UDP) && word(at + 12) == Some(libc::UDP_GRO) {
            return word(at + hdr).map_or(0, |v| usize::try_from(v).unwrap_or(0));
        }
        at += cmsg_len.next_multiple_of(8);
    }
    0
}

/// Preallocated send buffer for one thread: datagrams packed back to back.
pub struct SendBatch {
    data: Vec<u8>,
    entries: Vec<(usize, usize, SocketAddr)>,
    cursor: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            // Typical datagrams are ≤ 1500 bytes; the extra MAX_DATAGRAM guarantees
            // `next_slot` always has room for the largest one.
            data: vec![0; SEND_ENTRIES * 1536 + MAX_DATAGRAM],
            entries: Vec::with_capacity(SEND_ENTRIES),
            cursor: 0,
        }
    }
}

impl SendBatch {
    /// True when the next datagram might not fit.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.entries.len() == SEND_ENTRIES || self.cursor + MAX_DATAGRAM > self.data.len()
    }

    /// True when nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for the next datagram, to encrypt into directly (no copy). Check
    /// [`is_full`](Self::is_full) first.
    pub fn next_slot(&mut self) -> &mut [u8] {
        let end = (self.cursor + MAX_DATAGRAM).min(self.data.len());
        &mut self.data[self.cursor..end]
    }

    /// Commits `len` bytes written into [`next_slot`](Self::next_slot).
    pub fn commit(&mut self, len: usize, dst: SocketAddr) {
        if self.is_full() || len > MAX_DATAGRAM {
            return;
        }
        self.entries.push((self.cursor, len, dst));
        self.cursor += len;
    }

    /// Copies a datagram in; returns false when the batch is full.
    pub fn push(&mut self, datagram: &[u8], dst: SocketAddr) -> bool {
        if self.is_full() || datagram.len() > MAX_DATAGRAM {
            return false;
        }
        self.next_slot()[..datagram.len()].copy_from_slice(datagram);
        self.commit(datagram.len(), dst);
        true
    }

    /// Forgets the queued datagrams after they were sent.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.cursor = 0;
    }

    /// Groups entries into sends: (first entry, count, segment size). A group is a
    /// run to one destination of equal sizes, the last possibly shorter.
    fn groups(&self, gso: bool, out: &mut Vec<(usize, usize, usize)>) {
        out.clear();
        let mut i = 0;
        while i < self.entries.len() {
            let (_, size, dst) = self.entries[i];
            let mut j = i + 1;
            let mut total = size;
            while gso && j < self.entries.len() && j - i < GSO_MAX_SEGMENTS {
                let (_, len, d) = self.entries[j];
                if d != dst || len > size || total + len > GSO_MAX_BYTES {
                    break;
                }
                total += len;
                j += 1;
                if len < size {
                    break; // a shorter datagram can only end a GSO run
                }
            }
            out.push((i, j - i, size));
            i = j;
        }
    }
}

/// Reads the source address the kernel wrote into a sockaddr_storage.
fn storage_to_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller
            // than and alignment-compatible with sockaddr_storage.
            let sin: &libc::sockaddr_in = unsafe { &*std::ptr::from_ref(storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*std::ptr::from_ref(storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl Udp {
    /// Receives up to [`BATCH`] messages with one recvmmsg. Returns how many; 0 after
    /// the receive timeout. Read them with [`RecvBatch::datagrams`].
    ///
    /// # Errors
    /// Socket errors other than the timeout or an interrupt.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let RecvBatch {
            data, names, cmsgs, ..
        } = batch;
        for (i, ((iov, slot), (name, cmsg))) in iovs
            .iter_mut()
            .zip(data.chunks_exact_mut(SLOT))
            .zip(names.iter_mut().zip(cmsgs.iter_mut()))
            .enumerate()
        {
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = SLOT;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = std::ptr::from_mut(name).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_control = cmsg.0.as_mut_ptr().cast();
            h.msg_controllen = cmsg.0.len();
        }
        // SAFETY: every header points at its own SLOT-byte region of `data`, its own
        // sockaddr_storage, iovec and control buffer, all alive and exclusively
        // borrowed for the call; the count passed is the array length.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = usize::try_from(n).unwrap_or(0);
        for (i, hdr) in hdrs.iter().enumerate().take(n) {
            batch.lens[i] = hdr.msg_len as usize;
            batch.addrs[i] = storage_to_addr(&batch.names[i]);
            batch.segs[i] = gro_size(&batch.cmsgs[i], hdr.msg_hdr.msg_controllen);
        }
        Ok(n)
    }

    /// Sends everything in `batch` with as few syscalls as possible. A datagram the
    /// kernel refuses (unreachable peer) is dropped, not retried. When the egress
    /// device cannot do UDP GSO (`EIO`), GSO is switched off for good and the batch
    /// is sent again without it.
    pub fn send_batch(&self, batch: &SendBatch) {
        let mut groups = Vec::with_capacity(SEND_ENTRIES);
        let gso = self.gso.load(Ordering::Relaxed);
        batch.groups(gso, &mut groups);
        let mut start = 0;
        while start < groups.len() {
            let todo = (groups.len() - start).min(BATCH);
            let mut iovs = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH];
            // SAFETY: plain old data, all-zero is valid.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut cmsgs: [GsoCmsg; BATCH] = unsafe { mem::zeroed() };
            let mut names: [Option<socket2::SockAddr>; BATCH] = [const { None }; BATCH];
            for k in 0..todo {
                let (first, count, size) = groups[start + k];
                let (off, _, dst) = batch.entries[first];
                let bytes: usize = batch.entries[first..first + count]
                    .iter()
                    .map(|e| e.1)
                    .sum();
                let name = names[k].insert(sockaddr_for(self.v6, dst));
                iovs[k].iov_base = batch.data[off..].as_ptr().cast_mut().cast();
                iovs[k].iov_len = bytes;
                let h = &mut hdrs[k].msg_hdr;
                h.msg_name = name.as_ptr().cast_mut().cast();
                h.msg_namelen = name.len();
                h.msg_iov = &raw mut iovs[k];
                h.msg_iovlen = 1;
                if count > 1 {
                    let c = &mut cmsgs[k];
                    c.hdr.cmsg_len = size_of::<libc::cmsghdr>() + size_of::<u16>();
                    c.hdr.cmsg_level = libc::SOL_UDP;
                    c.hdr.cmsg_type = libc::UDP_SEGMENT;
                    c.size = u16::try_from(size).unwrap_or(u16::MAX);
                    h.msg_control = std::ptr::from_mut(c).cast();
                    h.msg_controllen = size_of::<GsoCmsg>();
                }
            }
            // SAFETY: the first `todo` headers point at live, initialised buffers of the
            // given lengths, live socket addresses and live control messages;
            // sendmmsg only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    todo as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EIO) if gso => {
                        tracing::warn!("UDP GSO refused by the egress device, sending without it");
                        self.gso.store(false, Ordering::Relaxed);
                        return self.send_batch(batch);
                    }
                    _ => {
                        let dst = batch.entries[groups[start].0].2;
                        tracing::debug!(error = %err, %dst, "udp send failed, datagrams dropped");
                        start += 1;
                    }
                }
            } else {
                start += usize::try_from(n).unwrap_or(1).max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_runs_of_equal_size_to_one_destination() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let mut batch = SendBatch::default();
        for (len, dst) in [
            (100, a),
            (100, a),
            (60, a),
            (100, a),
            (100, b),
            (100, b),
            (148, b),
        ] {
            assert!(batch.push(&vec![7; len], dst));
        }
        let mut groups = Vec::new();
        batch.groups(true, &mut groups);
        // The shorter datagram closes the first run; a longer one starts a new run.
        assert_eq!(
            groups,
            vec![(0, 3, 100), (3, 1, 100), (4, 2, 100), (6, 1, 148)]
        );
        batch.groups(false, &mut groups);
        assert_eq!(groups.len(), 7);
    }

    #[test]
    fn send_batch_fills_and_clears() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut batch = SendBatch::default();
        let mut n = 0;
        while batch.push(&[1; 1400], a) {
            n += 1;
        }
        assert_eq!(n, SEND_ENTRIES);
        batch.clear();
        assert!(batch.is_empty() && !batch.is_full());
    }
}
