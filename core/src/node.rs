//! The Node view: what wireseal needs to know about one Kubernetes Node,
//! validated, with every problem recorded instead of thrown.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::annotation::{
    self, Field, InputErrorKind, NodeInputError, NodeStatus, decode_endpoint, decode_next_key,
    decode_pod_cidrs, decode_public_key, decode_status, parse_cidr_list,
};
use crate::key::PublicKey;
use crate::rotation::NextKey;

/// Kind of a Node address wireseal uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressKind {
    /// `InternalIP`: the underlay address peers normally reach.
    Internal,
    /// `ExternalIP`.
    External,
}

/// One InternalIP or ExternalIP of a Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddress {
    /// InternalIP or ExternalIP.
    pub kind: AddressKind,
    /// The address.
    pub ip: IpAddr,
}

/// Where a node's pod CIDRs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum CidrSource {
    /// `spec.podCIDRs`: set by the cluster's IPAM, immutable once set.
    #[default]
    Spec,
    /// The `wireseal.dev/pod-cidrs` override, written on the Node by whoever
    /// may edit it: weighed below `spec.podCIDRs` in a conflict.
    Annotation,
}

/// The parts of a Kubernetes Node that wireseal reads, as the API server
/// sent them: plain text, not yet validated. The agent's Kubernetes adapter
/// fills it from a `Node`, so this crate needs no Kubernetes types.
#[derive(Debug, Clone, Default)]
pub struct NodeFields<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.creationTimestamp`, in seconds since the Unix epoch: set by
    /// the API server, so a node cannot make itself older than it is.
    pub created: Option<i64>,
    /// `metadata.annotations` (only the `wireseal.dev/` ones are read).
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// `status.addresses` as (type, address) pairs, in the Node's order.
    pub addresses: Vec<(&'a str, &'a str)>,
    /// `spec.podCIDRs`, or the legacy `spec.podCIDR` when that list is empty.
    pub pod_cidrs: Vec<&'a str>,
}

/// Everything wireseal reads from one Node, validated.
///
/// Invalid inputs leave their field empty and add a [`NodeInputError`] to
/// `problems`; building a view never fails, so one bad Node cannot stop the
/// others from being processed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.creationTimestamp` in seconds since the Unix epoch: in a
    /// conflict between two claims that neither holds yet, the older node wins.
    pub created: Option<i64>,
    /// InternalIP and ExternalIP addresses, IPv4 and IPv6, in the Node's order.
    pub addresses: Vec<NodeAddress>,
    /// Pod CIDRs: the `wireseal.dev/pod-cidrs` override if present and valid,
    /// else `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Where `pod_cidrs` came from.
    pub pod_cidrs_source: CidrSource,
    /// The published WireGuard public key.
    pub public_key: Option<PublicKey>,
    /// The published endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The status the node's agent published.
    pub status: Option<NodeStatus>,
    /// The next key the node announced, with its switch time (a rotation).
    pub next_key: Option<NextKey>,
    /// IPsec mode: the node's published key epoch.
    pub ipsec_epoch: Option<u32>,
    /// Every bad input found on this Node.
    pub problems: Vec<NodeInputError>,
}

impl NodeView {
    /// Builds the view of a Node from its fields.
    #[must_use]
    pub fn from_fields(node: &NodeFields<'_>) -> Self {
        let mut view = Self {
            name: node.name.to_owned(),
            created: node.created,
            ..Self::default()
        };
        let get = |key: &str| {
            node.annotations
                .and_then(|all| all.get(key))
                .map(String::as_str)
        };

        view.read_addresses(&node.addresses);
        view.public_key = view.decode(
            get(annotation::PUBLIC_KEY),
            annotation::PUBLIC_KEY,
            decode_public_key,
        );
        view.endpoint = view.decode(
            get(annotation::ENDPOINT),
            annotation::ENDPOINT,
            decode_endpoint,
        );
        view.status = view.decode(get(annotation::STATUS), annotation::STATUS, decode_status);
        view.ipsec_epoch = view.decode(
            get(annotation::IPSEC_EPOCH),
            annotation::IPSEC_EPOCH,
            annotation::decode_epoch,
        );
        match decode_next_key(
            get(annotation::NEXT_PUBLIC_KEY),
            get(annotation::KEY_SWITCH_AT),
        ) {
            Ok(next) => view.next_key = next,
            Err((name, value, kind)) => view.problems.push(NodeInputError::new(
                &view.name,
                Field::Annotation(name),
                &value,
                kind,
            )),
        }

        // An invalid override must not silently fall back to spec.podCIDRs: the
        // operator set it because spec.podCIDRs is wrong for this CNI.
        let cidrs = match get(annotation::POD_CIDRS) {
            Some(value) => view.decode(Some(value), annotation::POD_CIDRS, decode_pod_cidrs),
            None => view.spec_pod_cidrs(&node.pod_cidrs),
        };
        let (field, source) = if get(annotation::POD_CIDRS).is_some() {
            (
                Field::Annotation(annotation::POD_CIDRS),
                CidrSource::Annotation,
            )
        } else {
            (Field::SpecPodCidrs, CidrSource::Spec)
        };
        view.pod_cidrs_source = source;
        view.pod_cidrs = cidrs
            .map(|cidrs| view.drop_cidrs_with_node_address(cidrs, field))
            .unwrap_or_default();
        view
    }

    /// Where peers send to this node: its published endpoint, else its
    /// InternalIP on `default_port`.
    #[must_use]
    pub fn endpoint_or(&self, default_port: u16) -> Option<SocketAddr> {
        self.endpoint.or_else(|| {
            self.internal_ip()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
    }

    /// The first InternalIP, IPv4 preferred.
    #[must_use]
    pub fn internal_ip(&self) -> Option<IpAddr> {
        let internal = || {
            self.addresses
                .iter()
                .filter(|a| a.kind == AddressKind::Internal)
        };
        internal()
            .find(|a| a.ip.is_ipv4())
            .or_else(|| internal().next())
            .map(|a| a.ip)
    }

    fn decode<T>(
        &mut self,
        value: Option<&str>,
        annotation: &'static str,
        decode: impl FnOnce(&str) -> Result<T, InputErrorKind>,
    ) -> Option<T> {
        let value = value?;
        match decode(value) {
            Ok(decoded) => Some(decoded),
            Err(kind) => {
                self.problems.push(NodeInputError::new(
                    &self.name,
                    Field::Annotation(annotation),
                    value,
                    kind,
                ));
                None
            }
        }
    }

    fn read_addresses(&mut self, addresses: &[(&str, &str)]) {
        for (kind, address) in addresses {
            let kind = match *kind {
                "InternalIP" => AddressKind::Internal,
                "ExternalIP" => AddressKind::External,
                _ => continue,
            };
            match IpAddr::from_str(address.trim()) {
                Ok(ip) => self.addresses.push(NodeAddress { kind, ip }),
                Err(_) => self.problems.push(NodeInputError::new(
                    &self.name,
                    Field::StatusAddresses,
                    address,
                    InputErrorKind::AddressSyntax,
                )),
            }
        }
    }

    fn spec_pod_cidrs(&mut self, items: &[&str]) -> Option<Vec<IpNetwork>> {
        if items.is_empty() {
            return None;
        }
        match parse_cidr_list(items) {
            Ok(cidrs) => Some(cidrs),
            Err(kind) => {
                self.problems.push(NodeInputError::new(
                    &self.name,
                    Field::SpecPodCidrs,
                    &items.join(","),
                    kind,
                ));
                None
            }
        }
    }

    /// A pod CIDR that contains one of the node's own addresses would route the
    /// encrypted packets for that node into the tunnel itself; such a CIDR is
    /// left out and reported, the others are kept.
    fn drop_cidrs_with_node_address(
        &mut self,
        cidrs: Vec<IpNetwork>,
        field: Field,
    ) -> Vec<IpNetwork> {
        let mut kept = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            match self.addresses.iter().find(|a| cidr.contains(a.ip)) {
                Some(address) => self.problems.push(NodeInputError::new(
                    &self.name,
                    field,
                    &cidr.to_string(),
                    InputErrorKind::CidrContainsNodeAddress {
                        cidr,
                        address: address.ip,
                    },
                )),
                None => kept.push(cidr),
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    /// A Node's fields; the annotations are leaked so the test reads like a Node literal.
    fn node(
        name: &'static str,
        annotations: &[(&str, &str)],
        pod_cidrs: &[&'static str],
        ips: &[(&'static str, &'static str)],
    ) -> NodeView {
        let annotations: &'static BTreeMap<String, String> = Box::leak(Box::new(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ));
        NodeView::from_fields(&NodeFields {
            name,
            created: None,
            annotations: Some(annotations),
            addresses: ips.to_vec(),
            pod_cidrs: pod_cidrs.to_vec(),
        })
    }

    #[test]
    fn reads_a_well_formed_node() {
        let view = node(
            "node-a",
            &[
                (annotation::PUBLIC_KEY, KEY),
                (annotation::ENDPOINT, "192.0.2.1:51830"),
            ],
            &["10.244.1.0/24", "fd00:244:1::/64"],
            &[
                ("Hostname", "node-a"),
                ("InternalIP", "fd00::1"),
                ("InternalIP", "192.0.2.1"),
                ("ExternalIP", "198.51.100.1"),
            ],
        );
        assert_eq!(view.problems, vec![]);
        assert_eq!(view.public_key.unwrap().to_base64(), KEY);
        assert_eq!(view.endpoint.unwrap().to_string(), "192.0.2.1:51830");
        assert_eq!(view.pod_cidrs.len(), 2);
        assert_eq!(view.addresses.len(), 3);
        assert_eq!(view.internal_ip().unwrap().to_string(), "192.0.2.1");
    }

    #[test]
    fn bad_inputs_become_problems_not_failures() {
        let view = node(
            "node-b",
            &[
                (annotation::PUBLIC_KEY, "garbage"),
                (annotation::ENDPOINT, "192.0.2.2"),
            ],
            &["10.244.2.1/24"],
            &[("InternalIP", "not-an-ip")],
        );
        assert_eq!(view.public_key, None);
        assert_eq!(view.endpoint, None);
        assert!(view.pod_cidrs.is_empty());
        let fields: Vec<Field> = view.problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                Field::StatusAddresses,
                Field::Annotation(annotation::PUBLIC_KEY),
                Field::Annotation(annotation::ENDPOINT),
                Field::SpecPodCidrs,
            ]
        );
        assert!(view.problems.iter().all(|p| p.node == "node-b"));
    }

    #[test]
    fn override_wins_and_an_invalid_override_does_not_fall_back() {
        let good = node(
            "n",
            &[(annotation::POD_CIDRS, "10.50.0.0/24")],
            &["10.244.0.0/24"],
            &[],
        );
        assert_eq!(good.pod_cidrs[0].to_string(), "10.50.0.0/24");
        let bad = node(
            "n",
            &[(annotation::POD_CIDRS, "10.50.0.1/24")],
            &["10.244.0.0/24"],
            &[],
        );
        let view = bad;
        assert!(view.pod_cidrs.is_empty());
        assert_eq!(
            view.problems[0].field,
            Field::Annotation(annotation::POD_CIDRS)
        );
    }

    #[test]
    fn a_pod_cidr_containing_the_node_address_is_dropped() {
        let view = node(
            "n",
            &[],
            &["10.0.0.0/16", "10.244.0.0/24"],
            &[("InternalIP", "10.0.0.5")],
        );
        assert_eq!(
            view.pod_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["10.244.0.0/24"]
        );
        assert!(matches!(
            view.problems[0].kind,
            InputErrorKind::CidrContainsNodeAddress { .. }
        ));
    }

    #[test]
    fn an_empty_node_is_fine() {
        let view = NodeView::from_fields(&NodeFields::default());
        assert_eq!(view, NodeView::default());
    }
}
