//! The `NETLINK_XFRM` connection: one request at a time, each write
//! acknowledged, dumps read to the end.

use futures::StreamExt as _;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_proto::ConnectionHandle;
use netlink_sys::SocketAddr;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::{
    Direction, PolicyInfo, SaInfo, SaMessage, XFRM_MSG_DELPOLICY, XFRM_MSG_DELSA,
    XFRM_MSG_NEWPOLICY, XFRM_MSG_UPDPOLICY, XfrmError, parse_policy, parse_sa,
};
use crate::Errno;

/// `XFRM_MSG_GETSA`.
const XFRM_MSG_GETSA: u16 = 0x12;
/// `XFRM_MSG_GETPOLICY`.
const XFRM_MSG_GETPOLICY: u16 = 0x15;
/// `NETLINK_XFRM`.
const NETLINK_XFRM: isize = 6;

/// One XFRM message: its type and the bytes after the netlink header. SA
/// answers of a dump carry their keys, so the buffer is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Raw {
    kind: u16,
    payload: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw({:#x}, {} bytes)", self.kind, self.payload.len())
    }
}

impl NetlinkSerializable for Raw {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        self.payload.len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.payload);
    }
}

impl NetlinkDeserializable for Raw {
    type Error = std::convert::Infallible;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Ok(Self {
            kind: header.message_type,
            payload: Zeroizing::new(payload.to_vec()),
        })
    }
}

/// The kernel's IPsec tables, through `NETLINK_XFRM`.
#[derive(Debug)]
pub struct Xfrm {
    handle: Mutex<ConnectionHandle<Raw>>,
    task: JoinHandle<()>,
}

impl Drop for Xfrm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Xfrm {
    /// Opens a `NETLINK_XFRM` socket in the calling thread's network
    /// namespace and spawns its connection on the current tokio runtime.
    ///
    /// # Errors
    /// [`XfrmError::Socket`] (a kernel without `xfrm_user`).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn connect() -> Result<Self, XfrmError> {
        let (mut connection, handle, _unsolicited) =
            netlink_proto::new_connection::<Raw>(NETLINK_XFRM).map_err(XfrmError::Socket)?;
        connection.set_forward_ack(true);
        connection.set_forward_done(true);
        let task = tokio::spawn(connection);
        Ok(Self {
            handle: Mutex::new(handle),
            task,
        })
    }

    /// Sends `payload` as a message of `kind` with `flags`; returns the
    /// answers (none for an acknowledged write).
    async fn exchange(
        &self,
        op: &str,
        kind: u16,
        payload: Zeroizing<Vec<u8>>,
        flags: u16,
    ) -> Result<Vec<Raw>, XfrmError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut message =
            NetlinkMessage::new(header, NetlinkPayload::InnerMessage(Raw { kind, payload }));
        message.finalize();
        let handle = self.handle.lock().await;
        let mut answers = handle
            .request(message, SocketAddr::new(0, 0))
            .map_err(|err| XfrmError::Connection {
                op: op.to_owned(),
                detail: err.to_string(),
            })?;
        let mut out = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(raw) => out.push(raw),
                NetlinkPayload::Error(err) => match err.code {
                    None => break,
                    Some(code) => {
                        return Err(XfrmError::Kernel {
                            op: op.to_owned(),
                            errno: Errno(-code.get()),
                        });
                    }
                },
                NetlinkPayload::Done(_) => break,
                _ => {}
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        op: &str,
        kind: u16,
        payload: Zeroizing<Vec<u8>>,
    ) -> Result<(), XfrmError> {
        self.exchange(op, kind, payload, NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(drop)
    }

    /// Installs (or, for an update message, replaces) an SA.
    ///
    /// # Errors
    /// The kernel's refusal, e.g. `ENOENT` for an algorithm it lacks (no `esp4`).
    pub async fn add_sa(&self, message: SaMessage) -> Result<(), XfrmError> {
        self.write("installing an ESP SA", message.kind, message.payload)
            .await
    }

    /// Deletes the SA `spi` from `src` to `dst`; a missing one counts as deleted.
    ///
    /// # Errors
    /// Any other refusal.
    pub async fn delete_sa(
        &self,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        spi: u32,
    ) -> Result<(), XfrmError> {
        let payload = super::delete_sa(src, dst, spi)?;
        let op = format!("deleting the SA {spi:#x} from {src} to {dst}");
        absent_is_done(
            self.write(&op, XFRM_MSG_DELSA, Zeroizing::new(payload))
                .await,
        )
    }

    /// Installs a policy; an existing identical one counts as installed.
    ///
    /// # Errors
    /// The kernel's refusal.
    pub async fn add_policy(&self, policy: &super::Policy) -> Result<(), XfrmError> {
        let payload = super::new_policy(policy)?;
        let op = format!(
            "installing the {:?} policy {} -> {}",
            policy.dir, policy.src, policy.dst
        );
        match self
            .write(&op, XFRM_MSG_NEWPOLICY, Zeroizing::new(payload))
            .await
        {
            Err(XfrmError::Kernel { errno, .. }) if errno.raw() == libc::EEXIST => Ok(()),
            other => other,
        }
    }

    /// Installs a policy, or replaces the one with the same selector,
    /// direction and interface: how a pod CIDR moves to a peer's new SA
    /// (its key changed) without a moment without a policy.
    ///
    /// # Errors
    /// The kernel's refusal.
    pub async fn update_policy(&self, policy: &super::Policy) -> Result<(), XfrmError> {
        let payload = super::new_policy(policy)?;
        let op = format!(
            "installing the {:?} policy {} -> {}",
            policy.dir, policy.src, policy.dst
        );
        self.write(&op, XFRM_MSG_UPDPOLICY, Zeroizing::new(payload))
            .await
    }

    /// Deletes a policy; a missing one counts as deleted.
    ///
    /// # Errors
    /// Any other refusal.
    pub async fn delete_policy(
        &self,
        src: ipnetwork::IpNetwork,
        dst: ipnetwork::IpNetwork,
        dir: Direction,
        if_id: u32,
    ) -> Result<(), XfrmError> {
        let payload = super::delete_policy(src, dst, dir, if_id)?;
        let op = format!("deleting the {dir:?} policy {src} -> {dst}");
        absent_is_done(
            self.write(&op, XFRM_MSG_DELPOLICY, Zeroizing::new(payload))
                .await,
        )
    }

    /// Every SA in the namespace (keys are read by the kernel into the
    /// answer, wiped with it, never kept).
    ///
    /// # Errors
    /// The kernel's refusal, or an answer that does not parse.
    pub async fn sas(&self) -> Result<Vec<SaInfo>, XfrmError> {
        let answers = self.dump("listing the ESP SAs", XFRM_MSG_GETSA).await?;
        answers.iter().map(|raw| parse_sa(&raw.payload)).collect()
    }

    /// Every policy in the namespace.
    ///
    /// # Errors
    /// The kernel's refusal, or an answer that does not parse.
    pub async fn policies(&self) -> Result<Vec<PolicyInfo>, XfrmError> {
        let answers = self
            .dump("listing the XFRM policies", XFRM_MSG_GETPOLICY)
            .await?;
        answers
            .iter()
            .map(|raw| parse_policy(&raw.payload))
            .collect()
    }

    async fn dump(&self, op: &str, kind: u16) -> Result<Vec<Raw>, XfrmError> {
        // A dump request carries an empty (zeroed) id of the kind it lists.
        let empty = Zeroizing::new(vec![0u8; if kind == XFRM_MSG_GETSA { 24 } else { 64 }]);
        self.exchange(op, kind, empty, NLM_F_REQUEST | NLM_F_DUMP)
            .await
    }
}

fn absent_is_done(result: Result<(), XfrmError>) -> Result<(), XfrmError> {
    match result {
        Err(XfrmError::Kernel { errno, .. })
            if errno.raw() == libc::ENOENT || errno.raw() == libc::ESRCH =>
        {
            Ok(())
        }
        other => other,
    }
}
