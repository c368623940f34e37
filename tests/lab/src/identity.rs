//! Who talks to the lab's apiserver: each node's agent with a token bound to
//! its node (as the kubelet issues it to the agent's pod), each node's kubelet,
//! and a cluster admin. The apiserver authenticates them from a tokens file
//! and enforces wireseal's ValidatingAdmissionPolicies, as shipped in
//! deploy/kubernetes/30-admission.yaml, on their writes.

use std::fmt::Write as _;

/// The shipped admission policies, compiled in so the lab binary enforces
/// exactly the file `kubectl apply -f deploy/kubernetes/` installs.
pub const ADMISSION_POLICIES: &str = include_str!("../../../deploy/kubernetes/30-admission.yaml");

/// The agent's ServiceAccount, as in deploy/kubernetes/10-rbac.yaml.
pub const AGENT_USER: &str = "system:serviceaccount:wireseal:wireseal";

/// One user of the lab's apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The agent's ServiceAccount with a token bound to its pod on this node.
    Agent(String),
    /// The agent's ServiceAccount with a token that names no node (a legacy
    /// Secret token, or one requested without a pod).
    UnboundAgent,
    /// The kubelet of this node (`system:node:<node>`, group `system:nodes`).
    Kubelet(String),
    /// A cluster admin (group `system:masters`).
    Admin,
}

impl Identity {
    /// Its bearer token (a lab needs no secret ones).
    #[must_use]
    pub fn token(&self) -> String {
        match self {
            Self::Agent(node) => format!("agent.{node}"),
            Self::UnboundAgent => "agent.unbound".to_owned(),
            Self::Kubelet(node) => format!("kubelet.{node}"),
            Self::Admin => "admin".to_owned(),
        }
    }

    /// Its tokens-file entry (YAML; names and values are plain words).
    fn entry(&self) -> String {
        let (username, groups, extra) = match self {
            Self::Agent(node) => (
                AGENT_USER.to_owned(),
                "[system:serviceaccounts, system:serviceaccounts:wireseal, system:authenticated]",
                format!(
                    "{{authentication.kubernetes.io/node-name: [{node}], authentication.kubernetes.io/pod-name: [wireseal-{node}]}}"
                ),
            ),
            Self::UnboundAgent => (
                AGENT_USER.to_owned(),
                "[system:serviceaccounts, system:serviceaccounts:wireseal, system:authenticated]",
                "{}".to_owned(),
            ),
            Self::Kubelet(node) => (
                format!("system:node:{node}"),
                "[system:nodes, system:authenticated]",
                "{}".to_owned(),
            ),
            Self::Admin => (
                "kubernetes-admin".to_owned(),
                "[system:masters, system:authenticated]",
                "{}".to_owned(),
            ),
        };
        format!(
            "- token: {}\n  user:\n    username: {username}\n    groups: {groups}\n    extra: {extra}\n",
            self.token()
        )
    }
}

/// The tokens file for a lab with these nodes: every identity of every node.
#[must_use]
pub fn tokens_file(nodes: &[String]) -> String {
    let mut out = String::new();
    let mut all = vec![Identity::UnboundAgent, Identity::Admin];
    for node in nodes {
        all.push(Identity::Agent(node.clone()));
        all.push(Identity::Kubelet(node.clone()));
    }
    for identity in all {
        let _ = write!(out, "{}", identity.entry());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_authenticates_as_itself() {
        let nodes = ["node-0".to_owned(), "node-1".to_owned()];
        let tokens = wireseal_fake_apiserver::Tokens::parse(&tokens_file(&nodes)).unwrap();
        let user = |identity: &Identity| {
            tokens
                .authenticate(Some(&format!("Bearer {}", identity.token())))
                .unwrap()
        };
        let agent = user(&Identity::Agent("node-1".into()));
        assert_eq!(agent.username, AGENT_USER);
        assert_eq!(
            agent.extra["authentication.kubernetes.io/node-name"],
            ["node-1"]
        );
        assert!(user(&Identity::UnboundAgent).extra.is_empty());
        assert_eq!(
            user(&Identity::Kubelet("node-0".into())).username,
            "system:node:node-0"
        );
        assert!(
            user(&Identity::Admin)
                .groups
                .contains(&"system:masters".to_owned())
        );
        // The policies load in the fake's evaluator and name the lab's agent.
        wireseal_fake_apiserver::Policies::parse(ADMISSION_POLICIES).unwrap();
        assert!(ADMISSION_POLICIES.contains(&format!("'{AGENT_USER}'")));
    }
}
