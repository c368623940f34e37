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
    /// Prove that east-west traffic is encrypted: every node as the API
    /// server shows it and, on a node, an active probe of every peer.
    /// Exit code 0 when everything passed, 1 on a failure, 2 when nothing
    /// could be checked.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Kubeconfig for the cluster checks (default: in-cluster, then
    /// KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "WIRESEAL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the agent's DaemonSet, whose pods show which nodes run
    /// a live agent.
    #[arg(long, default_value = "wireseal")]
    pub namespace: String,
    /// Skip the cluster checks.
    #[arg(long)]
    pub no_cluster: bool,
    /// Skip the local checks (the agent on this node and the probes).
    #[arg(long)]
    pub no_local: bool,
    /// Skip the active probes.
    #[arg(long)]
    pub no_probe: bool,
    /// Check only these peers (repeatable).
    #[arg(long, value_name = "NODE")]
    pub peer: Vec<String>,
    /// The local agent's state directory, where its root-only status socket
    /// (`status.sock`) is.
    #[arg(long, default_value = "/var/lib/wireseal", env = "WIRESEAL_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Tunnel interface name (frames on it are not inspected).
    #[arg(long, default_value = "wireseal0", env = "WIRESEAL_INTERFACE")]
    pub interface: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Tunnel interface name.
    #[arg(long, default_value = "wireseal0", env = "WIRESEAL_INTERFACE")]
    pub interface: String,
    /// wireseal's routing table.
    #[arg(long, default_value_t = 51830, env = "WIRESEAL_ROUTE_TABLE")]
    pub route_table: u32,
    /// Priority of wireseal's policy rule (the catch-all table's is the next).
    #[arg(long, default_value_t = 90, env = "WIRESEAL_RULE_PRIORITY")]
    pub rule_priority: u32,
    /// Routing table of strict mode's catch-alls.
    #[arg(long, default_value_t = 51831, env = "WIRESEAL_CATCH_ALL_TABLE")]
    pub catch_all_table: u32,
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
    /// The agent's state directory, where its root-only status socket
    /// (`status.sock`) is.
    #[arg(long, default_value = "/var/lib/wireseal", env = "WIRESEAL_STATE_DIR")]
    pub state_dir: PathBuf,

    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// The whole cluster instead of this node: every Node's datapath, key,
    /// `WiresealEncrypted` condition and peer counts, from the API server.
    #[arg(long)]
    pub all: bool,

    /// With --all: kubeconfig file (default: in-cluster config, then KUBECONFIG).
    #[arg(long, env = "WIRESEAL_KUBECONFIG", requires = "all")]
    pub kubeconfig: Option<PathBuf>,

    /// With --all: the namespace of the agent's pods.
    #[arg(long, default_value = "wireseal", requires = "all")]
    pub namespace: String,
}

/// A listening address, or `off` (or empty) for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "" | "off" => Ok(Self(None)),
            addr => addr
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|_| format!("{addr:?} is not an address of the form ip:port (or off)")),
        }
    }
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

/// How pod traffic between nodes is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncryptionChoice {
    /// WireGuard, on the datapath `--datapath` picks.
    Wireguard,
    /// Kernel IPsec (XFRM/ESP).
    Ipsec,
}

impl From<EncryptionChoice> for wireseal_core::Encryption {
    fn from(choice: EncryptionChoice) -> Self {
        match choice {
            EncryptionChoice::Wireguard => Self::WireGuard,
            EncryptionChoice::Ipsec => Self::Ipsec,
        }
    }
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

    /// How pod traffic between nodes is encrypted: `wireguard`, or `ipsec`
    /// (kernel ESP with AES-256-GCM, keys derived per node pair from the
    /// nodes' published keys; kernel-only, never a fallback to plaintext).
    /// Every node of a cluster must use the same one.
    #[arg(long, value_enum, default_value_t = EncryptionChoice::Wireguard, env = "WIRESEAL_ENCRYPTION")]
    pub encryption: EncryptionChoice,

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

    /// Priority of wireseal's policy rule (before the main table's 32766). In
    /// strict mode the catch-all table's rule takes the next one.
    #[arg(long, default_value_t = 90, env = "WIRESEAL_RULE_PRIORITY")]
    pub rule_priority: u32,

    /// The cluster's pod networks, comma-separated, IPv4 and IPv6 (e.g. the
    /// controller manager's --cluster-cidr). Every pod CIDR a node claims
    /// must lie inside them; the wireseal.dev/pod-cidrs override is honoured
    /// only when they are set; in strict mode, what is not encrypted within
    /// them is dropped.
    #[arg(long, value_delimiter = ',', env = "WIRESEAL_CLUSTER_CIDRS")]
    pub cluster_cidrs: Vec<String>,

    /// Send to a peer's endpoint only inside these networks, comma-separated
    /// (e.g. the nodes' subnets). Default: any routable address.
    #[arg(long, value_delimiter = ',', env = "WIRESEAL_PEER_ENDPOINT_CIDRS")]
    pub peer_endpoint_cidrs: Vec<String>,

    /// Fail closed: traffic to the cluster CIDRs (without them, to every
    /// node's pod CIDRs) that cannot be encrypted is dropped, never sent in
    /// clear; a peer's traffic enters the tunnel before its first handshake.
    #[arg(long, env = "WIRESEAL_STRICT")]
    pub strict: bool,

    /// Ranges inside the cluster CIDRs that strict mode lets through in
    /// clear when no peer covers them (e.g. pod CIDRs of nodes that cannot
    /// run wireseal), comma-separated.
    #[arg(long, value_delimiter = ',', env = "WIRESEAL_STRICT_EXCLUDE")]
    pub strict_exclude: Vec<String>,

    /// Routing table of strict mode's catch-alls (blackholes and throws).
    #[arg(long, default_value_t = 51831, env = "WIRESEAL_CATCH_ALL_TABLE")]
    pub catch_all_table: u32,

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

    /// Address of the /healthz and /readyz endpoint (the kubelet's probes).
    /// The peer listing (/status) is on the root-only socket STATE_DIR/status.sock.
    #[arg(long, default_value = "127.0.0.1:9830", env = "WIRESEAL_STATUS_ADDR")]
    pub status_addr: std::net::SocketAddr,

    /// Address of the Prometheus /metrics endpoint (with hostNetwork, the
    /// node's), or `off`.
    #[arg(long, default_value = "0.0.0.0:9831", env = "WIRESEAL_METRICS_ADDR")]
    pub metrics_addr: ListenAddr,

    /// Export the per-peer metrics (one series per remote node for each of
    /// four metrics: N² series across a cluster of N nodes).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        env = "WIRESEAL_PER_PEER_METRICS"
    )]
    pub per_peer_metrics: bool,

    /// Seconds between full reconcile passes when nothing changes.
    #[arg(long, default_value_t = 30, env = "WIRESEAL_RESYNC_INTERVAL")]
    pub resync_interval: u64,

    /// Rotate this node's key when it is older than this many seconds (0: never;
    /// `wireseal keys rotate` rotates by hand). Make-before-break: the next key
    /// is announced on the Node with the time every peer switches to it.
    #[arg(long, default_value_t = 0, env = "WIRESEAL_KEY_ROTATION_INTERVAL")]
    pub key_rotation_interval: u64,

    /// Seconds between announcing a next key and switching to it (0: the
    /// larger of twice the resync interval and 60 s). Peers must see the
    /// announcement before the switch; tests shorten it.
    #[arg(
        long,
        default_value_t = 0,
        env = "WIRESEAL_KEY_ROTATION_LEAD",
        hide = true
    )]
    pub key_rotation_lead: u64,

    /// IPsec mode: seconds between rekeys of this node's inbound SAs (a new
    /// key epoch, make-before-break; 0: never). Each is one write to the Node.
    #[arg(long, default_value_t = 21_600, env = "WIRESEAL_IPSEC_REKEY_INTERVAL")]
    pub ipsec_rekey_interval: u64,

    /// Seconds a worse encryption state must last before it is written to the
    /// Node (its condition and status annotation); better ones go at once.
    #[arg(long, default_value_t = 30, env = "WIRESEAL_STATUS_HOLD", hide = true)]
    pub status_hold: u64,

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
    /// Start a rotation: create the next key beside the current one (if there
    /// is none yet) and print its public key. The running agent picks it up
    /// within a resync interval, announces it on the Node with a switch time
    /// (`wireseal.dev/next-public-key`, `wireseal.dev/key-switch-at`), and
    /// every node switches to it at that time.
    Rotate,
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
