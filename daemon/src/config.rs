//! The agent's validated configuration: a plain struct, free of clap types, so
//! tests and the reconcile loop build it directly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use thiserror::Error;

use crate::cli::{AgentArgs, DatapathChoice, EncryptionChoice};

/// Longest Linux interface name (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;
/// Route tables the kernel reserves: unspec, default, main, local.
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// Priority of the kernel's rule for the main table; ours must come before it.
const MAIN_RULE_PRIORITY: u32 = 32766;

/// The tunnel MTU setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtuSetting {
    /// Underlay route MTU minus WireGuard's overhead, re-checked periodically.
    Auto,
    /// A fixed MTU.
    Fixed(u32),
}

/// The endpoint this node publishes, when overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSetting {
    /// The node's InternalIP and the listen port.
    Auto,
    /// This address with the listen port.
    Address(IpAddr),
    /// This address and port (e.g. behind a NAT that maps the port).
    SocketAddr(SocketAddr),
}

/// Everything `wireseal agent` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's Node name.
    pub node_name: String,
    /// Explicit kubeconfig; `None` for in-cluster, then `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Datapath choice.
    pub datapath: DatapathChoice,
    /// WireGuard or IPsec.
    pub encryption: wireseal_core::Encryption,
    /// Directory of the private key.
    pub state_dir: PathBuf,
    /// Tunnel interface name.
    pub interface: String,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Tunnel MTU.
    pub mtu: MtuSetting,
    /// Published endpoint.
    pub endpoint: EndpointSetting,
    /// fwmark of the datapath's packets.
    pub fwmark: u32,
    /// wireseal's routing table.
    pub route_table: u32,
    /// Priority of wireseal's policy rules.
    pub rule_priority: u32,
    /// The cluster's pod networks; empty when not given.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Networks peer endpoints must lie in; empty: any.
    pub peer_endpoint_cidrs: Vec<IpNetwork>,
    /// Strict mode, when on.
    pub strict: Option<StrictConfig>,
    /// Routing table of strict mode's catch-alls. Read also when strict mode
    /// is off, so that turning it off removes them.
    pub catch_all_table: u32,
    /// Persistent keepalive in seconds, if any.
    pub persistent_keepalive: Option<u16>,
    /// Directory of the userspace datapath's UAPI socket.
    pub uapi_dir: PathBuf,
    /// Binary to start for the userspace datapath, if the agent should.
    pub spawn_tunnel: Option<PathBuf>,
    /// Status endpoint address.
    pub status_addr: SocketAddr,
    /// The /metrics endpoint's address; `None`: no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Export the per-peer metrics.
    pub per_peer_metrics: bool,
    /// Seconds between periodic reconcile passes.
    pub resync_secs: u64,
    /// Seconds a Node watch lasts before the server ends it.
    pub watch_timeout_secs: u32,
    /// Seconds a worse encryption state holds before it is published.
    pub status_hold_secs: u64,
    /// Rotate the key once it is this old (`--key-rotation-interval`); `None`: never.
    pub key_rotation_interval: Option<std::time::Duration>,
    /// Between announcing a next key and switching to it.
    pub key_rotation_lead: std::time::Duration,
    /// IPsec mode: how often this node rekeys its inbound SAs (`None`: never).
    pub ipsec_rekey_interval: Option<std::time::Duration>,
}

/// Strict mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictConfig {
    /// Ranges let through in clear when no peer covers them.
    pub exclude: Vec<IpNetwork>,
}

/// A flag value that cannot be used, naming the flag and its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// No node name anywhere.
    #[error(
        "no node name: pass --node-name, or set WIRESEAL_NODE_NAME or NODE_NAME \
         (the DaemonSet sets NODE_NAME from spec.nodeName)"
    )]
    MissingNodeName,
    /// A flag with a bad value.
    #[error("--{flag} (WIRESEAL_{env}) = {value:?}: {reason}")]
    Invalid {
        /// Flag name without dashes.
        flag: &'static str,
        /// Environment variable suffix.
        env: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(
    flag: &'static str,
    env: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        flag,
        env,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// Validates the agent's flags. `node_name_env` is the value of `NODE_NAME`,
    /// passed in so that tests do not depend on the process environment.
    ///
    /// # Errors
    /// The first flag that cannot be used.
    pub fn from_args(args: &AgentArgs, node_name_env: Option<String>) -> Result<Self, ConfigError> {
        let node_name = args
            .node_name
            .clone()
            .or(node_name_env)
            .filter(|name| !name.trim().is_empty())
            .ok_or(ConfigError::MissingNodeName)?;
        validate_node_name(&node_name)?;
        validate_interface(&args.interface)?;
        if args.listen_port == 0 {
            return Err(invalid(
                "listen-port",
                "LISTEN_PORT",
                0,
                "port 0 cannot be published to peers",
            ));
        }
        if args.resync_interval == 0 {
            return Err(invalid(
                "resync-interval",
                "RESYNC_INTERVAL",
                0,
                "must be at least 1 second",
            ));
        }
        if args.watch_timeout == 0 {
            return Err(invalid(
                "watch-timeout",
                "WATCH_TIMEOUT",
                0,
                "must be at least 1 second",
            ));
        }
        if RESERVED_TABLES.contains(&args.route_table) {
            return Err(invalid(
                "route-table",
                "ROUTE_TABLE",
                args.route_table,
                "tables 0, 253 (default), 254 (main) and 255 (local) belong to the kernel",
            ));
        }
        // Strict mode's catch-all rule takes the next priority: both must come
        // before the main table's rule.
        if args.rule_priority == 0 || args.rule_priority >= MAIN_RULE_PRIORITY - 1 {
            return Err(invalid(
                "rule-priority",
                "RULE_PRIORITY",
                args.rule_priority,
                "must be between 1 and 32764: after the local table's rule 0, and with the \
                 catch-all rule (one more) before the main table's 32766",
            ));
        }
        if RESERVED_TABLES.contains(&args.catch_all_table)
            || args.catch_all_table == args.route_table
        {
            return Err(invalid(
                "catch-all-table",
                "CATCH_ALL_TABLE",
                args.catch_all_table,
                "must be a table of its own: not the route table, nor 0, 253, 254 or 255",
            ));
        }
        if args.encryption == EncryptionChoice::Ipsec {
            // IPsec is the kernel's: no userspace fallback, so never plaintext
            // because a module is missing.
            if args.datapath == DatapathChoice::Userspace {
                return Err(invalid(
                    "datapath",
                    "DATAPATH",
                    "userspace",
                    "IPsec mode runs on the kernel's XFRM/ESP only: use --datapath auto or \
                     kernel with --encryption ipsec",
                ));
            }
            // No ESP-in-UDP: nothing to keep a NAT mapping alive for.
            if args.persistent_keepalive != 0 {
                return Err(invalid(
                    "persistent-keepalive",
                    "PERSISTENT_KEEPALIVE",
                    args.persistent_keepalive,
                    "IPsec mode sends plain ESP between node addresses, with no NAT traversal; \
                     nodes behind NAT need WireGuard. Leave it 0 with --encryption ipsec",
                ));
            }
            // A switch of this node's X25519 key changes every pair's ESP
            // keys and SPIs at once; the rotation protocol is WireGuard's.
            if args.key_rotation_interval != 0 {
                return Err(invalid(
                    "key-rotation-interval",
                    "KEY_ROTATION_INTERVAL",
                    args.key_rotation_interval,
                    "scheduled key rotation is not available in IPsec mode yet (its ESP keys \
                     are derived from the node keys); leave it 0 with --encryption ipsec",
                ));
            }
        }
        let cluster_cidrs = parse_cidrs("cluster-cidrs", "CLUSTER_CIDRS", &args.cluster_cidrs)?;
        for cidr in &cluster_cidrs {
            if cidr.prefix() == 0 {
                return Err(invalid(
                    "cluster-cidrs",
                    "CLUSTER_CIDRS",
                    cidr,
                    "a default route is not a pod network",
                ));
            }
        }
        let exclude = parse_cidrs("strict-exclude", "STRICT_EXCLUDE", &args.strict_exclude)?;
        if !exclude.is_empty() && !args.strict {
            return Err(invalid(
                "strict-exclude",
                "STRICT_EXCLUDE",
                args.strict_exclude.join(","),
                "only means something with --strict",
            ));
        }
        Ok(Self {
            node_name,
            kubeconfig: args.kubeconfig.clone(),
            datapath: args.datapath,
            encryption: args.encryption.into(),
            state_dir: args.state.state_dir.clone(),
            interface: args.interface.clone(),
            listen_port: args.listen_port,
            mtu: parse_mtu(&args.mtu)?,
            endpoint: parse_endpoint(args.endpoint.as_deref())?,
            fwmark: parse_fwmark(&args.fwmark)?,
            route_table: args.route_table,
            rule_priority: args.rule_priority,
            cluster_cidrs,
            peer_endpoint_cidrs: parse_cidrs(
                "peer-endpoint-cidrs",
                "PEER_ENDPOINT_CIDRS",
                &args.peer_endpoint_cidrs,
            )?,
            strict: args.strict.then_some(StrictConfig { exclude }),
            catch_all_table: args.catch_all_table,
            persistent_keepalive: (args.persistent_keepalive != 0)
                .then_some(args.persistent_keepalive),
            uapi_dir: args.uapi_dir.clone(),
            spawn_tunnel: args.spawn_tunnel.clone(),
            status_addr: args.status_addr,
            metrics_addr: args.metrics_addr.0,
            per_peer_metrics: args.per_peer_metrics,
            resync_secs: args.resync_interval,
            watch_timeout_secs: args.watch_timeout,
            status_hold_secs: args.status_hold,
            key_rotation_interval: (args.key_rotation_interval != 0)
                .then(|| std::time::Duration::from_secs(args.key_rotation_interval)),
            ipsec_rekey_interval: (args.ipsec_rekey_interval != 0)
                .then(|| std::time::Duration::from_secs(args.ipsec_rekey_interval)),
            key_rotation_lead: std::time::Duration::from_secs(if args.key_rotation_lead == 0 {
                (2 * args.resync_interval).max(60)
            } else {
                args.key_rotation_lead
            }),
        })
    }
}

fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    // A Node name is a DNS subdomain: lowercase alphanumerics, '-' and '.', at most 253.
    let ok = name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "node-name",
            "NODE_NAME",
            name,
            "not a Kubernetes Node name (lowercase letters, digits, '-' and '.', at most 253)",
        ))
    }
}

fn validate_interface(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "is longer than 15 bytes, the kernel's limit"
    } else if name == "." || name == ".." {
        "is not a valid interface name"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || !b.is_ascii_graphic())
    {
        "may not contain '/', ':', whitespace or non-ASCII characters"
    } else {
        return Ok(());
    };
    Err(invalid("interface", "INTERFACE", name, reason))
}

fn parse_mtu(value: &str) -> Result<MtuSetting, ConfigError> {
    if value.eq_ignore_ascii_case("auto") {
        return Ok(MtuSetting::Auto);
    }
    match value.parse::<u32>() {
        Ok(mtu) if (wireseal_core::state::MIN_TUNNEL_MTU..=65_535).contains(&mtu) => {
            Ok(MtuSetting::Fixed(mtu))
        }
        Ok(_) => Err(invalid(
            "mtu",
            "MTU",
            value,
            "must be between 1280 and 65535",
        )),
        Err(_) => Err(invalid("mtu", "MTU", value, "must be `auto` or a number")),
    }
}

fn parse_fwmark(value: &str) -> Result<u32, ConfigError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    };
    match parsed {
        Ok(0) => Err(invalid(
            "fwmark",
            "FWMARK",
            value,
            "0 would mark nothing; the encrypted packets must carry a mark",
        )),
        Ok(mark) => Ok(mark),
        Err(_) => Err(invalid(
            "fwmark",
            "FWMARK",
            value,
            "not a 32-bit number (hex with 0x, or decimal)",
        )),
    }
}

/// A list of networks (host bits must be clear: a typo, not a network).
fn parse_cidrs(
    flag: &'static str,
    env: &'static str,
    values: &[String],
) -> Result<Vec<IpNetwork>, ConfigError> {
    let items: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let cidr = IpNetwork::from_str(item)
            .ok()
            .filter(|_| item.contains('/'))
            .ok_or_else(|| invalid(flag, env, item, "not a CIDR (address/prefix-length)"))?;
        if cidr.network() != cidr.ip() {
            return Err(invalid(
                flag,
                env,
                item,
                format!(
                    "host bits set; the network is {}/{}",
                    cidr.network(),
                    cidr.prefix()
                ),
            ));
        }
        out.push(cidr);
    }
    Ok(out)
}

fn parse_endpoint(value: Option<&str>) -> Result<EndpointSetting, ConfigError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(EndpointSetting::Auto);
    };
    if let Ok(ip) = IpAddr::from_str(value) {
        return Ok(EndpointSetting::Address(ip));
    }
    // The same rules as for a peer's published endpoint.
    wireseal_core::annotation::decode_endpoint(value)
        .map(EndpointSetting::SocketAddr)
        .map_err(|err| invalid("endpoint", "ENDPOINT", value, err.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(["wireseal", "agent"].iter().chain(args)).unwrap();
        let Command::Agent(agent) = cli.command else {
            panic!("not agent")
        };
        Config::from_args(&agent, None)
    }

    #[test]
    fn defaults() {
        let config = parse(&["--node-name", "node-a"]).unwrap();
        assert_eq!(config.interface, "wireseal0");
        assert_eq!(config.listen_port, 51830);
        assert_eq!(config.mtu, MtuSetting::Auto);
        assert_eq!(config.fwmark, 0x1000_0000);
        assert_eq!(config.route_table, 51830);
        assert_eq!(config.rule_priority, 90);
        assert_eq!(config.datapath, DatapathChoice::Auto);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/wireseal"));
        assert_eq!(config.endpoint, EndpointSetting::Auto);
        assert_eq!(config.persistent_keepalive, None);
        assert_eq!(config.strict, None, "strict mode is opt-in");
        assert!(config.cluster_cidrs.is_empty());
    }

    #[test]
    fn strict_mode_and_bounds() {
        let config = parse(&[
            "--node-name=n1",
            "--strict",
            "--cluster-cidrs=10.244.0.0/16, fd00:244::/48",
            "--strict-exclude=10.244.250.0/24",
            "--peer-endpoint-cidrs=192.0.2.0/24",
        ])
        .unwrap();
        assert_eq!(
            config.strict,
            Some(StrictConfig {
                exclude: vec!["10.244.250.0/24".parse().unwrap()],
            })
        );
        assert_eq!(config.cluster_cidrs.len(), 2);
        assert_eq!(config.peer_endpoint_cidrs.len(), 1);
        for (args, expect) in [
            (
                &["--node-name=n1", "--cluster-cidrs=10.244.0.1/16"][..],
                "--cluster-cidrs (WIRESEAL_CLUSTER_CIDRS) = \"10.244.0.1/16\": host bits set; the network is 10.244.0.0/16",
            ),
            (
                &["--node-name=n1", "--cluster-cidrs=10.244.0.0"][..],
                "--cluster-cidrs (WIRESEAL_CLUSTER_CIDRS) = \"10.244.0.0\": not a CIDR (address/prefix-length)",
            ),
            (
                &["--node-name=n1", "--cluster-cidrs=0.0.0.0/0"][..],
                "--cluster-cidrs (WIRESEAL_CLUSTER_CIDRS) = \"0.0.0.0/0\": a default route is not a pod network",
            ),
            (
                &["--node-name=n1", "--strict-exclude=10.0.0.0/8"][..],
                "--strict-exclude (WIRESEAL_STRICT_EXCLUDE) = \"10.0.0.0/8\": only means something with --strict",
            ),
            (
                &["--node-name=n1", "--catch-all-table=51830"][..],
                "--catch-all-table (WIRESEAL_CATCH_ALL_TABLE) = \"51830\": must be a table of its own: not the route table, nor 0, 253, 254 or 255",
            ),
        ] {
            assert_eq!(parse(args).unwrap_err().to_string(), expect);
        }
    }

    #[test]
    fn node_name_falls_back_to_node_name_env() {
        let cli = Cli::try_parse_from(["wireseal", "agent"]).unwrap();
        let Command::Agent(agent) = cli.command else {
            panic!()
        };
        assert_eq!(
            Config::from_args(&agent, None),
            Err(ConfigError::MissingNodeName)
        );
        assert_eq!(
            Config::from_args(&agent, Some("node-b".into()))
                .unwrap()
                .node_name,
            "node-b"
        );
    }

    #[test]
    fn explicit_values() {
        let config = parse(&[
            "--node-name=n1",
            "--datapath=userspace",
            "--mtu=1380",
            "--fwmark=4096",
            "--endpoint=[2001:db8::1]:4000",
            "--persistent-keepalive=25",
        ])
        .unwrap();
        assert_eq!(config.datapath, DatapathChoice::Userspace);
        assert_eq!(config.mtu, MtuSetting::Fixed(1380));
        assert_eq!(config.fwmark, 4096);
        assert_eq!(
            config.endpoint,
            EndpointSetting::SocketAddr("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(config.persistent_keepalive, Some(25));
        let bare = parse(&["--node-name=n1", "--endpoint=192.0.2.1"]).unwrap();
        assert_eq!(
            bare.endpoint,
            EndpointSetting::Address("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn bad_values_name_flag_and_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--node-name=Node_A"], "--node-name (WIRESEAL_NODE_NAME)"),
            (
                &["--node-name=a", "--interface=averyveryverylongname"],
                "--interface (WIRESEAL_INTERFACE)",
            ),
            (
                &["--node-name=a", "--interface=wg/0"],
                "may not contain '/'",
            ),
            (&["--node-name=a", "--listen-port=0"], "--listen-port"),
            (&["--node-name=a", "--mtu=9"], "between 1280 and 65535"),
            (&["--node-name=a", "--mtu=big"], "`auto` or a number"),
            (&["--node-name=a", "--fwmark=0"], "would mark nothing"),
            (&["--node-name=a", "--fwmark=0xzz"], "not a 32-bit number"),
            (
                &["--node-name=a", "--route-table=254"],
                "belong to the kernel",
            ),
            (
                &["--node-name=a", "--rule-priority=32766"],
                "before the main table",
            ),
            (
                &["--node-name=a", "--endpoint=host:1"],
                "--endpoint (WIRESEAL_ENDPOINT)",
            ),
            (&["--node-name=a", "--endpoint=192.0.2.1:0"], "port 0"),
            (
                &[
                    "--node-name=a",
                    "--encryption=ipsec",
                    "--datapath=userspace",
                ],
                "IPsec mode runs on the kernel's XFRM/ESP only",
            ),
            (
                &[
                    "--node-name=a",
                    "--encryption=ipsec",
                    "--key-rotation-interval=3600",
                ],
                "not available in IPsec mode",
            ),
            (
                &[
                    "--node-name=a",
                    "--encryption=ipsec",
                    "--persistent-keepalive=25",
                ],
                "no NAT traversal",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn encryption_defaults_to_wireguard_and_takes_ipsec() {
        let config = parse(&["--node-name=a"]).unwrap();
        assert_eq!(config.encryption, wireseal_core::Encryption::WireGuard);
        let config = parse(&["--node-name=a", "--encryption=ipsec"]).unwrap();
        assert_eq!(config.encryption, wireseal_core::Encryption::Ipsec);
        let err = Cli::try_parse_from(["wireseal", "agent", "--encryption", "rot13"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("possible values: wireguard, ipsec"),
            "{err}"
        );
    }

    #[test]
    fn unknown_datapath_is_a_clap_error() {
        let err = Cli::try_parse_from(["wireseal", "agent", "--datapath", "magic"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("possible values: auto, kernel, userspace"),
            "{err}"
        );
    }
}
