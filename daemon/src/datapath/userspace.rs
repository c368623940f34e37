//! The userspace datapath as the agent sees it: a separate `wireseal-tunnel`
//! process (its own container in the DaemonSet) configured through the
//! standard UAPI socket, so it keeps forwarding while the agent restarts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::info;
use wireseal_core::{DatapathKind, DevicePlan, LinkSpec};
use wireseal_keymgr::PrivateKey;

use super::uapi::{decode_get, decode_set_answer, encode_set};
use super::{Datapath, DatapathError, DeviceObservation};

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

    async fn exchange(&self, request: &str, what: &str) -> Result<String, DatapathError> {
        let fail = |err: std::io::Error| {
            DatapathError::new(format!("{what} over {}", self.socket.display()), err)
        };
        let io = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut answer = String::new();
            // Both get and set answers end with an empty line after errno=.
            let mut limited = (&mut stream).take(MAX_ANSWER);
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = limited.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                answer.push_str(&String::from_utf8_lossy(&buf[..n]));
                if answer.ends_with("\n\n") && answer.contains("errno=") {
                    break;
                }
            }
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
        let child = command
            .spawn()
            .map_err(|err| DatapathError::new(format!("starting {}", binary.display()), err))?;
        info!(pid = child.id(), binary = %binary.display(), interface = %self.interface, "started the userspace datapath");
        Ok(())
    }
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
            return Err(DatapathError::new(
                format!(
                    "reaching the userspace datapath at {}",
                    self.socket.display()
                ),
                "no wireseal-tunnel process answers; start it (its own container in the DaemonSet) \
                 or pass --spawn-tunnel PATH",
            ));
        };
        self.spawn_tunnel(&binary)?;
        let deadline = tokio::time::Instant::now() + SPAWN_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.answers().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DatapathError::new(
            format!("waiting for {}", self.socket.display()),
            "the spawned wireseal-tunnel did not open its socket within 10 s",
        ))
    }

    async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
        let answer = self.exchange("get=1\n\n", "reading the device").await?;
        decode_get(&answer).map_err(|err| {
            DatapathError::new(
                format!("decoding the device from {}", self.socket.display()),
                err,
            )
        })
    }

    async fn apply(&mut self, plan: &DevicePlan, key: &PrivateKey) -> Result<(), DatapathError> {
        if plan.is_empty() {
            return Ok(());
        }
        let answer = self
            .exchange(&encode_set(plan, key), "configuring the device")
            .await?;
        decode_set_answer(&answer).map_err(|err| {
            DatapathError::new(
                format!("configuring the device over {}", self.socket.display()),
                err,
            )
        })
    }
}
