//! Scheduled key rotation, make-before-break: a node announces its next
//! public key beside the current one with the time it switches
//! (`wireseal.dev/next-public-key`, `wireseal.dev/key-switch-at`); every
//! peer replaces the node's key at that time, so the disruption is bounded
//! by one handshake.
//!
//! Both values are the node's own word and may be hostile: a switch time is
//! bounded ([`MAX_SWITCH_LEAD`] ahead at most), and a next key is a claim on
//! a key like any other (see the desired state's ownership): announcing
//! another node's key, or ours, is refused like a copied key.

use crate::annotation::{self, Field, InputErrorKind, NodeInputError};
use crate::key::PublicKey;
use crate::node::NodeView;

/// The furthest ahead a switch may be announced. A later one is refused
/// (an Event on the node): a peer must not keep a key pending for months
/// on a node's word, and a rotating agent announces minutes ahead.
pub const MAX_SWITCH_LEAD: i64 = 7 * 24 * 3600;

/// Length of a switch time as written: `2026-12-03T14:00:00Z`.
const SWITCH_AT_LEN: usize = 20;

/// A node's announced next key and when it switches to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextKey {
    /// The public key of the node's next private key.
    pub key: PublicKey,
    /// When the node switches, in seconds since the Unix epoch.
    pub switch_at: i64,
}

/// Where a remote node stands in a rotation at some moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPhase {
    /// The key peers use for it now: the announced next key once its
    /// switch time has come, else the published key.
    pub in_use: Option<PublicKey>,
    /// While it rotates (announced or switched), its published key: the
    /// peer the datapath holds for it under that key is its own.
    pub previous: Option<PublicKey>,
    /// A next key announced for a time still ahead.
    pub announced: Option<PublicKey>,
    /// The announcement refused for its switch time.
    pub refused: Option<NodeInputError>,
}

/// The phase of `node` at `now` (seconds since the Unix epoch).
#[must_use]
pub fn phase(node: &NodeView, now: i64) -> KeyPhase {
    let current = node.public_key;
    let Some(next) = node.next_key.filter(|next| Some(next.key) != current) else {
        return KeyPhase {
            in_use: current,
            ..KeyPhase::default()
        };
    };
    if next.switch_at > now.saturating_add(MAX_SWITCH_LEAD) {
        return KeyPhase {
            in_use: current,
            refused: Some(NodeInputError::new(
                &node.name,
                Field::Annotation(annotation::KEY_SWITCH_AT),
                &format_switch_at(next.switch_at),
                InputErrorKind::SwitchTooFar {
                    max_days: MAX_SWITCH_LEAD / 86_400,
                },
            )),
            ..KeyPhase::default()
        };
    }
    if next.switch_at <= now {
        KeyPhase {
            in_use: Some(next.key),
            previous: current,
            ..KeyPhase::default()
        }
    } else {
        KeyPhase {
            in_use: current,
            previous: current,
            announced: Some(next.key),
            refused: None,
        }
    }
}

/// The earliest switch still ahead of `now` among `nodes` (within the
/// bounds): the reconcile loop wakes then to replace that node's key.
#[must_use]
pub fn next_switch<'a>(nodes: impl IntoIterator<Item = &'a NodeView>, now: i64) -> Option<i64> {
    nodes
        .into_iter()
        .filter_map(|node| node.next_key)
        .map(|next| next.switch_at)
        .filter(|at| *at > now && *at <= now.saturating_add(MAX_SWITCH_LEAD))
        .min()
}

/// Decodes `wireseal.dev/key-switch-at`: an RFC 3339 time in UTC to the
/// second, exactly as [`format_switch_at`] writes it.
///
/// # Errors
/// [`InputErrorKind::SwitchAtSyntax`] for anything else.
pub fn decode_switch_at(value: &str) -> Result<i64, InputErrorKind> {
    let bytes = value.as_bytes();
    if bytes.len() != SWITCH_AT_LEN {
        return Err(InputErrorKind::SwitchAtSyntax);
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, InputErrorKind> {
        let digits = &bytes[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(InputErrorKind::SwitchAtSyntax);
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + i64::from(*d - b'0')))
    };
    let separators = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'Z'),
    ];
    if separators.iter().any(|(at, c)| bytes[*at] != *c) {
        return Err(InputErrorKind::SwitchAtSyntax);
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(InputErrorKind::SwitchAtSyntax);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Writes a switch time as `wireseal.dev/key-switch-at` carries it.
#[must_use]
pub fn format_switch_at(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
