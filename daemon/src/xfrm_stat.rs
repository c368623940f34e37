//! IPsec mode's view of the kernel's XFRM error counters
//! (`/proc/net/xfrm_stat`, per network namespace): packets dropped for want
//! of an SA or a policy, failed authentication (`XfrmInStateProtoError`),
//! replays (`XfrmInStateSeqError`), and the rest. The agent reads them on
//! every pass in IPsec mode; `wireseal status` shows those that are not zero
//! and the metrics carry all of them.

use std::collections::BTreeMap;

/// Where the kernel keeps them.
pub const PATH: &str = "/proc/net/xfrm_stat";

/// Reads the file's `Name value` lines.
///
/// # Errors
/// A line that is not a name and a number, naming the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut counters = BTreeMap::new();
    for (at, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!(
                "line {}: {line:?} is not a name and a count",
                at + 1
            ));
        };
        let value = value
            .parse()
            .map_err(|_| format!("line {}: {value:?} is not a count", at + 1))?;
        counters.insert(name.to_owned(), value);
    }
    Ok(counters)
}

/// Reads the counters of this network namespace.
///
/// # Errors
/// What went wrong, naming the file.
pub fn read() -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(PATH).map_err(|err| format!("reading {PATH}: {err}"))?;
    parse(&text).map_err(|err| format!("{PATH}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_table_and_names_a_bad_line() {
        let text = "XfrmInError             \t0\nXfrmInNoStates          \t10\n\
                    XfrmInStateProtoError   \t2\nXfrmOutNoStates         \t7\n";
        let counters = parse(text).unwrap();
        assert_eq!(counters.len(), 4);
        assert_eq!(counters["XfrmInNoStates"], 10);
        assert_eq!(counters["XfrmInStateProtoError"], 2);
        let err = parse("XfrmInError 0\nXfrmOutNoStates seven\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("seven"), "{err}");
        assert!(parse("XfrmInError 0 1\n").is_err());
    }
}
