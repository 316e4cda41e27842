//! `kapsel oci …`: the OCI runtime command line (create, start, state, kill, delete), so
//! tools that drive runc or crun can drive kapsel.

use clap::{Args, Subcommand};
use container::spec::{to_config, Spec};
use container::{Container, CreateOptions, DEFAULT_STATE_ROOT};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct OciArgs {
    /// Directory for container state.
    #[arg(long, global = true, env = "KAPSEL_STATE_ROOT", default_value = DEFAULT_STATE_ROOT)]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: OciCommand,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Create a container from an OCI bundle; its process waits for `start`.
    Create {
        id: String,
        /// Bundle directory holding config.json.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// UNIX socket to receive the pty master when process.terminal is true.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// File to write the container's host pid to.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Run the created container's program.
    Start { id: String },
    /// Print the OCI state as JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM).
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process of the container.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Remove a stopped container (or a live one with --force).
    Delete {
        id: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Run a command inside a running container (its namespaces, cgroup and confinement)
    /// and exit with its status.
    Exec {
        id: String,
        /// Working directory inside the container.
        #[arg(long, default_value = "/")]
        cwd: String,
        /// Extra environment variables (KEY=VALUE), repeatable.
        #[arg(long, short = 'e')]
        env: Vec<String>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Freeze every process of the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List containers.
    List,
}

/// Runs one `kapsel oci` subcommand.
pub fn run(args: OciArgs) -> ExitCode {
    if let OciCommand::Exec {
        id,
        cwd,
        env,
        command,
    } = args.command
    {
        return match exec(&args.root, &id, cwd, env, command) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => super::fail(e.as_ref(), 125),
        };
    }
    match dispatch(&args.root, args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(e.as_ref(), 1),
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn dispatch(root: &Path, cmd: OciCommand) -> Res {
    match cmd {
        OciCommand::Create {
            id,
            bundle,
            console_socket,
            pid_file,
        } => create(root, &id, &bundle, console_socket, pid_file),
        OciCommand::Start { id } => Ok(Container::load(root, &id)?.start()?),
        OciCommand::State { id } => {
            let state = Container::load(root, &id)?.oci_state();
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(())
        }
        OciCommand::Kill { id, signal, all } => {
            let sig = parse_signal(&signal).ok_or_else(|| format!("unknown signal {signal:?}"))?;
            Ok(Container::load(root, &id)?.kill(sig, all)?)
        }
        OciCommand::Delete { id, force } => Ok(Container::load(root, &id)?.delete(force)?),
        OciCommand::Exec { .. } => Err("exec is handled by run".into()),
        OciCommand::Pause { id } => Ok(Container::load(root, &id)?.pause()?),
        OciCommand::Resume { id } => Ok(Container::load(root, &id)?.resume()?),
        OciCommand::List => {
            println!("{:<24} {:>8} {:<8} BUNDLE", "ID", "PID", "STATUS");
            for id in Container::list(root) {
                if let Ok(c) = Container::load(root, &id) {
                    let s = c.oci_state();
                    println!("{:<24} {:>8} {:<8} {}", s.id, s.pid, s.status, s.bundle);
                }
            }
            Ok(())
        }
    }
}

fn create(
    root: &Path,
    id: &str,
    bundle: &Path,
    console_socket: Option<PathBuf>,
    pid_file: Option<PathBuf>,
) -> Res {
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

fn exec(
    root: &Path,
    id: &str,
    cwd: String,
    env: Vec<String>,
    command: Vec<String>,
) -> Result<i32, Box<dyn std::error::Error>> {
    let c = Container::load(root, id)?;
    let mut process = container::ProcessConfig::new(command);
    process.cwd = cwd;
    process.env.extend(env);
    let pid = c.exec(&process, container::Stdio::default())?;
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
