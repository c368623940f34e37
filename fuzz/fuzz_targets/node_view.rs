//! A Node as the API server would send it (arbitrary JSON) through the
//! agent's conversion into the core's view: no panic, no pod CIDR holding one
//! of the node's own addresses, every problem printable.
#![no_main]

use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;
use wireseal_fuzz::assert_printable;
use wireseal_fuzz::node_view::node_view;

fuzz_target!(|data: &[u8]| {
    let Ok(node) = serde_json::from_slice::<Node>(data) else {
        return;
    };
    let view = node_view(&node);
    assert_eq!(view.name, node.metadata.name.as_deref().unwrap_or_default());
    for cidr in &view.pod_cidrs {
        for address in &view.addresses {
            assert!(!cidr.contains(address.ip), "{cidr} holds {}", address.ip);
        }
        assert_eq!(cidr.network(), cidr.ip(), "host bits in {cidr}");
    }
    for problem in &view.problems {
        assert_printable(&problem.to_string());
    }
    if let Some(status) = &view.status
        && let Some(message) = &status.message
    {
        assert_printable(message);
    }
    // The same Node gives the same view.
    assert_eq!(node_view(&node), view);
});
