//! Strict mode's catch-alls.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;

use super::ownership::Owner;
use super::{MeshConfig, Strict};
use crate::claims::{Bounds, Disjoint};
use crate::state::{CatchAll, CatchAllKind};

/// Strict mode's catch-alls, in a table of their own looked up after the
/// tunnel's: a blackhole for each cluster CIDR (without cluster CIDRs, for
/// every node's accepted pod CIDR), so that whatever is not routed into the
/// tunnel (a peer gone, its tunnel link gone, the datapath gone) is dropped,
/// not sent in clear. Throws let through what must stay plain: this node's
/// own pod CIDRs, `--strict-exclude`, and every protected address (a node's,
/// an endpoint, the API server) that a cluster CIDR happens to contain.
pub(super) fn catch_alls(
    strict: &Strict,
    accepted: &Disjoint<Owner<'_>>,
    own_cidrs: &[IpNetwork],
    bounds: &Bounds,
    config: &MeshConfig,
) -> BTreeMap<IpNetwork, CatchAll> {
    let mut out = BTreeMap::new();
    let mut blackhole = |dst: IpNetwork| {
        out.insert(
            dst,
            CatchAll {
                dst,
                kind: CatchAllKind::Blackhole,
            },
        );
    };
    if config.cluster_cidrs.is_empty() {
        for (dst, owner) in accepted.iter() {
            if owner != Owner::ThisNode {
                blackhole(dst);
            }
        }
    } else {
        config.cluster_cidrs.iter().copied().for_each(blackhole);
    }
    let covered = |net: &IpNetwork| {
        out.values().any(|all: &CatchAll| {
            all.dst.prefix() <= net.prefix() && all.dst.contains(net.network())
        })
    };
    let mut throws: Vec<IpNetwork> = own_cidrs.iter().copied().filter(&covered).collect();
    throws.extend(strict.exclude.iter().copied());
    if !config.cluster_cidrs.is_empty() {
        throws.extend(
            bounds
                .protected()
                .map(IpNetwork::from)
                .filter(|net| covered(net)),
        );
    }
    for dst in throws {
        out.insert(
            dst,
            CatchAll {
                dst,
                kind: CatchAllKind::Throw,
            },
        );
    }
    out
}
