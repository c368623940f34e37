//! wireseal's policy rules: `not fwmark M/M lookup T priority P`, one per
//! address family.

use std::collections::BTreeSet;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleHeader, RuleMessage};
use wireseal_core::{Family, RuleSpec};

use crate::conn::Netlink;
use crate::error::{Errno, Error, Op};
use crate::family::{address_family, header_table};

/// The rules found at wireseal's priority.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedRules {
    /// Rules of exactly wireseal's shape — `not fwmark M/M lookup TABLE` at
    /// the priority, for any mark `M` — as [`RuleSpec`]s. A plan removes the
    /// ones it does not want (e.g. an old mark).
    pub ours: BTreeSet<RuleSpec>,
    /// Any other rule at the priority. wireseal never touches these (someone
    /// else owns them); they are reported so the agent can warn, since their
    /// order relative to ours is up to the kernel.
    pub foreign: Vec<ForeignRule>,
}

/// A rule at wireseal's priority that is not one of wireseal's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRule {
    /// Address family.
    pub family: Family,
    /// Table it looks up (0 when its action is not a lookup).
    pub table: u32,
    /// fwmark it matches, if any.
    pub fwmark: Option<u32>,
    /// fwmask it matches, if any.
    pub fwmask: Option<u32>,
    /// Whether the selector is inverted (`not`).
    pub inverted: bool,
}

impl Netlink {
    /// The rules at `priority`, IPv4 and IPv6, split into wireseal's (those
    /// looking up `table` in wireseal's shape) and foreign ones.
    ///
    /// # Errors
    /// The kernel's error for the rule dumps.
    pub async fn rules(&self, priority: u32, table: u32) -> Result<ObservedRules, Error> {
        let mut observed = ObservedRules::default();
        for family in [Family::V4, Family::V6] {
            let op = Op::DumpRules { family };
            let mut request = RuleMessage::default();
            request.header.family = address_family(family);
            for reply in self
                .dump(&op, &RouteNetlinkMessage::GetRule(request))
                .await?
            {
                let RouteNetlinkMessage::NewRule(message) = reply else {
                    continue;
                };
                match classify(&message, family, priority, table) {
                    Classified::Ours(rule) => {
                        observed.ours.insert(rule);
                    }
                    Classified::Foreign(rule) => observed.foreign.push(rule),
                    Classified::OtherPriority => {}
                }
            }
        }
        Ok(observed)
    }

    /// Adds `rule`. An identical rule already present is success (the request
    /// carries `NLM_F_EXCL`, without which the kernel would add a duplicate).
    ///
    /// # Errors
    /// The kernel's error other than `EEXIST`.
    pub async fn add_rule(&self, rule: &RuleSpec) -> Result<(), Error> {
        let op = Op::AddRule {
            family: rule.family,
            priority: rule.priority,
            table: rule.table,
        };
        match self
            .write(
                &op,
                RouteNetlinkMessage::NewRule(rule_message(rule)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Err(err) if err.errno() == Some(Errno(libc::EEXIST)) => Ok(()),
            other => other,
        }
    }

    /// Deletes `rule`. A rule that is already gone is success.
    ///
    /// # Errors
    /// The kernel's error other than `ENOENT`/`ESRCH`.
    pub async fn delete_rule(&self, rule: &RuleSpec) -> Result<(), Error> {
        let op = Op::DeleteRule {
            family: rule.family,
            priority: rule.priority,
            table: rule.table,
        };
        match self
            .write(&op, RouteNetlinkMessage::DelRule(rule_message(rule)), 0)
            .await
        {
            Err(err) if matches!(err.errno(), Some(Errno(libc::ENOENT | libc::ESRCH))) => Ok(()),
            other => other,
        }
    }
}

/// `ip rule add not fwmark M/M lookup T priority P`: `FIB_RULE_INVERT` on the
/// fwmark selector, the table in `FRA_TABLE` (ids above 255 do not fit the
/// header).
pub(crate) fn rule_message(rule: &RuleSpec) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header = RuleHeader {
        family: address_family(rule.family),
        table: header_table(rule.table),
        action: RuleAction::ToTable,
        flags: RuleFlags::Invert,
        ..RuleHeader::default()
    };
    message.attributes = vec![
        RuleAttribute::Priority(rule.priority),
        RuleAttribute::FwMark(rule.fwmark),
        RuleAttribute::FwMask(rule.fwmark),
        RuleAttribute::Table(rule.table),
    ];
    message
}

enum Classified {
    Ours(RuleSpec),
    Foreign(ForeignRule),
    OtherPriority,
}

fn classify(message: &RuleMessage, family: Family, priority: u32, table: u32) -> Classified {
    let mut found_priority = 0;
    let mut found_table = u32::from(message.header.table);
    let mut fwmark = None;
    let mut fwmask = None;
    let mut other_selectors = false;
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Priority(p) => found_priority = *p,
            RuleAttribute::Table(t) => found_table = *t,
            RuleAttribute::FwMark(m) => fwmark = Some(*m),
            RuleAttribute::FwMask(m) => fwmask = Some(*m),
            // Selectors besides the mark make it someone else's rule. Anything
            // else (protocol, suppress_*, attributes newer kernels add to every
            // rule) selects nothing and is ignored.
            RuleAttribute::Destination(_)
            | RuleAttribute::Source(_)
            | RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::Goto(_)
            | RuleAttribute::Realm(_)
            | RuleAttribute::TunId(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::L3MDev(true) => other_selectors = true,
            _ => {}
        }
    }
    if found_priority != priority {
        return Classified::OtherPriority;
    }
    let inverted = message.header.flags.contains(RuleFlags::Invert);
    let selects_only_mark = !other_selectors
        && message.header.src_len == 0
        && message.header.dst_len == 0
        && message.header.tos == 0;
    match (fwmark, fwmask) {
        (Some(mark), Some(mask))
            if inverted
                && selects_only_mark
                && mark == mask
                && mark != 0
                && message.header.action == RuleAction::ToTable
                && found_table == table =>
        {
            Classified::Ours(RuleSpec {
                family,
                priority,
                table,
                fwmark: mark,
            })
        }
        _ => Classified::Foreign(ForeignRule {
            family,
            table: if message.header.action == RuleAction::ToTable {
                found_table
            } else {
                0
            },
            fwmark,
            fwmask,
            inverted,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(family: Family) -> RuleSpec {
        RuleSpec {
            family,
            priority: 5210,
            table: 51830,
            fwmark: 0x1000_0000,
        }
    }

    #[test]
    fn our_message_is_classified_as_ours() {
        for family in [Family::V4, Family::V6] {
            let message = rule_message(&spec(family));
            assert!(message.header.flags.contains(RuleFlags::Invert));
            assert_eq!(message.header.table, 0);
            match classify(&message, family, 5210, 51830) {
                Classified::Ours(rule) => assert_eq!(rule, spec(family)),
                _ => panic!("our own rule not recognised"),
            }
        }
    }

    #[test]
    fn a_rule_without_invert_or_for_another_table_is_foreign() {
        let mut plain = rule_message(&spec(Family::V4));
        plain.header.flags = RuleFlags::empty();
        assert!(matches!(
            classify(&plain, Family::V4, 5210, 51830),
            Classified::Foreign(_)
        ));
        let other_table = rule_message(&RuleSpec {
            table: 100,
            ..spec(Family::V4)
        });
        assert!(matches!(
            classify(&other_table, Family::V4, 5210, 51830),
            Classified::Foreign(ForeignRule { table: 100, .. })
        ));
        assert!(matches!(
            classify(&other_table, Family::V4, 1, 51830),
            Classified::OtherPriority
        ));
    }
}
