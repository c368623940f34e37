//! The command line. Every flag can also be set from a `WIRESEAL_*` environment
//! variable, which is how the DaemonSet passes them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// wireseal: encrypts every packet between pods on different nodes with WireGuard,
/// beside the cluster's existing CNI.
#[derive(Debug, Parser)]
#[command(name = "wireseal", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "WIRESEAL_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `wireseal=debug`).
    #[arg(long, global = true, default_value = "info", env = "WIRESEAL_LOG")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the per-node agent (as the DaemonSet does).
    Agent(Box<AgentArgs>),
    /// Manage this node's WireGuard key.
    Keys(KeysArgs),
    /// Show this node's peers and encryption coverage, from the running agent.
    Status(StatusArgs),
    /// Remove wireseal's rules, routes and datapath from this node (the CNI's
    /// plain routes take over again). Stop the agent first.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Tunnel interface name.
    #[arg(long, default_value = "wireseal0", env = "WIRESEAL_INTERFACE")]
    pub interface: String,
    /// wireseal's routing table.
    #[arg(long, default_value_t = 51830, env = "WIRESEAL_ROUTE_TABLE")]
    pub route_table: u32,
    /// Priority of wireseal's policy rule.
    #[arg(long, default_value_t = 90, env = "WIRESEAL_RULE_PRIORITY")]
    pub rule_priority: u32,
    /// Directory of the userspace datapath's UAPI socket.
    #[arg(long, default_value = "/var/run/wireguard", env = "WIRESEAL_UAPI_DIR")]
    pub uapi_dir: PathBuf,
    /// Seconds to keep the datapath up once the rules and routes are gone.
    /// Peers whose own cleanup has not run yet still encrypt to this node;
    /// the datapath keeps delivering that traffic until they switch. When
    /// every node is cleaned up at once (the cleanup DaemonSet), a drain
    /// longer than their skew loses nothing.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0,
        env = "WIRESEAL_DRAIN"
    )]
    pub drain: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's status endpoint.
    #[arg(long, default_value = "127.0.0.1:9830", env = "WIRESEAL_STATUS_ADDR")]
    pub status_addr: std::net::SocketAddr,

    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which WireGuard implementation carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatapathChoice {
    /// Kernel WireGuard when the kernel has it, the userspace datapath otherwise.
    Auto,
    /// Kernel WireGuard only; fail if the kernel has none.
    Kernel,
    /// The userspace datapath only.
    Userspace,
    /// Nothing on the node: the device, routes and rules are kept in memory.
    /// For tests and for watching what wireseal would do; carries no traffic.
    #[value(hide = true)]
    Memory,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Name of this node's Node object. Defaults to `NODE_NAME`, which the
    /// DaemonSet sets from `spec.nodeName` through the downward API.
    #[arg(long, env = "WIRESEAL_NODE_NAME")]
    pub node_name: Option<String>,

    /// Kubeconfig file. Without it: the in-cluster service account, then `KUBECONFIG`.
    #[arg(long, env = "WIRESEAL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// WireGuard implementation.
    #[arg(long, value_enum, default_value_t = DatapathChoice::Auto, env = "WIRESEAL_DATAPATH")]
    pub datapath: DatapathChoice,

    #[command(flatten)]
    pub state: StateArgs,

    /// Tunnel interface name (at most 15 bytes).
    #[arg(long, default_value = "wireseal0", env = "WIRESEAL_INTERFACE")]
    pub interface: String,

    /// WireGuard UDP port. Not 51820 on purpose: that one is taken by Kilo,
    /// Calico, flannel, Antrea and KubeSpan.
    #[arg(long, default_value_t = 51830, env = "WIRESEAL_LISTEN_PORT")]
    pub listen_port: u16,

    /// Tunnel MTU: `auto` (underlay route MTU minus 60 for IPv4, 80 for IPv6) or a number.
    #[arg(long, default_value = "auto", env = "WIRESEAL_MTU")]
    pub mtu: String,

    /// Address peers send this node's encrypted packets to, `ip` or `ip:port`.
    /// Default: the node's InternalIP and the listen port.
    #[arg(long, env = "WIRESEAL_ENDPOINT")]
    pub endpoint: Option<String>,

    /// fwmark on the datapath's own UDP packets, so they skip wireseal's rule
    /// (hex with 0x, or decimal).
    #[arg(long, default_value = "0x10000000", env = "WIRESEAL_FWMARK")]
    pub fwmark: String,

    /// wireseal's routing table.
    #[arg(long, default_value_t = 51830, env = "WIRESEAL_ROUTE_TABLE")]
    pub route_table: u32,

    /// Priority of wireseal's policy rule (before the main table's 32766).
    #[arg(long, default_value_t = 90, env = "WIRESEAL_RULE_PRIORITY")]
    pub rule_priority: u32,

    /// Persistent keepalive in seconds (0: off). Needed only when nodes sit behind NAT.
    #[arg(long, default_value_t = 0, env = "WIRESEAL_PERSISTENT_KEEPALIVE")]
    pub persistent_keepalive: u16,

    /// Directory of the userspace datapath's UAPI socket (`IFACE.sock`).
    #[arg(long, default_value = "/var/run/wireguard", env = "WIRESEAL_UAPI_DIR")]
    pub uapi_dir: PathBuf,

    /// Start this `wireseal-tunnel` binary when the userspace datapath is chosen
    /// and none answers. In the DaemonSet the tunnel runs as its own container instead.
    #[arg(long, env = "WIRESEAL_SPAWN_TUNNEL")]
    pub spawn_tunnel: Option<PathBuf>,

    /// Address of the local /healthz, /readyz, /metrics and /status endpoint.
    #[arg(long, default_value = "127.0.0.1:9830", env = "WIRESEAL_STATUS_ADDR")]
    pub status_addr: std::net::SocketAddr,

    /// Seconds between full reconcile passes when nothing changes.
    #[arg(long, default_value_t = 30, env = "WIRESEAL_RESYNC_INTERVAL")]
    pub resync_interval: u64,

    /// Seconds after which the API server ends a Node watch and the agent re-watches.
    #[arg(
        long,
        default_value_t = 290,
        env = "WIRESEAL_WATCH_TIMEOUT",
        hide = true
    )]
    pub watch_timeout: u32,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Directory holding the private key (created 0700; the key file is 0600).
    // Global, so `wireseal keys public --state-dir DIR` works as well as
    // `wireseal keys --state-dir DIR public`.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/wireseal",
        env = "WIRESEAL_STATE_DIR"
    )]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub state: StateArgs,

    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create this node's key if there is none, and print its public key.
    Generate {
        /// Create the next key for a rotation beside the current one instead.
        #[arg(long)]
        next: bool,
    },
    /// Print the public key of this node's key.
    Public {
        /// Of the next key (rotation) instead of the current one.
        #[arg(long)]
        next: bool,
    },
    /// Print the path of the key file.
    ShowPath {
        /// Of the next key (rotation) instead of the current one.
        #[arg(long)]
        next: bool,
    },
}
