//! The leak counter: packets that leave this node for another node's pod
//! CIDR *not* through the tunnel, counted by the kernel in an `nftables`
//! table of wireseal's own (`inet wireseal`):
//!
//! ```text
//! table inet wireseal {
//!     set remote4 { type ipv4_addr; flags interval; }
//!     set remote6 { type ipv6_addr; flags interval; }
//!     chain leaks {
//!         type filter hook postrouting priority 300; policy accept;
//!         oifname != "lo" oifname != "wireseal0" meta nfproto ipv4 ip daddr @remote4 counter
//!         oifname != "lo" oifname != "wireseal0" meta nfproto ipv6 ip6 daddr @remote6 counter
//!     }
//! }
//! ```
//!
//! The rules have no verdict and the chain's policy is accept: they count and
//! never change what happens to a packet. Postrouting sees both forwarded pod
//! packets and the host's own, after routing chose the output interface; a
//! packet strict mode drops never gets there, so strict mode keeps the
//! counter at zero. The table is not owned by the agent's socket (no
//! `NFT_TABLE_F_OWNER`): it outlives the agent, so packets that leak while
//! the agent is stopped are still counted and reported when it starts
//! again. `wireseal cleanup` deletes it.
//!
//! Why the messages are encoded here: the few `nf_tables` messages needed
//! (one table, one chain, two sets, two rules, element updates, a rule dump)
//! are a few hundred lines on top of `netlink-packet-core` and `netlink-sys`,
//! which this crate already uses. The alternatives were worse for an
//! Apache-2.0 project: `rustables` is GPL; Mullvad's `nftnl` binds the C
//! `libnftnl`/`libmnl` (a build and image dependency) and cannot read rules
//! back, so the counters could not be read without more C bindings; the
//! `nftables` crate drives the `nft` binary, and the agent must not shell
//! out.

mod message;

use std::time::Duration;

use ipnetwork::IpNetwork;
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket};
use tracing::debug;
use wireseal_core::Family;

use crate::error::{Errno, Error, Op};
use message::{Batch, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE, NLMSG_DONE, NLMSG_ERROR};

pub use message::{CHAIN as LEAK_CHAIN, TABLE as LEAK_TABLE};

/// How long one answer from the kernel may take before the request fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most intervals of one family per transaction: an IPv6 interval is two
/// elements, 64 bytes, so a transaction stays near 130 KiB, inside the
/// default socket send buffer (about 200 KiB).
const INTERVALS_PER_BATCH: usize = 1024;
/// Receive buffer: the replies here are a handful of small messages.
const RECV_BUFFER: usize = 64 * 1024;

/// Packets and bytes counted for one family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leaked {
    /// Packets counted.
    pub packets: u64,
    /// Their bytes (IP header included).
    pub bytes: u64,
}

/// The counters of both families, as the kernel holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakCounts {
    /// IPv4 packets to remote pod CIDRs that did not go through the tunnel.
    pub ipv4: Leaked,
    /// IPv6 packets likewise.
    pub ipv6: Leaked,
}

impl LeakCounts {
    /// The counter of `family`.
    #[must_use]
    pub fn of(&self, family: Family) -> Leaked {
        match family {
            Family::V4 => self.ipv4,
            Family::V6 => self.ipv6,
        }
    }
}

/// A `NETLINK_NETFILTER` socket that manages the leak-counting table for a
/// tunnel interface. Requests take `&mut self`: one at a time.
pub struct LeakCounter {
    socket: TokioSocket,
    seq: u32,
    tunnel: String,
}

impl std::fmt::Debug for LeakCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakCounter")
            .field("seq", &self.seq)
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

impl LeakCounter {
    /// Opens the socket, in the calling thread's network namespace. The
    /// rules exclude packets leaving through `tunnel`.
    ///
    /// # Errors
    /// [`Error::Socket`] when the socket cannot be opened (a kernel without
    /// `nfnetlink` refuses it; [`Error::unsupported`] says so), and
    /// [`Error::InvalidName`] for a tunnel name the kernel would not take.
    ///
    /// # Panics
    /// When called outside a tokio runtime (the socket registers with it).
    pub fn open(tunnel: &str) -> Result<Self, Error> {
        crate::error::check_name(tunnel)?;
        let mut socket = TokioSocket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        socket
            .socket_mut()
            .bind_auto()
            .and_then(|_| socket.socket_mut().connect(&SocketAddr::new(0, 0)))
            // Errors without the failed request echoed: a large element
            // message would not fit the receive buffer.
            .and_then(|()| socket.socket_ref().set_cap_ack(true))
            .map_err(Error::Socket)?;
        Ok(Self {
            socket,
            seq: 1,
            tunnel: tunnel.to_owned(),
        })
    }

    /// Reads both counters. `None` when the table or its chain is missing,
    /// or its rules are not exactly the two this version makes for this
    /// tunnel: then [`LeakCounter::create`] makes it anew.
    ///
    /// # Errors
    /// When the dump fails other than with `ENOENT` (no table or chain).
    pub async fn read(&mut self) -> Result<Option<LeakCounts>, Error> {
        let op = Op::ReadLeakCounters;
        let request = Batch::dump_rules(self.seq);
        self.seq = request.next_seq();
        self.send(&op, &request.bytes).await?;
        let mut rules = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        'read: loop {
            self.recv(&op, &mut buf).await?;
            for reply in message::replies(&buf) {
                match reply.kind {
                    NLMSG_DONE => break 'read,
                    NLMSG_ERROR => match message::error_code(reply.payload) {
                        Some(0) => break 'read,
                        Some(libc::ENOENT) => return Ok(None),
                        Some(errno) => {
                            return Err(Error::Kernel {
                                op,
                                errno: Errno(errno),
                            });
                        }
                        None => return Err(Error::UnexpectedReply { op }),
                    },
                    kind if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                        rules.push(
                            message::parse_rule(reply.payload)
                                .ok_or_else(|| Error::UnexpectedReply { op: op.clone() })?,
                        );
                    }
                    _ => {}
                }
            }
        }
        debug!(rules = rules.len(), "read the leak counters");
        let mut counts = LeakCounts::default();
        for family in [Family::V4, Family::V6] {
            let expected = message::rule_comment(family, &self.tunnel);
            let mut matching = rules
                .iter()
                .filter(|rule| rule.comment.as_deref() == Some(expected.as_str()));
            let (Some(rule), None) = (matching.next(), matching.next()) else {
                return Ok(None);
            };
            let counted = Leaked {
                packets: rule.packets,
                bytes: rule.bytes,
            };
            match family {
                Family::V4 => counts.ipv4 = counted,
                Family::V6 => counts.ipv6 = counted,
            }
        }
        Ok((rules.len() == 2).then_some(counts))
    }

    /// Makes the table afresh in one transaction: whatever `inet wireseal`
    /// held is replaced by the sets (filled with `remote`) and the counting
    /// chain, with counters at zero.
    ///
    /// # Errors
    /// The kernel's refusal; `EOPNOTSUPP` when it has no `nf_tables`
    /// ([`Error::unsupported`]).
    pub async fn create(&mut self, remote: &[IpNetwork]) -> Result<(), Error> {
        let tunnel = self.tunnel.clone();
        self.write_sets(Op::CreateLeakTable, remote, |batch| {
            batch.recreate_table();
            for family in [Family::V4, Family::V6] {
                batch.set(family);
            }
            batch.chain();
            for family in [Family::V4, Family::V6] {
                batch.rule(family, &tunnel);
            }
        })
        .await
    }

    /// Replaces both sets' elements with `remote` (the other nodes' pod
    /// CIDRs), atomically; the counters keep counting.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` when the table went missing).
    pub async fn set_remote(&mut self, remote: &[IpNetwork]) -> Result<(), Error> {
        let op = Op::SetLeakCidrs {
            count: remote.len(),
        };
        self.write_sets(op, remote, |batch| {
            for family in [Family::V4, Family::V6] {
                batch.flush_elements(family);
            }
        })
        .await
    }

    /// Sends `head` with the sets' elements for `remote`. A transaction is
    /// one datagram, which must fit the socket's send buffer: up to
    /// [`INTERVALS_PER_BATCH`] intervals per family go with `head`, so the
    /// change is atomic; the rest (only with so many gaps between the pod
    /// CIDRs, which merge when they touch) follow in more transactions, and
    /// a packet may meet the set between them, partly filled.
    async fn write_sets(
        &mut self,
        op: Op,
        remote: &[IpNetwork],
        head: impl FnOnce(&mut Batch),
    ) -> Result<(), Error> {
        let v4 = message::intervals(Family::V4, remote);
        let v6 = message::intervals(Family::V6, remote);
        let mut v4 = v4.chunks(INTERVALS_PER_BATCH);
        let mut v6 = v6.chunks(INTERVALS_PER_BATCH);
        let first = Batch::transaction(self.seq, |batch| {
            head(batch);
            for (family, chunk) in [(Family::V4, v4.next()), (Family::V6, v6.next())] {
                batch.add_elements(family, chunk.unwrap_or_default());
            }
        });
        self.transact(op.clone(), first).await?;
        let rest = v4
            .map(|chunk| (Family::V4, chunk))
            .chain(v6.map(|chunk| (Family::V6, chunk)));
        for (family, chunk) in rest {
            let batch = Batch::transaction(self.seq, |batch| batch.add_elements(family, chunk));
            self.transact(op.clone(), batch).await?;
        }
        Ok(())
    }

    /// Deletes the table. Returns whether it was there.
    ///
    /// # Errors
    /// The kernel's refusal other than `ENOENT`.
    pub async fn remove(&mut self) -> Result<bool, Error> {
        let batch = Batch::transaction(self.seq, Batch::delete_table);
        match self.transact(Op::DeleteLeakTable, batch).await {
            Ok(()) => Ok(true),
            Err(err) if err.errno() == Some(Errno(libc::ENOENT)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Sends a transaction and waits for the acknowledgement of each of its
    /// messages. The kernel reports every message's result after the whole
    /// batch; the first error is returned.
    async fn transact(&mut self, op: Op, batch: Batch) -> Result<(), Error> {
        self.seq = batch.next_seq();
        let begin = batch.acked.first().map_or(0, |seq| seq.wrapping_sub(1));
        self.send(&op, &batch.bytes).await?;
        let mut waiting: Vec<u32> = batch.acked.clone();
        let mut failed: Option<i32> = None;
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        while !waiting.is_empty() {
            self.recv(&op, &mut buf).await?;
            for reply in message::replies(&buf) {
                if reply.kind != NLMSG_ERROR {
                    continue;
                }
                let code = message::error_code(reply.payload)
                    .ok_or_else(|| Error::UnexpectedReply { op: op.clone() })?;
                if code != 0 && failed.is_none() {
                    failed = Some(code);
                }
                // The batch itself refused (no nf_tables, no permission):
                // no message of it was looked at.
                if reply.seq == begin && code != 0 {
                    waiting.clear();
                }
                waiting.retain(|seq| *seq != reply.seq);
            }
        }
        debug!(%op, ok = failed.is_none(), "nftables transaction");
        match failed {
            None => Ok(()),
            Some(errno) => Err(Error::Kernel {
                op,
                errno: Errno(errno),
            }),
        }
    }

    async fn send(&mut self, op: &Op, bytes: &[u8]) -> Result<(), Error> {
        self.socket
            .send(bytes)
            .await
            .map(drop)
            .map_err(|source| Error::Io {
                op: op.clone(),
                source,
            })
    }

    async fn recv(&mut self, op: &Op, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.clear();
        match tokio::time::timeout(REPLY_TIMEOUT, self.socket.recv(buf)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::Io {
                op: op.clone(),
                source,
            }),
            Err(_) => Err(Error::Io {
                op: op.clone(),
                source: std::io::ErrorKind::TimedOut.into(),
            }),
        }
    }
}
