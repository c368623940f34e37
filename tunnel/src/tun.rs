//! The TUN device (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`).
//!
//! The device disappears when the last fd closes (it is not made persistent), so a
//! crashed datapath leaves nothing behind; the agent re-creates the addresses and
//! routes after a restart.
#![allow(
    unsafe_code,
    reason = "the TUN device is configured with ioctls (TUNSETIFF, TUNSETOFFLOAD, SIOCGIFFLAGS/SIOCSIFFLAGS) on C structs; every block says why it is sound"
)]

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read as _, Write as _};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use thiserror::Error;

/// Why the TUN device could not be opened.
#[derive(Debug, Error)]
pub enum TunError {
    /// The interface name is empty, too long (15 bytes max) or has bad characters.
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// `/dev/net/tun` could not be opened (missing module, no CAP_NET_ADMIN,
    /// a container whose device cgroup leaves it out).
    #[error("opening /dev/net/tun: {0}{hint}", hint = open_hint(.0))]
    Open(io::Error),
    /// The TUNSETIFF ioctl failed (e.g. a non-TUN link of that name exists).
    #[error("creating or attaching TUN {name}: {source}")]
    SetIff {
        /// The interface.
        name: String,
        /// The ioctl error.
        source: io::Error,
    },
}

/// Opening a device node needs no capability: EPERM comes from the device
/// cgroup, which is what runc 1.2.0 to 1.2.3 got wrong for this device. Said
/// on the same line, since it is all a container's log will show.
fn open_hint(err: &io::Error) -> &'static str {
    if err.raw_os_error() == Some(libc::EPERM) {
        " (the container runtime does not allow this device: runc 1.2.0 to 1.2.3 \
         leave it out of a container's device cgroup; upgrade runc, see deploy/README.md)"
    } else {
        ""
    }
}

/// An open TUN queue.
pub struct Tun {
    file: File,
    name: String,
    /// Every read and write carries a virtio-net header (`IFF_VNET_HDR`).
    vnet: bool,
    /// The kernel accepted TSO: reads may be TCP super-segments to split.
    tso: bool,
    warned_gso: std::sync::atomic::AtomicBool,
}

/// Checks a Linux interface name: 1–15 bytes, no '/', no whitespace, not "." or "..".
///
/// # Errors
/// [`TunError::BadName`].
pub fn validate_name(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(TunError::BadName(name.to_owned()))
    }
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

impl Tun {
    /// Creates the TUN interface `name`, or attaches to an existing one of that name.
    /// With `offload`, asks for the virtio-net header and TSO/checksum offload (the
    /// kernel then hands us TCP super-segments); without the kernel's consent to TSO it
    /// keeps the header but only ever sees plain packets.
    ///
    /// # Errors
    /// [`TunError`].
    pub fn open(name: &str, offload: bool) -> Result<Self, TunError> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        let mut req = ifreq_for(name);
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if offload {
            flags |= libc::IFF_VNET_HDR;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads (and writes back the name into) the ifreq we pass,
        // which is a valid, initialised libc::ifreq living across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
        if rc < 0 {
            return Err(TunError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let tso = offload
            && {
                let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
                // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is a TUN fd.
                let rc = unsafe {
                    libc::ioctl(
                        file.as_raw_fd(),
                        libc::TUNSETOFFLOAD,
                        libc::c_ulong::from(features),
                    )
                };
                if rc < 0 {
                    tracing::warn!(error = %io::Error::last_os_error(), "TUN offloads refused, packets go one by one");
                }
                rc == 0
            };
        Ok(Self {
            file,
            name: name.to_owned(),
            vnet: offload,
            tso,
            warned_gso: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// True when reads and writes carry a virtio-net header.
    #[must_use]
    pub const fn vnet(&self) -> bool {
        self.vnet
    }

    /// True when the kernel may hand us TCP super-segments.
    #[must_use]
    pub const fn tso(&self) -> bool {
        self.tso
    }

    /// The interface name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the link up (the agent owns addresses, routes and the MTU).
    ///
    /// # Errors
    /// ioctl errors.
    pub fn set_up(&self) -> io::Result<()> {
        let sock: OwnedFd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let mut req = ifreq_for(&self.name);
        // SAFETY: SIOCGIFFLAGS fills ifru_flags of the valid ifreq we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the union member just written by SIOCGIFFLAGS is ifru_flags.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads the valid ifreq we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until a packet can be read, at most `timeout`. Returns true when readable.
    ///
    /// # Errors
    /// poll errors other than an interrupt.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one IP packet without blocking. `Ok(None)` when none is queued.
    ///
    /// # Errors
    /// Read errors.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a buffer as is (it already starts with a virtio-net header when
    /// [`vnet`](Self::vnet) is on).
    pub fn write_raw(&self, buf: &[u8]) {
        if let Err(e) = (&self.file).write(buf)
            && e.kind() != io::ErrorKind::WouldBlock
        {
            // A kernel refusing our GSO super-segments would lose data silently at
            // debug level; say so once, loudly.
            if e.kind() == io::ErrorKind::InvalidInput
                && !self
                    .warned_gso
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(error = %e, "TUN rejected a merged (GRO) packet");
            }
            tracing::debug!(error = %e, "tun write failed");
        }
    }

    /// Writes one IP packet (behind an all-zero virtio-net header when enabled: no
    /// GSO, and the checksum is already complete). A full TUN queue drops the packet,
    /// as a NIC would.
    pub fn write_packet(&self, packet: &[u8]) {
        let result = if self.vnet {
            let hdr = [0u8; crate::offload::VNET_HDR_LEN];
            (&self.file).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(packet)])
        } else {
            (&self.file).write(packet)
        };
        if let Err(e) = result
            && e.kind() != io::ErrorKind::WouldBlock
        {
            tracing::debug!(error = %e, "tun write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_cgroup_refusal_says_so_on_one_line() {
        let denied = TunError::Open(io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(
            denied.starts_with(
                "opening /dev/net/tun: Operation not permitted (os error 1) (the container runtime"
            ),
            "{denied}"
        );
        assert!(denied.contains("runc 1.2.0 to 1.2.3") && !denied.contains('\n'));
        let missing = TunError::Open(io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert_eq!(
            missing,
            "opening /dev/net/tun: No such file or directory (os error 2)"
        );
    }
}
