//! The WireGuard device, configured from one [`DevicePlan`] through either of
//! its two protocols, side by side: [`kernel`] encodes it as generic netlink
//! messages (`wireguard` family) for kernel WireGuard, [`uapi`] as the text
//! of the cross-platform UAPI for the userspace datapath. Both read the
//! device back into the same [`wireseal_core::DeviceObservation`]. This module
//! also holds the generic netlink connection that carries the kernel's.

mod checked;
pub mod kernel;
pub mod uapi;

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use genetlink::{GenetlinkError, GenetlinkHandle};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::WireguardMessage;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::debug;
use wireseal_core::DevicePlan;

pub use kernel::{ALLOWED_IP_SINK, MAX_MESSAGE_LEN, WgDevice, WgPeer};
use kernel::{decode_get, encode_get, encode_set};

pub(crate) use self::checked::Checked;

use crate::error::{Errno, Error, Op};

/// A generic netlink connection for the `wireguard` family, spawned on the
/// current tokio runtime. Requests are serialised like [`crate::Netlink`]'s.
#[derive(Debug)]
pub struct WireGuard {
    handle: Mutex<GenetlinkHandle>,
    writes: AtomicU64,
    task: JoinHandle<()>,
}

impl WireGuard {
    /// Opens a `NETLINK_GENERIC` socket in the calling thread's network
    /// namespace. The `wireguard` family is resolved on first use, so this
    /// succeeds on kernels without WireGuard.
    ///
    /// # Errors
    /// [`Error::Socket`] when the socket cannot be opened.
    ///
    /// # Panics
    /// When called outside a tokio runtime (it spawns a task).
    pub fn connect() -> Result<Self, Error> {
        let (mut connection, handle, _unsolicited) =
            genetlink::new_connection().map_err(Error::Socket)?;
        // See `Netlink::connect`: make the end of a request explicit.
        connection.set_forward_ack(true);
        connection.set_forward_done(true);
        let task = tokio::spawn(connection);
        Ok(Self {
            handle: Mutex::new(handle),
            writes: AtomicU64::new(0),
            task,
        })
    }

    /// Number of `WG_CMD_SET_DEVICE` messages sent so far.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Reads the device `iface`.
    ///
    /// # Errors
    /// [`Error::WireGuardUnsupported`] when the kernel has no `wireguard`
    /// family, [`Error::LinkNotFound`] when `iface` does not exist or is not a
    /// WireGuard link, otherwise the kernel's error.
    pub async fn get_device(&self, iface: &str) -> Result<WgDevice, Error> {
        crate::error::check_name(iface)?;
        let op = Op::WgGetDevice {
            iface: iface.to_owned(),
        };
        let replies = self
            .exchange(
                &op,
                iface,
                encode_get(iface),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
            )
            .await?;
        let device = decode_get(replies);
        debug!(iface, peers = device.peers.len(), "wireguard get device");
        Ok(device)
    }

    /// Applies `plan` to `iface` (see [`kernel::encode_set`]), message by
    /// message; stops at the first message the kernel refuses, since later
    /// parts of a split peer depend on earlier ones. The private key is sent
    /// only when the plan sets it, and never logged; the copies inside the
    /// netlink crates' send buffers are not zeroed (they own them). An empty
    /// plan sends nothing.
    ///
    /// # Errors
    /// As [`Self::get_device`], with [`Op::WgSetDevice`] naming the message.
    pub async fn set_device(
        &self,
        iface: &str,
        plan: &DevicePlan,
        private_key: &[u8; 32],
    ) -> Result<(), Error> {
        crate::error::check_name(iface)?;
        let messages = encode_set(iface, plan, private_key, MAX_MESSAGE_LEN);
        let of = messages.len();
        for (message_index, message) in messages.into_iter().enumerate() {
            let op = Op::WgSetDevice {
                iface: iface.to_owned(),
                message: message_index,
                of,
            };
            self.writes.fetch_add(1, Ordering::Relaxed);
            let result = self
                .exchange(&op, iface, message, NLM_F_REQUEST | NLM_F_ACK)
                .await;
            debug!(%op, ok = result.is_ok(), "wireguard set device");
            result?;
        }
        Ok(())
    }

    async fn exchange(
        &self,
        op: &Op,
        iface: &str,
        message: WireguardMessage,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, Error> {
        let mut request = NetlinkMessage::from(GenlMessage::from_payload(Checked(message)));
        request.header.flags = flags;
        let mut handle = self.handle.lock().await;
        let mut replies = handle
            .request(request)
            .await
            .map_err(|err| genl_error(op, iface, &err))?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|_| Error::UnexpectedReply { op: op.clone() })?;
            let reply_flags = reply.header.flags;
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => {
                    out.push(genl.payload.0);
                    if reply_flags & NLM_F_MULTIPART == 0 && flags & NLM_F_ACK == 0 {
                        return Ok(out);
                    }
                }
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        None => Ok(out),
                        Some(code) => {
                            Err(kernel_error(op, iface, Errno(code.get().saturating_abs())))
                        }
                    };
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Overrun(_) => {
                    return Err(Error::UnexpectedReply { op: op.clone() });
                }
                _ => {}
            }
        }
        Err(Error::ConnectionClosed { op: op.clone() })
    }
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Maps a genetlink error without keeping it: its protocol variant holds the
/// request, which may contain the private key.
fn genl_error(op: &Op, iface: &str, err: &GenetlinkError) -> Error {
    match err {
        // The family lookup failed: ENOENT means no WireGuard in this kernel.
        GenetlinkError::NetlinkError(io) => {
            let errno = Errno(io.raw_os_error().unwrap_or(libc::EIO));
            if matches!(errno.raw(), libc::ENOENT | libc::ENODEV | libc::EOPNOTSUPP) {
                Error::WireGuardUnsupported {
                    iface: iface.to_owned(),
                    errno,
                }
            } else {
                Error::Kernel {
                    op: Op::WgResolveFamily,
                    errno,
                }
            }
        }
        GenetlinkError::AttributeNotFound(_) | GenetlinkError::DecodeError(_) => {
            Error::UnexpectedReply { op: op.clone() }
        }
        _ => Error::ConnectionClosed { op: op.clone() },
    }
}

fn kernel_error(op: &Op, iface: &str, errno: Errno) -> Error {
    match errno.raw() {
        // wg_get_device_start/wg_set_device: no such interface, or not a
        // WireGuard one (EOPNOTSUPP).
        libc::ENODEV | libc::EOPNOTSUPP => Error::LinkNotFound {
            iface: iface.to_owned(),
        },
        _ => Error::Kernel {
            op: op.clone(),
            errno,
        },
    }
}
