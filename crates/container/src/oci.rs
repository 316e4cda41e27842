//! The OCI runtime verbs (create, start, state, kill, delete, exec, pause, resume, list)
//! as functions, shared by `kapsel oci` and the lean `kapsel-oci` binary.

use crate::config::ProcessConfig;
use crate::container::{Container, CreateOptions};
use crate::process::Stdio;
use crate::spec::{to_config, Spec};
use std::error::Error;
use std::path::{Path, PathBuf};

/// Result of a verb; errors are printed by the front end.
pub type VerbResult<T = ()> = Result<T, Box<dyn Error>>;

/// `create`: a container from `bundle/config.json`, its process waiting for `start`.
pub fn create(
    root: &Path,
    id: &str,
    bundle: &Path,
    console_socket: Option<PathBuf>,
    pid_file: Option<PathBuf>,
) -> VerbResult {
    let bundle = bundle
        .canonicalize()
        .map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    let spec = Spec::load(&bundle)?;
    let cfg = to_config(&spec, id, &bundle)?;
    if cfg.process.terminal && console_socket.is_none() {
        return Err("process.terminal is true: --console-socket is required".into());
    }
    let mut opts = CreateOptions::oci(root);
    opts.console_socket = console_socket;
    let c = Container::create(&cfg, &opts)?;
    if let Some(p) = pid_file {
        std::fs::write(&p, c.pid().to_string()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// `start`.
pub fn start(root: &Path, id: &str) -> VerbResult {
    Ok(Container::load(root, id)?.start()?)
}

/// `state`: the OCI state document as pretty JSON.
pub fn state(root: &Path, id: &str) -> VerbResult<String> {
    let s = Container::load(root, id)?.oci_state();
    Ok(serde_json::to_string_pretty(&s)?)
}

/// `kill ID [SIGNAL]`.
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> VerbResult {
    let sig = parse_signal(signal).ok_or_else(|| format!("unknown signal {signal:?}"))?;
    Ok(Container::load(root, id)?.kill(sig, all)?)
}

/// `delete [--force] ID`.
pub fn delete(root: &Path, id: &str, force: bool) -> VerbResult {
    Ok(Container::load(root, id)?.delete(force)?)
}

/// `pause` and `resume`.
pub fn pause(root: &Path, id: &str, frozen: bool) -> VerbResult {
    let mut c = Container::load(root, id)?;
    if frozen {
        c.pause()?;
    } else {
        c.resume()?;
    }
    Ok(())
}

/// `list`: a table of the containers under `root`.
pub fn list(root: &Path) -> String {
    let mut out = format!("{:<24} {:>8} {:<8} BUNDLE\n", "ID", "PID", "STATUS");
    for id in Container::list(root) {
        if let Ok(c) = Container::load(root, &id) {
            let s = c.oci_state();
            out.push_str(&format!(
                "{:<24} {:>8} {:<8} {}\n",
                s.id, s.pid, s.status, s.bundle
            ));
        }
    }
    out
}

/// `exec ID -- CMD…`: runs a command in the running container, returns its exit code.
pub fn exec(
    root: &Path,
    id: &str,
    cwd: String,
    env: Vec<String>,
    command: Vec<String>,
) -> VerbResult<i32> {
    let c = Container::load(root, id)?;
    let mut process = ProcessConfig::new(command);
    process.cwd = cwd;
    process.env.extend(env);
    let pid = c.exec(&process, Stdio::default())?;
    let mut status = 0;
    // SAFETY: waiting for the child exec just started; status is a valid out-pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    })
}

/// `SIGKILL`, `KILL`, `kill` or `9`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => return None,
    })
}

/// Prints `e` and its causes as one line on stderr.
pub fn print_error(e: &dyn Error) {
    let mut line = format!("kapsel: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGFOO"), None);
    }
}
