//! The userspace datapath as the agent sees it: a separate `wireseal-tunnel`
//! process (its own container in the DaemonSet) configured through the
//! standard UAPI socket, so it keeps forwarding while the agent restarts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::info;
use wireseal_core::{DatapathKind, DeviceObservation, DevicePlan, LinkSpec};
use wireseal_keymgr::PrivateKey;
use wireseal_netlink::wireguard::uapi::{
    decode_get, decode_set_answer, encode_alternate_key, encode_set,
};
use zeroize::Zeroizing;

use super::{Datapath, DatapathError};

/// How long one UAPI exchange may take.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a spawned tunnel process has to open its socket.
const SPAWN_WAIT: Duration = Duration::from_secs(10);
/// Largest UAPI answer read (a 5,000-peer device is about 2 MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// The userspace WireGuard device behind `DIR/IFACE.sock`.
#[derive(Debug)]
pub struct UserspaceDatapath {
    socket: PathBuf,
    interface: String,
    uapi_dir: PathBuf,
    spawn: Option<PathBuf>,
}

impl UserspaceDatapath {
    /// A datapath for `interface` with its socket in `uapi_dir`. With `spawn`,
    /// the agent starts that `wireseal-tunnel` binary when no process answers.
    #[must_use]
    pub fn new(interface: &str, uapi_dir: &Path, spawn: Option<PathBuf>) -> Self {
        Self {
            socket: uapi_dir.join(format!("{interface}.sock")),
            interface: interface.to_owned(),
            uapi_dir: uapi_dir.to_owned(),
            spawn,
        }
    }

    /// The UAPI socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request and its answer. The answer is wiped when dropped: a
    /// `get` answer carries the device's private key.
    async fn exchange(
        &self,
        request: &str,
        what: &'static str,
    ) -> Result<Zeroizing<String>, DatapathError> {
        let fail = |source: std::io::Error| DatapathError::UapiIo {
            what,
            socket: self.socket.clone(),
            source,
        };
        let io = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            // A `set` carries the private key: only to a listener of root or our
            // own user, never to whoever managed to bind the path first.
            let owner = stream.peer_cred()?.uid();
            if !trusted_listener(owner, nix::unistd::geteuid().as_raw()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("the socket is served by uid {owner}, neither root nor us"),
                ));
            }
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Zeroizing::new(Vec::<u8>::new());
            // Both get and set answers end with an empty line after errno=.
            let mut limited = (&mut stream).take(MAX_ANSWER);
            let mut buf = Zeroizing::new([0u8; 16 * 1024]);
            loop {
                let n = limited.read(&mut buf[..]).await?;
                if n == 0 {
                    break;
                }
                if answer.len() + n > answer.capacity() {
                    // Grow by copying into a fresh buffer and wiping the old
                    // one, rather than letting the Vec reallocate and leave
                    // the old bytes (a private key) behind.
                    let mut bigger =
                        Zeroizing::new(Vec::with_capacity((answer.len() + n).next_power_of_two()));
                    bigger.extend_from_slice(&answer);
                    answer = bigger;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.ends_with(b"\n\n") && answer.windows(6).any(|w| w == b"errno=") {
                    break;
                }
            }
            let answer = String::from_utf8(std::mem::take(&mut *answer)).map_err(|err| {
                // Wipe the refused bytes too.
                let _ = Zeroizing::new(err.into_bytes());
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the answer is not UTF-8")
            })?;
            let answer = Zeroizing::new(answer);
            Ok::<_, std::io::Error>(answer)
        };
        tokio::time::timeout(UAPI_TIMEOUT, io)
            .await
            .map_err(|_| {
                fail(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in 5 s",
                ))
            })?
            .map_err(fail)
    }

    /// Whether a process listens on the UAPI socket. A connection is enough:
    /// the full `get=1` that follows in `observe` would report a process that
    /// listens but does not answer, and reading the device here as well would
    /// double each pass's largest read (about 2 MB at 5,000 peers).
    async fn answers(&self) -> bool {
        UnixStream::connect(&self.socket).await.is_ok()
    }

    fn spawn_tunnel(&self, binary: &Path) -> Result<(), DatapathError> {
        let mut command = std::process::Command::new(binary);
        command
            .arg("--interface")
            .arg(&self.interface)
            .arg("--uapi-dir")
            .arg(&self.uapi_dir)
            .stdin(Stdio::null());
        // Its own process group: a Ctrl-C or a stop of the agent does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|source| DatapathError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
        info!(pid = child.id(), binary = %binary.display(), interface = %self.interface, "started the userspace datapath");
        Ok(())
    }
}

/// Whether a UAPI listener running as `uid` may be given our configuration and key.
const fn trusted_listener(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

impl Datapath for UserspaceDatapath {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Userspace
    }

    async fn ensure_link(&mut self, _link: &LinkSpec) -> Result<(), DatapathError> {
        if self.answers().await {
            return Ok(());
        }
        let Some(binary) = self.spawn.clone() else {
            return Err(DatapathError::NoTunnel {
                socket: self.socket.clone(),
            });
        };
        self.spawn_tunnel(&binary)?;
        let deadline = tokio::time::Instant::now() + SPAWN_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.answers().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DatapathError::SpawnTimeout {
            socket: self.socket.clone(),
            seconds: SPAWN_WAIT.as_secs(),
        })
    }

    async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
        let answer = self.exchange("get=1\n\n", "reading the device").await?;
        decode_get(&answer).map_err(|source| DatapathError::Uapi {
            what: "reading the device",
            socket: self.socket.clone(),
            source,
        })
    }

    async fn set_alternate_key(&mut self, key: Option<&PrivateKey>) -> Result<(), DatapathError> {
        let request = encode_alternate_key(key.map(PrivateKey::as_bytes));
        let answer = self.exchange(&request, "setting the alternate key").await?;
        decode_set_answer(&answer).map_err(|source| DatapathError::Uapi {
            what: "setting the alternate key",
            socket: self.socket.clone(),
            source,
        })
    }

    async fn apply(&mut self, plan: &DevicePlan, key: &PrivateKey) -> Result<(), DatapathError> {
        if plan.is_empty() {
            return Ok(());
        }
        let request = encode_set(plan, key.as_bytes());
        let answer = self.exchange(&request, "configuring the device").await?;
        decode_set_answer(&answer).map_err(|source| DatapathError::Uapi {
            what: "configuring the device",
            socket: self.socket.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn only_root_or_our_own_user_is_trusted() {
        assert!(trusted_listener(0, 1000));
        assert!(trusted_listener(1000, 1000));
        assert!(!trusted_listener(65534, 1000));
        assert!(!trusted_listener(65534, 0));
    }

    #[tokio::test]
    #[ignore = "needs root: listens as another user"]
    async fn the_key_goes_only_to_a_root_or_own_listener() {
        use nix::unistd::{Uid, seteuid};
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut datapath = UserspaceDatapath::new("wsu0", tmp.path(), None);
        // Another local user got to the path first (nextest gives this test its
        // own process, so the process-wide euid switch touches nothing else).
        seteuid(Uid::from_raw(65534)).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(datapath.socket());
        seteuid(Uid::from_raw(0)).unwrap();
        let listener = listener.unwrap();
        listener.set_nonblocking(true).unwrap();
        let key = PrivateKey::generate().unwrap();
        let mut plan = DevicePlan {
            listen_port: Some(51830),
            ..DevicePlan::default()
        };
        plan.set_private_key = Some(key.public_key());
        let err = datapath.apply(&plan, &key).await.unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{err:#}");
        let mut stream = listener.accept().expect("the agent connected").0;
        let mut got = Vec::new();
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = std::io::Read::read_to_end(&mut stream, &mut got);
        assert!(got.is_empty(), "nothing was sent to the impostor");
    }
}
