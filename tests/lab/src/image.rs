//! The lab's build of the wireseal image: `deploy/image/build-offline.sh`
//! (Debian base from mmdebstrap, cached; the binaries the lab runs anyway)
//! under a tag of its own, so a user's `ghcr.io/wireseal/wireseal` build is
//! never replaced by the lab's debug one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// The build script failed.
#[derive(Debug, Error)]
pub enum ImageError {
    /// It could not start.
    #[error("cannot run {script}: {source}")]
    Spawn {
        /// The script.
        script: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("building the lab image with {script} failed ({status}):\n{output}")]
    Failed {
        /// The script.
        script: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
}

/// The repository this crate was built from.
#[must_use]
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tag of the lab's image.
#[must_use]
pub fn lab_tag() -> String {
    format!("localhost/wireseal-lab:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the lab's image from the binaries in `bin_dir`, unless it is up to
/// date (the script compares its inputs with the last build's); its tag.
/// The first run on a machine also makes the Debian base (a minute or two,
/// from the Debian mirror); later runs take it from the cache.
///
/// # Errors
/// When the script fails (no docker, no mmdebstrap, no mirror), with its output.
pub fn ensure(bin_dir: &Path) -> Result<String, ImageError> {
    let script = repo_root().join("deploy/image/build-offline.sh");
    let tag = lab_tag();
    let output = Command::new("bash")
        .arg(&script)
        .arg("--bin-dir")
        .arg(bin_dir)
        .args(["--tag", &tag])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            script: script.clone(),
            source,
        })?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(ImageError::Failed {
            script,
            status: output.status.to_string(),
            output: printed,
        });
    }
    tracing::info!(tag = %tag, report = %printed.trim(), "lab image ready");
    Ok(tag)
}

/// The instructions of a Containerfile: continuation lines joined (with a
/// space), comments and blank lines dropped, as the builder reads them.
#[must_use]
pub fn containerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_join_continuations_and_drop_comments() {
        let text = "# a comment\nFROM x\n\nRUN a \\\n  # inside\n  && b\nLABEL k=\"v\" \\\n      l=\"w\"\n";
        assert_eq!(
            containerfile_instructions(text),
            ["FROM x", "RUN a && b", "LABEL k=\"v\" l=\"w\""]
        );
    }
}
