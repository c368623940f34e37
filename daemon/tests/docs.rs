//! The docs name files of this repository in backticks (`tests/lab/tests/e2e.rs`,
//! `deploy/kubernetes/`): every such name must exist, so a moved or renamed
//! file cannot leave a README pointing at nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every Markdown file git tracks (results of past runs included: they name
/// the tests and scripts that produced them).
fn markdown_files(repo: &Path) -> Vec<PathBuf> {
    let output = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "*.md",
        ])
        .current_dir(repo)
        .output()
        .expect("git (the docs check lists the tracked Markdown files)");
    assert!(output.status.success(), "git ls-files failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| repo.join(line))
        .filter(|path| path.exists())
        .collect()
}

/// Top-level entries a path in the docs starts with to count as one of
/// ours: those git tracks (not `target/` or the VM lab's `build/`, which
/// runs create).
fn top_level(repo: &Path) -> Vec<String> {
    let output = Command::new("git")
        .args(["ls-files"])
        .current_dir(repo)
        .output()
        .expect("git");
    let mut roots: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split('/').next())
        .map(str::to_owned)
        .collect();
    roots.dedup();
    roots
}

/// The backticked spans of `text` that look like a path in this repository:
/// they start with a top-level entry, or (as `k3s/check.sh` in
/// vagrant/README.md) with an entry of the document's own folder.
fn path_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            span.contains('/')
                && !span.starts_with('/')
                // Outside the repository (a build folder beside it).
                && !span.starts_with("../")
                && !span.contains("://")
                && span
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        })
        .map(|span| span.trim_end_matches('.').to_owned())
        .collect()
}

/// Whether git ignores `path`: build output a run makes (`fuzz/target/`).
fn ignored(repo: &Path, path: &str) -> bool {
    Command::new("git")
        .args(["check-ignore", "--no-index", "-q", path])
        .current_dir(repo)
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let repo = repo();
    let roots = top_level(&repo);
    let mut checked = 0;
    let mut missing = Vec::new();
    for doc in markdown_files(&repo) {
        let text = std::fs::read_to_string(&doc).unwrap();
        let here = doc.parent().unwrap();
        for span in path_spans(&text) {
            let first = span.split('/').next().unwrap_or_default();
            let from_root = roots.iter().any(|root| root == first);
            let from_here = here != repo && here.join(first).exists();
            if !from_root && !from_here {
                continue;
            }
            checked += 1;
            if !repo.join(&span).exists() && !here.join(&span).exists() && !ignored(&repo, &span) {
                missing.push(format!(
                    "{}: `{span}`",
                    doc.strip_prefix(&repo).unwrap().display()
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "the docs name files that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scan_finds_paths_and_leaves_other_code_alone() {
    let text = "see `tests/lab/tests/e2e.rs`, `deploy/kubernetes/`, \
                `kubectl get nodes`, `/var/lib/wireseal`, `10.244.0.0/24`, \
                `https://example.com/x`, `../build/x` and `k3s/check.sh`.";
    assert_eq!(
        path_spans(text),
        [
            "tests/lab/tests/e2e.rs",
            "deploy/kubernetes/",
            "10.244.0.0/24",
            "k3s/check.sh"
        ]
    );
}
