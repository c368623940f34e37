//! A Kubernetes Node → the core's [`NodeView`]: the one place that reads a
//! `Node` object's fields, so the pure core needs no Kubernetes types.

use k8s_openapi::api::core::v1::Node;
use wireseal_core::NodeView;
use wireseal_core::node::NodeFields;

/// The validated view of `node`: its name, addresses, pod CIDRs and
/// `wireseal.dev/` annotations; every other field is ignored.
#[must_use]
pub fn node_view(node: &Node) -> NodeView {
    let addresses = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_ref())
        .map(|all| {
            all.iter()
                .map(|a| (a.type_.as_str(), a.address.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let pod_cidrs = node
        .spec
        .as_ref()
        .map(|spec| match (&spec.pod_cidrs, &spec.pod_cidr) {
            (Some(list), _) if !list.is_empty() => list.iter().map(String::as_str).collect(),
            (_, Some(single)) if !single.is_empty() => vec![single.as_str()],
            _ => Vec::new(),
        })
        .unwrap_or_default();
    NodeView::from_fields(&NodeFields {
        name: node.metadata.name.as_deref().unwrap_or_default(),
        created: node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|time| time.0.as_second()),
        annotations: node.metadata.annotations.as_ref(),
        addresses,
        pod_cidrs,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use wireseal_core::annotation;

    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn reads_name_addresses_pod_cidrs_and_annotations() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
                )),
                annotations: Some(
                    [
                        (annotation::PUBLIC_KEY.to_owned(), KEY.to_owned()),
                        ("other.example/x".to_owned(), "ignored".to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:244:1::/64".into()]),
                pod_cidr: Some("10.244.1.0/24".into()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "node-a".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "192.0.2.1".into(),
                    },
                ]),
                ..NodeStatus::default()
            }),
        };
        let view = node_view(&node);
        assert_eq!(view.name, "node-a");
        assert_eq!(view.created, Some(1_700_000_000));
        assert_eq!(view.problems, vec![]);
        assert_eq!(view.public_key.map(|k| k.to_base64()).as_deref(), Some(KEY));
        assert_eq!(view.pod_cidrs.len(), 2);
        assert_eq!(
            view.internal_ip().map(|ip| ip.to_string()).as_deref(),
            Some("192.0.2.1")
        );
    }

    #[test]
    fn the_legacy_single_pod_cidr_is_read_when_the_list_is_empty() {
        let node = Node {
            spec: Some(NodeSpec {
                pod_cidrs: Some(vec![]),
                pod_cidr: Some("10.244.9.0/24".into()),
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        assert_eq!(node_view(&node).pod_cidrs[0].to_string(), "10.244.9.0/24");
    }

    #[test]
    fn an_empty_node_is_an_empty_view() {
        assert_eq!(node_view(&Node::default()), NodeView::default());
    }
}
