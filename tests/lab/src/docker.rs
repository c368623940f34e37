//! Containers through the `docker` command line: the nodes' sandboxes (the
//! network namespace a node's pods join) and the DaemonSets' containers.
//!
//! Every container the lab starts carries the label [`LABEL`] with its run's
//! prefix, so `wireseal-lab cleanup` finds what a crashed run left behind.

use std::process::Output;
use std::time::Duration;

use crate::netns::{CmdError, run};

/// Label key on every container of a lab run; its value is the run's prefix.
pub const LABEL: &str = "dev.wireseal.lab";

/// Runs `docker args` to completion.
///
/// # Errors
/// As [`run`].
pub fn docker(args: &[&str]) -> Result<Output, CmdError> {
    run("docker", args)
}

/// Fails unless the docker command reaches a running engine.
///
/// # Errors
/// Saying so, with what `docker info` answered.
pub fn check_available() -> Result<(), CmdError> {
    docker(&["info", "--format", "{{.ServerVersion}}"]).map(|_| ())
}

/// A container, removed (`docker rm --force`) on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

/// What `docker inspect` says of a container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Running now.
    pub running: bool,
    /// Its main process on the machine (0 when not running).
    pub pid: u32,
    /// The exit code of its last run.
    pub exit_code: i32,
}

impl Container {
    /// `docker run` with `args` (which must include `--detach` and `--name`),
    /// for a container called `name`.
    ///
    /// # Errors
    /// When docker refuses or the container cannot start.
    pub fn run(name: &str, args: &[String]) -> Result<Self, CmdError> {
        let mut all = vec!["run"];
        all.extend(args.iter().map(String::as_str));
        // Removed on drop also when starting failed half-way (created, not started).
        let container = Self {
            name: name.to_owned(),
        };
        docker(&all)?;
        Ok(container)
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state.
    ///
    /// # Errors
    /// When docker does not know it.
    pub fn state(&self) -> Result<State, CmdError> {
        let output = docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.Pid}} {{.State.ExitCode}}",
            &self.name,
        ])?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut words = text.split_whitespace();
        let failed = || CmdError::Failed {
            command: format!("docker inspect {}", self.name),
            status: "0".into(),
            stderr: format!("unexpected answer {text:?}"),
            stdout: String::new(),
        };
        let running = words.next().ok_or_else(failed)? == "true";
        let pid = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(failed)?;
        let exit_code = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(failed)?;
        Ok(State {
            running,
            pid,
            exit_code,
        })
    }

    /// `docker stop --time GRACE`: SIGTERM, SIGKILL after `grace`.
    ///
    /// # Errors
    /// When docker fails.
    pub fn stop(&self, grace: Duration) -> Result<(), CmdError> {
        stop_all(&[self], grace)
    }

    /// `docker restart --time GRACE`: stopped as by [`Container::stop`], then
    /// started again with the same configuration, as the kubelet restarts a
    /// container in its pod.
    ///
    /// # Errors
    /// When docker fails.
    pub fn restart(&self, grace: Duration) -> Result<(), CmdError> {
        docker(&[
            "restart",
            "--time",
            &grace.as_secs().to_string(),
            &self.name,
        ])
        .map(|_| ())
    }

    /// `docker wait`: blocks until it stops; its exit code.
    ///
    /// # Errors
    /// When docker fails.
    pub fn wait(&self) -> Result<i32, CmdError> {
        let output = docker(&["wait", &self.name])?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        text.parse().map_err(|_| CmdError::Failed {
            command: format!("docker wait {}", self.name),
            status: "0".into(),
            stderr: format!("unexpected answer {text:?}"),
            stdout: String::new(),
        })
    }

    /// `docker exec` of `args` inside it, as `kubectl exec` does.
    ///
    /// # Errors
    /// When the command cannot run or exits non-zero.
    pub fn exec(&self, args: &[&str]) -> Result<Output, CmdError> {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Its whole log (stdout and stderr).
    #[must_use]
    pub fn logs(&self) -> String {
        docker(&["logs", &self.name]).map_or_else(
            |err| format!("(no logs: {err})"),
            |out| {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text
            },
        )
    }

    /// The last `lines` lines of its log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.logs();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.name]);
    }
}

/// Stops `containers` together (`docker stop` handles them in parallel), as
/// the kubelet stops a pod's containers.
///
/// # Errors
/// When docker fails.
pub fn stop_all(containers: &[&Container], grace: Duration) -> Result<(), CmdError> {
    let seconds = grace.as_secs().to_string();
    let mut args = vec!["stop", "--time", seconds.as_str()];
    args.extend(containers.iter().map(|c| c.name()));
    docker(&args).map(|_| ())
}

/// Names of the containers (running or not) labelled with `prefix` as their
/// run, or with any run when `prefix` is `None`. Empty when docker is absent.
#[must_use]
pub fn labelled(prefix: Option<&str>) -> Vec<String> {
    let filter = match prefix {
        Some(prefix) => format!("label={LABEL}={prefix}"),
        None => format!("label={LABEL}"),
    };
    docker(&["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the containers of every lab run; how many there were.
#[must_use]
pub fn remove_labelled() -> usize {
    let names = labelled(None);
    for name in &names {
        let _ = docker(&["rm", "--force", "--volumes", name]);
    }
    names.len()
}
