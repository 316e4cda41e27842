//! `kapsel container run`: one container in the foreground from an image directory or
//! tarball, with limits, its exit status as ours.

use clap::{Args, Subcommand};
use container::{image, ContainerConfig, RootfsSource, DEFAULT_STATE_ROOT};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ContainerArgs {
    #[command(subcommand)]
    pub command: ContainerCommand,
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Run a command in a new container in the foreground; exits with its status.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root filesystem: a directory or a tarball, used as the read-only lower layer.
    #[arg(long)]
    pub image: PathBuf,
    /// Container name (default: kapsel-PID).
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit, e.g. 256M or 1G (a plain number is bytes).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU cap in cores, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids: Option<i64>,
    /// Allocate a pseudo-terminal and attach it to this terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in a user namespace: container root is host uid/gid 100000 (65536 ids).
    #[arg(long)]
    pub userns: bool,
    /// Directory for container state.
    #[arg(long, env = "KAPSEL_STATE_ROOT", default_value = DEFAULT_STATE_ROOT)]
    pub root: PathBuf,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

/// Runs one `kapsel container` subcommand.
pub fn run(args: ContainerArgs) -> ExitCode {
    match args.command {
        ContainerCommand::Run(r) => match run_one(r) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => super::fail(e.as_ref(), 125),
        },
    }
}

fn parse_bytes(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1i64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn run_one(a: RunArgs) -> Result<i32, Box<dyn std::error::Error>> {
    let lower = image::prepare(&a.image, &image::cache_dir())?;
    let name = a
        .name
        .unwrap_or_else(|| format!("kapsel-{}", std::process::id()));
    let mut cfg = ContainerConfig::new(&name, RootfsSource::Overlay(vec![lower]), a.command);
    cfg.process.terminal = a.tty;
    if let Some(m) = &a.memory {
        cfg.resources.memory_limit = Some(parse_bytes(m)?);
    }
    if let Some(c) = a.cpus {
        cfg.resources = cfg.resources.with_cpu_cap(c);
    }
    cfg.resources.pids_limit = a.pids;
    if a.userns {
        cfg = cfg.with_user_namespace(100_000, 65_536);
    }
    Ok(container::foreground::run(&cfg, &a.root)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
    }
}
