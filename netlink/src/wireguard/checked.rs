//! netlink-packet-wireguard 0.5 indexes the payload of a
//! `WGALLOWEDIP_A_CIDR_MASK` attribute without checking its length, so a
//! reply carrying an empty one panics the parser (found by fuzzing: fuzz/,
//! target netlink_wireguard). Replies are parsed as [`Checked`], which first
//! walks the attributes down to every allowed IP and refuses such a message
//! with a decode error; the reply then fails like any other malformed one.

use netlink_packet_core::{DecodeError, Emitable, NlaBuffer, NlasIterator, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};
use netlink_packet_wireguard::WireguardMessage;

const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// A [`WireguardMessage`] whose attributes were checked before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked(pub(crate) WireguardMessage);

impl GenlFamily for Checked {
    fn family_name() -> &'static str {
        WireguardMessage::family_name()
    }
    fn command(&self) -> u8 {
        self.0.command()
    }
    fn version(&self) -> u8 {
        self.0.version()
    }
}

impl Emitable for Checked {
    fn buffer_len(&self) -> usize {
        self.0.buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.0.emit(buffer);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Checked {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        for device in NlasIterator::new(buf) {
            let device = device?;
            if device.kind() == WGDEVICE_A_PEERS {
                for_each_nested(device.value(), |peer| {
                    for attribute in NlasIterator::new(peer.value()) {
                        let attribute = attribute?;
                        if attribute.kind() == WGPEER_A_ALLOWEDIPS {
                            for_each_nested(attribute.value(), check_allowed_ip)?;
                        }
                    }
                    Ok(())
                })?;
            }
        }
        WireguardMessage::parse_with_param(buf, header).map(Self)
    }
}

/// Calls `f` on each attribute of a nested list (peers, allowed IPs).
fn for_each_nested(
    list: &[u8],
    mut f: impl FnMut(&NlaBuffer<&[u8]>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    for item in NlasIterator::new(list) {
        f(&item?)?;
    }
    Ok(())
}

fn check_allowed_ip(ip: &NlaBuffer<&[u8]>) -> Result<(), DecodeError> {
    for attribute in NlasIterator::new(ip.value()) {
        let attribute = attribute?;
        if attribute.kind() == WGALLOWEDIP_A_CIDR_MASK && attribute.value().is_empty() {
            return Err("WGALLOWEDIP_A_CIDR_MASK without its byte".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_generic::GenlMessage;

    use super::*;

    /// The input the fuzzer found, cut down: a `WG_CMD_GET_DEVICE` reply with
    /// one peer whose one allowed IP has an empty CIDR mask.
    fn reply_with_empty_mask() -> Vec<u8> {
        let nla = |kind: u16, value: &[u8]| {
            let len = u16::try_from(4 + value.len()).unwrap();
            let mut out = len.to_ne_bytes().to_vec();
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        };
        let allowed_ip = nla(0x8000, &nla(WGALLOWEDIP_A_CIDR_MASK, &[]));
        let peer = nla(0x8000, &nla(WGPEER_A_ALLOWEDIPS | 0x8000, &allowed_ip));
        let attributes = nla(WGDEVICE_A_PEERS | 0x8000, &peer);
        let len = u32::try_from(16 + 4 + attributes.len()).unwrap();
        let mut message = len.to_ne_bytes().to_vec();
        message.extend_from_slice(&0x20u16.to_ne_bytes()); // the family's id
        message.extend_from_slice(&[0; 10]); // flags, sequence, port
        message.extend_from_slice(&[0, 1, 0, 0]); // WG_CMD_GET_DEVICE, version 1
        message.extend_from_slice(&attributes);
        message
    }

    #[test]
    fn an_empty_cidr_mask_is_a_decode_error_not_a_panic() {
        let bytes = reply_with_empty_mask();
        let parsed = NetlinkMessage::<GenlMessage<Checked>>::deserialize(&bytes);
        assert!(parsed.is_err(), "{parsed:?}");
    }

    #[test]
    fn the_unchecked_parser_panics_on_it() {
        // Why the check exists: if this starts to pass, the dependency was
        // fixed and `Checked` can go.
        let bytes = reply_with_empty_mask();
        let result = std::panic::catch_unwind(|| {
            NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(&bytes).is_ok()
        });
        assert!(result.is_err(), "netlink-packet-wireguard no longer panics");
    }

    #[test]
    fn good_replies_parse_as_before() {
        let message = crate::wireguard::kernel::encode_get("wg0");
        let mut genl = GenlMessage::from_payload(Checked(message.clone()));
        genl.set_resolved_family_id(0x20);
        let mut netlink = NetlinkMessage::from(genl);
        netlink.finalize();
        let mut bytes = vec![0; netlink.buffer_len()];
        netlink.serialize(&mut bytes);
        let parsed = NetlinkMessage::<GenlMessage<Checked>>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(genl) = parsed.payload else {
            panic!("not a message: {parsed:?}");
        };
        assert_eq!(genl.payload.0, message);
    }
}
