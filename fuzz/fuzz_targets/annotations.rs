//! The `wireseal.dev/` annotation decoders on hostile text: no panic, what
//! decodes re-encodes to itself, what fails gives an error that quotes the
//! value without a raw control character (it reaches logs, Events, terminals).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireseal_core::annotation::{
    self, Field, NodeInputError, check_endpoint_address, decode_endpoint, decode_pod_cidrs,
    decode_public_key, decode_status,
};
use wireseal_fuzz::assert_printable;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (name, error) = match which % 4 {
        0 => (
            annotation::PUBLIC_KEY,
            decode_public_key(&text)
                .map(|key| assert_eq!(decode_public_key(&key.to_base64()), Ok(key)))
                .err(),
        ),
        1 => (
            annotation::ENDPOINT,
            decode_endpoint(&text)
                .map(|endpoint| {
                    assert_ne!(endpoint.port(), 0);
                    assert_eq!(check_endpoint_address(endpoint.ip()), Ok(()));
                    assert_eq!(decode_endpoint(&endpoint.to_string()), Ok(endpoint));
                })
                .err(),
        ),
        2 => (
            annotation::POD_CIDRS,
            decode_pod_cidrs(&text)
                .map(|cidrs| {
                    assert!(!cidrs.is_empty());
                    for (i, a) in cidrs.iter().enumerate() {
                        assert_eq!(a.network(), a.ip(), "host bits in {a}");
                        for b in &cidrs[i + 1..] {
                            assert!(!annotation::overlaps(*a, *b), "{a} overlaps {b}");
                        }
                    }
                    let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                    assert_eq!(decode_pod_cidrs(&list.join(",")), Ok(cidrs));
                })
                .err(),
        ),
        _ => (
            annotation::STATUS,
            decode_status(&text)
                .map(|status| {
                    if let Some(message) = &status.message {
                        assert_printable(message);
                    }
                    let json = serde_json::to_string(&status).expect("a status serialises");
                    assert_eq!(decode_status(&json), Ok(status));
                })
                .err(),
        ),
    };
    if let Some(kind) = error {
        let error = NodeInputError::new("node-a", Field::Annotation(name), &text, kind);
        assert_printable(&error.to_string());
    }
});
