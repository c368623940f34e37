//! The Node view: what wireseal needs to know about one Kubernetes Node,
//! validated, with every problem recorded instead of thrown.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

use crate::annotation::{
    self, Field, InputErrorKind, NodeInputError, NodeStatus, decode_endpoint, decode_pod_cidrs,
    decode_public_key, decode_status, parse_cidr_list,
};
use crate::key::PublicKey;

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

/// Everything wireseal reads from one Node, validated.
///
/// Invalid inputs leave their field empty and add a [`NodeInputError`] to
/// `problems`; building a view never fails, so one bad Node cannot stop the
/// others from being processed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    /// `metadata.name`.
    pub name: String,
    /// InternalIP and ExternalIP addresses, IPv4 and IPv6, in the Node's order.
    pub addresses: Vec<NodeAddress>,
    /// Pod CIDRs: the `wireseal.dev/pod-cidrs` override if present and valid,
    /// else `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The published WireGuard public key.
    pub public_key: Option<PublicKey>,
    /// The published endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The status the node's agent published.
    pub status: Option<NodeStatus>,
    /// Every bad input found on this Node.
    pub problems: Vec<NodeInputError>,
}

impl NodeView {
    /// Builds the view of a Kubernetes Node.
    #[must_use]
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut view = Self {
            name,
            ..Self::default()
        };
        let empty = Default::default();
        let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let get = |key: &str| annotations.get(key).map(String::as_str);

        view.read_addresses(node);
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

        // An invalid override must not silently fall back to spec.podCIDRs: the
        // operator set it because spec.podCIDRs is wrong for this CNI.
        let cidrs = match get(annotation::POD_CIDRS) {
            Some(value) => view.decode(Some(value), annotation::POD_CIDRS, decode_pod_cidrs),
            None => view.spec_pod_cidrs(node),
        };
        let field = if get(annotation::POD_CIDRS).is_some() {
            Field::Annotation(annotation::POD_CIDRS)
        } else {
            Field::SpecPodCidrs
        };
        view.pod_cidrs = cidrs
            .map(|cidrs| view.drop_cidrs_with_node_address(cidrs, field))
            .unwrap_or_default();
        view
    }

    /// The address peers should use when no endpoint is published: the first
    /// InternalIP, IPv4 preferred.
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

    fn read_addresses(&mut self, node: &Node) {
        let Some(addresses) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) else {
            return;
        };
        for address in addresses {
            let kind = match address.type_.as_str() {
                "InternalIP" => AddressKind::Internal,
                "ExternalIP" => AddressKind::External,
                _ => continue,
            };
            match IpAddr::from_str(address.address.trim()) {
                Ok(ip) => self.addresses.push(NodeAddress { kind, ip }),
                Err(_) => self.problems.push(NodeInputError::new(
                    &self.name,
                    Field::StatusAddresses,
                    &address.address,
                    InputErrorKind::AddressSyntax,
                )),
            }
        }
    }

    fn spec_pod_cidrs(&mut self, node: &Node) -> Option<Vec<IpNetwork>> {
        let spec = node.spec.as_ref()?;
        let items: Vec<&str> = match (&spec.pod_cidrs, &spec.pod_cidr) {
            (Some(list), _) if !list.is_empty() => list.iter().map(String::as_str).collect(),
            (_, Some(single)) if !single.is_empty() => vec![single.as_str()],
            _ => return None,
        };
        match parse_cidr_list(&items) {
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
    use k8s_openapi::api::core::v1::{
        NodeAddress as K8sAddress, NodeSpec, NodeStatus as K8sStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn node(
        name: &str,
        annotations: &[(&str, &str)],
        pod_cidrs: &[&str],
        ips: &[(&str, &str)],
    ) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(pod_cidrs.iter().map(|c| (*c).into()).collect()),
                ..NodeSpec::default()
            }),
            status: Some(K8sStatus {
                addresses: Some(
                    ips.iter()
                        .map(|(t, a)| K8sAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..K8sStatus::default()
            }),
        }
    }

    #[test]
    fn reads_a_well_formed_node() {
        let n = node(
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
        let view = NodeView::from_node(&n);
        assert_eq!(view.problems, vec![]);
        assert_eq!(view.public_key.unwrap().to_base64(), KEY);
        assert_eq!(view.endpoint.unwrap().to_string(), "192.0.2.1:51830");
        assert_eq!(view.pod_cidrs.len(), 2);
        assert_eq!(view.addresses.len(), 3);
        assert_eq!(view.internal_ip().unwrap().to_string(), "192.0.2.1");
    }

    #[test]
    fn bad_inputs_become_problems_not_failures() {
        let n = node(
            "node-b",
            &[
                (annotation::PUBLIC_KEY, "garbage"),
                (annotation::ENDPOINT, "192.0.2.2"),
            ],
            &["10.244.2.1/24"],
            &[("InternalIP", "not-an-ip")],
        );
        let view = NodeView::from_node(&n);
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
        assert_eq!(
            NodeView::from_node(&good).pod_cidrs[0].to_string(),
            "10.50.0.0/24"
        );
        let bad = node(
            "n",
            &[(annotation::POD_CIDRS, "10.50.0.1/24")],
            &["10.244.0.0/24"],
            &[],
        );
        let view = NodeView::from_node(&bad);
        assert!(view.pod_cidrs.is_empty());
        assert_eq!(
            view.problems[0].field,
            Field::Annotation(annotation::POD_CIDRS)
        );
    }

    #[test]
    fn a_pod_cidr_containing_the_node_address_is_dropped() {
        let n = node(
            "n",
            &[],
            &["10.0.0.0/16", "10.244.0.0/24"],
            &[("InternalIP", "10.0.0.5")],
        );
        let view = NodeView::from_node(&n);
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
    fn legacy_single_pod_cidr_is_read() {
        let mut n = node("n", &[], &[], &[]);
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = None;
            spec.pod_cidr = Some("10.244.9.0/24".into());
        }
        assert_eq!(
            NodeView::from_node(&n).pod_cidrs[0].to_string(),
            "10.244.9.0/24"
        );
    }

    #[test]
    fn an_empty_node_is_fine() {
        let view = NodeView::from_node(&Node::default());
        assert_eq!(view, NodeView::default());
    }
}
