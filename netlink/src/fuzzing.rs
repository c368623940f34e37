//! Entry points for the fuzz targets in `fuzz/`, not part of the API: the
//! decoders of the kernel's replies fed the raw bytes of a netlink dump (as
//! the socket hands them over), and seed replies made by this crate's own
//! encoders. The kernel is trusted, but a decoder that panics on an odd
//! reply would take the agent down on every node running that kernel.

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_route::RouteNetlinkMessage;
use wireseal_core::{CatchAll, DeviceObservation, DevicePlan, RouteSpec};

use crate::AddressInfo;
use crate::address::{address_message, parse_address};
use crate::route::{catch_all_message, parse_route, replace_message, route_table};
use crate::wireguard::Checked;
use crate::wireguard::kernel::{WgDevice, decode_get, encode_set};

/// What the route and address decoders made of a dump.
#[derive(Debug, Default)]
pub struct RoutingReplies {
    /// Each route message: its table, and the parsed route (destination,
    /// output interface, MTU, preferred source) when it is one wireseal reads.
    pub routes: Vec<(u32, Option<String>)>,
    /// Each usable or unusable address parsed.
    pub addresses: Vec<AddressInfo>,
}

/// The messages of one dump, back to back, each starting with its header;
/// stops at the first that does not parse (the codec drops the rest too).
/// `struct nlmsghdr`.
const NLMSG_HDR_LEN: usize = 16;

fn messages<T>(mut bytes: &[u8]) -> Vec<NetlinkMessage<T>>
where
    T: NetlinkDeserializable,
{
    let mut out = Vec::new();
    while bytes.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > bytes.len() {
            break;
        }
        let Ok(message) = NetlinkMessage::<T>::deserialize(&bytes[..len]) else {
            break;
        };
        out.push(message);
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

/// Decodes a route or address dump the way [`crate::Netlink`] reads one.
#[must_use]
pub fn routing_replies(bytes: &[u8]) -> RoutingReplies {
    let mut replies = RoutingReplies::default();
    for message in messages::<RouteNetlinkMessage>(bytes) {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                replies.routes.push((
                    route_table(&route),
                    parse_route(&route).map(|r| format!("{r:?}")),
                ))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address)) => {
                replies.addresses.extend(parse_address(&address));
            }
            _ => {}
        }
    }
    replies
}

/// Decodes a `WG_CMD_GET_DEVICE` dump the way [`crate::WireGuard`] reads one,
/// and turns it into the core's observation.
#[must_use]
pub fn wireguard_replies(bytes: &[u8]) -> (WgDevice, DeviceObservation) {
    let replies = messages::<GenlMessage<Checked>>(bytes)
        .into_iter()
        .filter_map(|message| match message.payload {
            NetlinkPayload::InnerMessage(genl) => Some(genl.payload.0),
            _ => None,
        })
        .collect();
    let device = decode_get(replies);
    let observation = device.to_observation();
    (device, observation)
}

fn serialize<T: NetlinkSerializable>(payload: T, out: &mut Vec<u8>) {
    let mut message = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(payload),
    );
    message.finalize();
    let start = out.len();
    out.resize(start + message.buffer_len(), 0);
    message.serialize(&mut out[start..]);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A route dump as the kernel would send back what [`crate::Netlink`] writes:
/// the routes and catch-alls, then the addresses.
#[must_use]
pub fn routing_seed(
    routes: &[RouteSpec],
    catch_alls: &[CatchAll],
    addresses: &[ipnetwork::IpNetwork],
) -> Vec<u8> {
    let mut out = Vec::new();
    for (oif, route) in (1..).zip(routes) {
        let message = replace_message(route, oif, 51820);
        serialize(RouteNetlinkMessage::NewRoute(message), &mut out);
    }
    for all in catch_alls {
        let message = catch_all_message(all, 51821);
        serialize(RouteNetlinkMessage::NewRoute(message), &mut out);
    }
    for (index, address) in (1..).zip(addresses) {
        let message = address_message(index, *address);
        serialize(RouteNetlinkMessage::NewAddress(message), &mut out);
    }
    out
}

/// A `WG_CMD_GET_DEVICE` dump carrying what [`encode_set`] writes for `plan`,
/// split into messages of at most `max_len` bytes as the kernel splits a dump.
#[must_use]
pub fn wireguard_seed(plan: &DevicePlan, private_key: &[u8; 32], max_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for message in encode_set("wg0", plan, private_key, max_len) {
        let mut genl = GenlMessage::from_payload(Checked(message));
        genl.set_resolved_family_id(0x20);
        serialize(genl, &mut out);
    }
    out
}
