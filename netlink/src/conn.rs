//! The rtnetlink connection and the one request/response helper every
//! operation goes through.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{Errno, Error, Op};

/// How often a dump the kernel flags as interrupted (`NLM_F_DUMP_INTR`: the
/// table changed while it was read) is retried before its result is used anyway.
const DUMP_ATTEMPTS: usize = 3;

/// One rtnetlink connection, spawned on the current tokio runtime.
///
/// Requests are serialised: the kernel tracks one dump per socket and answers a
/// second concurrent one with `EBUSY` (firezone's reason for the same lock), and
/// one request at a time also keeps the write counter and the logs in order.
#[derive(Debug)]
pub struct Netlink {
    handle: Mutex<rtnetlink::Handle>,
    writes: AtomicU64,
    task: JoinHandle<()>,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace
    /// and spawns its connection task on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Socket`] when the socket cannot be opened.
    ///
    /// # Panics
    /// When called outside a tokio runtime (it spawns a task).
    pub fn connect() -> Result<Self, Error> {
        let (mut connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(Error::Socket)?;
        // Without these the stream of a request just ends on the kernel's ACK
        // or NLMSG_DONE, which looks the same as a dead connection.
        connection.set_forward_ack(true);
        connection.set_forward_done(true);
        let task = tokio::spawn(connection);
        Ok(Self {
            handle: Mutex::new(handle),
            writes: AtomicU64::new(0),
            task,
        })
    }

    /// Number of write requests (create, change, delete) sent to the kernel
    /// through this handle so far, successful or not. Reads are not counted.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sends one write request and waits for the kernel's acknowledgement.
    pub(crate) async fn write(
        &self,
        op: &Op,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let result = self
            .exchange(op, message, NLM_F_REQUEST | NLM_F_ACK | flags)
            .await
            .map(drop);
        debug!(%op, ok = result.is_ok(), errno = ?result.as_ref().err().and_then(Error::errno).map(Errno::raw), "netlink write");
        result
    }

    /// Sends a request that is answered by one message (`RTM_GET*` without dump).
    pub(crate) async fn get(
        &self,
        op: &Op,
        message: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage, Error> {
        let replies = self.exchange(op, message, NLM_F_REQUEST).await?;
        debug!(%op, replies = replies.len(), "netlink get");
        replies
            .into_iter()
            .next()
            .map(|(_, reply)| reply)
            .ok_or_else(|| Error::UnexpectedReply { op: op.clone() })
    }

    /// Sends a dump request and collects every reply. A dump the kernel flags
    /// as interrupted is retried a few times, then returned as read.
    pub(crate) async fn dump(
        &self,
        op: &Op,
        message: &RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let mut attempt = 1;
        loop {
            let replies = self
                .exchange(op, message.clone(), NLM_F_REQUEST | NLM_F_DUMP)
                .await?;
            let interrupted = replies
                .iter()
                .any(|(flags, _)| flags & NLM_F_DUMP_INTR != 0);
            debug!(%op, replies = replies.len(), interrupted, attempt, "netlink dump");
            if !interrupted || attempt == DUMP_ATTEMPTS {
                return Ok(replies.into_iter().map(|(_, reply)| reply).collect());
            }
            attempt += 1;
        }
    }

    /// Sends `message` and reads the answer until the kernel says it is
    /// complete: an ACK or error, `NLMSG_DONE`, or a single non-multipart reply.
    async fn exchange(
        &self,
        op: &Op,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<(u16, RouteNetlinkMessage)>, Error> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut handle = self.handle.lock().await;
        let mut replies = handle
            .request(request)
            .map_err(|_| Error::ConnectionClosed { op: op.clone() })?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            let reply_flags = reply.header.flags;
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    out.push((reply_flags, inner));
                    let multipart = reply_flags & NLM_F_MULTIPART != 0;
                    if !multipart && flags & NLM_F_ACK == 0 {
                        return Ok(out);
                    }
                }
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        None => Ok(out),
                        Some(code) => Err(Error::Kernel {
                            op: op.clone(),
                            errno: Errno(code.get().saturating_abs()),
                        }),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Overrun(_) => {
                    return Err(Error::UnexpectedReply { op: op.clone() });
                }
                // Noop and future payload kinds carry nothing for us.
                _ => {}
            }
        }
        // The stream ended without the kernel's final word: the connection
        // task is gone.
        Err(Error::ConnectionClosed { op: op.clone() })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The connection task only serves this handle.
        self.task.abort();
    }
}
