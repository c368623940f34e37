//! The WireGuard UDP socket: dual-stack, big buffers, fwmark, recvmmsg/sendmmsg.

use std::io;
use std::mem;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::device::Network;

/// Socket buffer size asked for. The default 208 KiB overflows at a few hundred Mbit/s
/// of bursty TCP (see the research notes: RcvbufErrors → retransmits).
const SOCKET_BUFFER: usize = 7 << 20;

/// How long a receive thread blocks before it looks for a rebound socket.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(200);

/// Packets per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;

/// One bound UDP socket.
pub struct Udp {
    sock: Socket,
    port: u16,
    /// A dual-stack IPv6 socket wants IPv4 destinations in v4-mapped form.
    v6: bool,
}

fn sockaddr_for(v6: bool, dst: SocketAddr) -> SockAddr {
    match dst {
        SocketAddr::V4(v4) if v6 => SockAddr::from(SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        _ => SockAddr::from(dst),
    }
}

fn setsockopt_int(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the whole call and its exact size is passed;
    // the fd is valid because `sock` owns it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Udp {
    /// Binds `[::]:port` dual-stack, or `0.0.0.0:port` where IPv6 is unavailable.
    ///
    /// # Errors
    /// Socket creation, bind or `SO_MARK` errors.
    pub fn bind(port: u16, fwmark: u32) -> io::Result<Self> {
        let mut v6 = true;
        let sock = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
            Ok(sock) => {
                sock.set_only_v6(false)?;
                Self::prepare(&sock, fwmark)?;
                let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
                sock.bind(&SocketAddr::V6(addr).into())?;
                sock
            }
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                v6 = false;
                let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                Self::prepare(&sock, fwmark)?;
                sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
                sock
            }
            Err(e) => return Err(e),
        };
        let port = sock.local_addr()?.as_socket().map_or(port, |a| a.port());
        sock.set_read_timeout(Some(RECV_TIMEOUT))?;
        Ok(Self { sock, port, v6 })
    }

    fn prepare(sock: &Socket, fwmark: u32) -> io::Result<()> {
        if fwmark != 0 {
            sock.set_mark(fwmark)?;
        }
        let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
        // The FORCE variants pass net.core.rmem_max/wmem_max (we have CAP_NET_ADMIN);
        // without the capability fall back to what the sysctl allows.
        if setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            sock.set_recv_buffer_size(SOCKET_BUFFER)?;
        }
        if setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
            sock.set_send_buffer_size(SOCKET_BUFFER)?;
        }
        Ok(())
    }

    /// The bound port.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The `SO_MARK` currently on the socket.
    ///
    /// # Errors
    /// getsockopt errors.
    pub fn fwmark(&self) -> io::Result<u32> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are live locals of the sizes the kernel writes.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u32::from_ne_bytes(value.to_ne_bytes()))
    }

    /// Sends one datagram (control traffic; the data path uses [`send_batch`](Self::send_batch)).
    pub fn send_to(&self, datagram: &[u8], dst: SocketAddr) {
        if let Err(e) = self.sock.send_to(datagram, &sockaddr_for(self.v6, dst)) {
            tracing::debug!(error = %e, %dst, "udp send failed");
        }
    }

    /// Receives up to [`BATCH`] datagrams with one recvmmsg. Returns how many; 0 after
    /// the receive timeout.
    ///
    /// # Errors
    /// Socket errors other than the timeout or an interrupt.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            let slot = &mut batch.data[i * SLOT..(i + 1) * SLOT];
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = SLOT;
            hdr.msg_hdr.msg_name = (&raw mut batch.names[i]).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        for (iov, hdr) in iovs.iter_mut().zip(hdrs.iter_mut()) {
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a distinct SLOT-byte region of `batch.data`, its
        // own sockaddr_storage and its own iovec, all alive and exclusively borrowed for
        // the call; the count passed is the array length.
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
        }
        Ok(n)
    }

    /// Sends `count` datagrams from `batch` with as few sendmmsg calls as possible. A
    /// datagram the kernel refuses (unreachable peer) is skipped, not retried.
    pub fn send_batch(&self, batch: &SendBatch) {
        let count = batch.count;
        let mut start = 0;
        while start < count {
            let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH];
            // SAFETY: plain old data, all-zero is valid.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            let mut names: [Option<SockAddr>; BATCH] = [const { None }; BATCH];
            let todo = count - start;
            for i in 0..todo {
                let j = start + i;
                let name = names[i].insert(sockaddr_for(self.v6, batch.addrs[j]));
                iovs[i].iov_base = batch.data[j * SLOT..].as_ptr().cast_mut().cast();
                iovs[i].iov_len = batch.lens[j];
                hdrs[i].msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
                hdrs[i].msg_hdr.msg_namelen = name.len();
            }
            for (iov, hdr) in iovs.iter_mut().zip(hdrs.iter_mut()).take(todo) {
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first `todo` headers point at live, initialised buffers of
            // the given lengths and at live socket addresses; sendmmsg only reads them.
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
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::debug!(error = %err, dst = %batch.addrs[start], "udp send failed, datagram dropped");
                start += 1;
            } else {
                start += usize::try_from(n).unwrap_or(1).max(1);
            }
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

/// Bytes per batch slot: a whole datagram.
pub const SLOT: usize = crate::device::MAX_DATAGRAM;

/// Preallocated receive buffers for one thread.
pub struct RecvBatch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            data: vec![0; SLOT * BATCH],
            // SAFETY: sockaddr_storage is plain old data, all-zero is valid.
            names: vec![unsafe { mem::zeroed() }; BATCH],
            lens: vec![0; BATCH],
            addrs: vec![None; BATCH],
        }
    }
}

impl RecvBatch {
    /// The i-th received datagram and its source.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let addr = (*self.addrs.get(i)?)?;
        let len = *self.lens.get(i)?;
        Some((addr, self.data.get(i * SLOT..i * SLOT + len)?))
    }
}

/// Preallocated send buffers for one thread.
pub struct SendBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    count: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            data: vec![0; SLOT * BATCH],
            lens: vec![0; BATCH],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            count: 0,
        }
    }
}

impl SendBatch {
    /// True when no more datagrams fit.
    #[must_use]
    pub const fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// True when nothing is queued.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next free slot, to encrypt into directly (no copy).
    pub fn next_slot(&mut self) -> &mut [u8] {
        let i = self.count.min(BATCH - 1);
        &mut self.data[i * SLOT..(i + 1) * SLOT]
    }

    /// Commits the slot returned by [`next_slot`](Self::next_slot).
    pub fn commit(&mut self, len: usize, dst: SocketAddr) {
        if self.count < BATCH {
            self.lens[self.count] = len.min(SLOT);
            self.addrs[self.count] = dst;
            self.count += 1;
        }
    }

    /// Copies a datagram in; returns false when the batch is full.
    pub fn push(&mut self, datagram: &[u8], dst: SocketAddr) -> bool {
        if self.is_full() || datagram.len() > SLOT {
            return false;
        }
        self.next_slot()[..datagram.len()].copy_from_slice(datagram);
        self.commit(datagram.len(), dst);
        true
    }

    /// Forgets the queued datagrams after they were sent.
    pub fn clear(&mut self) {
        self.count = 0;
    }
}

/// The device's current socket, swapped atomically when `listen_port` changes.
#[derive(Default)]
pub struct UdpSlot {
    current: RwLock<Option<Arc<Udp>>>,
}

impl UdpSlot {
    /// The current socket, if bound.
    #[must_use]
    pub fn get(&self) -> Option<Arc<Udp>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Network for Arc<UdpSlot> {
    fn bind(&self, port: u16, fwmark: u32) -> io::Result<u16> {
        let udp = Udp::bind(port, fwmark)?;
        let bound = udp.port();
        // Threads blocked on the old socket see the new one after RECV_TIMEOUT; the
        // old one closes when the last of them lets go.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(udp));
        Ok(bound)
    }

    fn set_fwmark(&self, fwmark: u32) -> io::Result<()> {
        match self.get() {
            Some(udp) => udp.sock.set_mark(fwmark),
            None => Ok(()),
        }
    }

    fn send_to(&self, datagram: &[u8], dst: SocketAddr) {
        if let Some(udp) = self.get() {
            udp.send_to(datagram, dst);
        }
    }
}
