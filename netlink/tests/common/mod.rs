//! Helpers of this crate's privileged tests on top of `wireseal-netns`:
//! reading `ip` output, and carrying out a plan's routing steps.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    unreachable_pub,
    reason = "shared by the test binaries through `mod common`"
)]

/// The line of `output` that starts with `prefix`, if any.
pub fn line_starting<'a>(output: &'a str, prefix: &str) -> Option<&'a str> {
    output
        .lines()
        .find(|line| line.trim_start().starts_with(prefix))
}

/// Carries out the link, address, route, catch-all and rule steps of `plan` in `ids`' tables,
/// in order, as the agent's routing does (the device steps are left out:
/// these tests have no WireGuard device); returns every step that failed
/// with its error.
pub async fn apply_steps(
    nl: &wireseal_netlink::Netlink,
    ids: wireseal_netlink::RoutingIds,
    plan: &wireseal_core::Plan,
) -> Vec<(wireseal_core::Step, wireseal_netlink::Error)> {
    use wireseal_core::Step;
    let mut links = wireseal_netlink::LinkIndexes::default();
    let mut failed = Vec::new();
    for step in plan.steps() {
        if matches!(step, Step::CreateLink(_) | Step::Device(_)) {
            continue;
        }
        if let Err(err) = nl.apply_step(ids, step, &mut links).await {
            failed.push((step.clone(), err));
        }
    }
    failed
}
