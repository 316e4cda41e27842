//! `kapsel oci …`: the OCI runtime command line (create, start, state, kill, delete), so
//! tools that drive runc or crun can drive kapsel.

use clap::{Args, Subcommand};
use container::{oci, DEFAULT_STATE_ROOT};
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
        return match oci::exec(&args.root, &id, cwd, env, command) {
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
        } => oci::create(root, &id, &bundle, console_socket, pid_file),
        OciCommand::Start { id } => oci::start(root, &id),
        OciCommand::State { id } => {
            println!("{}", oci::state(root, &id)?);
            Ok(())
        }
        OciCommand::Kill { id, signal, all } => oci::kill(root, &id, &signal, all),
        OciCommand::Delete { id, force } => oci::delete(root, &id, force),
        OciCommand::Exec { .. } => Err("exec is handled by run".into()),
        OciCommand::Pause { id } => oci::pause(root, &id, true),
        OciCommand::Resume { id } => oci::pause(root, &id, false),
        OciCommand::List => {
            print!("{}", oci::list(root));
            Ok(())
        }
    }
}
