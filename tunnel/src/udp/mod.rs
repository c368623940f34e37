//! The WireGuard UDP socket: dual-stack, big buffers, fwmark, recvmmsg/sendmmsg.
#![allow(
    unsafe_code,
    reason = "socket options without a safe wrapper (setsockopt/getsockopt here) and recvmmsg/sendmmsg with GRO/GSO control messages in `batch`; every block says why it is sound"
)]

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::device::Network;

mod batch;
pub use batch::{RecvBatch, SEND_ENTRIES, SendBatch};

/// Socket buffer size asked for. The default 208 KiB overflows at a few hundred Mbit/s
/// of bursty TCP (see the research notes: RcvbufErrors → retransmits).
const SOCKET_BUFFER: usize = 7 << 20;

/// How long a receive thread blocks before it re-checks for a rebound socket (a rebind
/// also wakes it at once by shutting the old socket down; this is the fallback).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// Packets per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;

/// One bound UDP socket.
pub struct Udp {
    sock: Socket,
    port: u16,
    /// A dual-stack IPv6 socket wants IPv4 destinations in v4-mapped form.
    v6: bool,
    /// UDP GSO on send: probed at bind, switched off on the first EIO.
    gso: AtomicBool,
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

fn getsockopt_int(sock: &Socket, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals of the sizes the kernel writes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
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
        // Both offloads are optional: kernels without them just move one datagram at
        // a time. GRO makes the kernel hand us runs of datagrams as one buffer.
        let gso = getsockopt_int(&sock, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok();
        let gro = setsockopt_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        tracing::debug!(port, gso, gro, "udp socket bound");
        Ok(Self {
            sock,
            port,
            v6,
            gso: AtomicBool::new(gso),
        })
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
        let value = getsockopt_int(&self.sock, libc::SOL_SOCKET, libc::SO_MARK)?;
        Ok(u32::from_ne_bytes(value.to_ne_bytes()))
    }

    /// Sends one datagram (control traffic; the data path uses [`send_batch`](Self::send_batch)).
    pub fn send_to(&self, datagram: &[u8], dst: SocketAddr) {
        if let Err(e) = self.sock.send_to(datagram, &sockaddr_for(self.v6, dst)) {
            tracing::debug!(error = %e, %dst, "udp send failed");
        }
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
        // The old socket closes when the last thread using it lets go.
        let old = self
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Arc::new(udp));
        if let Some(old) = old {
            // Wake receive threads blocked on the old socket now instead of after
            // their timeout: a shut-down socket returns from recvmmsg at once. (Linux
            // reports ENOTCONN for an unconnected UDP socket but still does it.)
            let _ = old.sock.shutdown(std::net::Shutdown::Read);
        }
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
