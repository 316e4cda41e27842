//! `kapsel vm OP --api-socket PATH`: drive a running VMM through its control API
//! (lifecycle, snapshots, metrics, run-time I/O limits, disk images, the memory balloon).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use client::vm::VmClient;
use client::{ClientError, Endpoint};

#[derive(Debug, Args)]
pub struct VmArgs {
    /// The VMM's API socket (`kapsel run --api-socket`).
    #[arg(long, global = true)]
    pub api_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub op: VmOp,
}

#[derive(Debug, Subcommand)]
pub enum VmOp {
    /// Print state, configuration and counters as JSON.
    Info,
    /// Pause all vCPUs.
    Pause,
    /// Resume paused vCPUs.
    Resume,
    /// Ask the guest to shut down (Ctrl-Alt-Del), forcing the stop after the timeout.
    Shutdown {
        /// Milliseconds the guest gets before the VM is stopped (0: at once).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Ask the guest to reboot; the VMM ends when the guest resets.
    Reboot,
    /// Write a snapshot of the paused VM into a directory.
    Snapshot {
        /// Target directory (must not already hold a snapshot).
        path: PathBuf,
    },
    /// Print the VM's metrics in Prometheus text format.
    Metrics,
    /// Show the memory balloon (target, size, guest statistics) or resize it.
    Balloon {
        /// New balloon size, taken from the guest: `256M`, `1G`, or a plain number of MiB
        /// (0 gives everything back). Without it, the balloon is shown.
        #[arg(long, value_name = "SIZE")]
        target: Option<String>,
    },
    /// Show or change a disk's or network card's I/O limits while the VM runs.
    Limits {
        #[command(subcommand)]
        device: LimitsDevice,
    },
    /// Show the image a disk serves, or make the paused VM's disk continue on another one
    /// (an image whose backing chain contains the current one, of the same size: a fresh
    /// qcow2 overlay over it, typically).
    Disk {
        /// The disk, by id (`disk0`, … or its `id=`).
        id: String,
        /// The image to continue on.
        #[arg(long, value_name = "FILE", requires = "format")]
        switch_to: Option<PathBuf>,
        /// Its format: raw or qcow2.
        #[arg(long, value_parser = ["raw", "qcow2"])]
        format: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsDevice {
    /// A disk, by id (`disk0`, … or its `id=`).
    Disk {
        id: String,
        /// New limits, replacing all current ones: `bw=20M,iops=500,bw_burst=…,iops_burst=…`
        /// ("" removes every limit). Without it, the limits are shown.
        #[arg(long)]
        set: Option<String>,
    },
    /// A network card, by id (`net0`, …).
    Net {
        id: String,
        /// New limits, replacing all current ones: `rx_bw=10M,tx_bw=…,rx_ops=…,tx_ops=…` (bare
        /// `bw=`/`ops=` for both directions; "" removes every limit). Without it, the limits
        /// are shown.
        #[arg(long)]
        set: Option<String>,
    },
}

/// Prints to stdout, ignoring a closed pipe (e.g. `| head`).
fn print_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_json<T: serde::Serialize>(v: &T) {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_else(|e| e.to_string());
    text.push('\n');
    print_text(&text);
}

/// A bad `--set` value; reported like a server's 4xx.
fn bad_set(e: vmm::net_config::OptionError) -> ClientError {
    ClientError::Status {
        status: 400,
        message: e.to_string(),
    }
}

fn limits(client: &VmClient, device: LimitsDevice) -> Result<(), ClientError> {
    use vmm::io_limits::from_spec;
    use vmm::net_config::{parse_disk_limits, parse_net_limits};
    match device {
        LimitsDevice::Disk { id, set: None } => print_json(&client.disk_limits(&id)?),
        LimitsDevice::Disk { id, set: Some(s) } => {
            let l = parse_disk_limits("set", &s).map_err(bad_set)?;
            print_json(&client.set_disk_limits(&id, &from_spec(&l))?)
        }
        LimitsDevice::Net { id, set: None } => print_json(&client.net_limits(&id)?),
        LimitsDevice::Net { id, set: Some(s) } => {
            let (rx, tx) = parse_net_limits("set", &s).map_err(bad_set)?;
            let l = api::vm::NetLimits {
                rx: from_spec(&rx),
                tx: from_spec(&tx),
            };
            print_json(&client.set_net_limits(&id, &l)?)
        }
    }
    Ok(())
}

fn disk(
    client: &VmClient,
    id: &str,
    to: Option<PathBuf>,
    format: Option<String>,
) -> Result<(), ClientError> {
    use api::vm::{DiskBackendRequest, DiskFormat};
    let Some(to) = to else {
        print_json(&client.disk_backend(id)?);
        return Ok(());
    };
    let path = std::path::absolute(&to).map_err(|e| ClientError::Status {
        status: 400,
        message: format!("--switch-to {}: {e}", to.display()),
    })?;
    let format = match format.as_deref() {
        Some("raw") => DiskFormat::Raw,
        _ => DiskFormat::Qcow2,
    };
    let req = DiskBackendRequest {
        path: path.display().to_string(),
        format,
    };
    print_json(&client.set_disk_backend(id, &req)?);
    Ok(())
}

fn exec(client: &VmClient, op: VmOp) -> Result<(), ClientError> {
    match op {
        VmOp::Info => print_json(&client.info()?),
        VmOp::Pause => print_json(&client.pause()?),
        VmOp::Resume => print_json(&client.resume()?),
        VmOp::Shutdown { timeout_ms } => print_json(&client.shutdown(timeout_ms)?),
        VmOp::Reboot => print_json(&client.reboot()?),
        VmOp::Snapshot { path } => print_json(&client.snapshot(&path.display().to_string())?),
        VmOp::Metrics => print_text(&client.metrics()?),
        VmOp::Limits { device } => limits(client, device)?,
        VmOp::Disk {
            id,
            switch_to,
            format,
        } => disk(client, &id, switch_to, format)?,
        VmOp::Balloon { target: None } => print_json(&client.balloon()?),
        VmOp::Balloon { target: Some(t) } => {
            let bytes = vmm::parse_size(&t).map_err(|e| ClientError::Status {
                status: 400,
                message: format!("--target: {e}"),
            })?;
            print_json(&client.set_balloon(bytes >> 20)?)
        }
    }
    Ok(())
}

pub fn run(args: VmArgs) -> ExitCode {
    let Some(socket) = args.api_socket else {
        eprintln!("kapsel: --api-socket PATH is required");
        return ExitCode::from(2);
    };
    let client = VmClient::new(Endpoint::new(socket));
    match exec(&client, args.op) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Status { status, message }) => {
            eprintln!("kapsel: {message}");
            ExitCode::from(if status < 500 { 6 } else { 7 })
        }
        Err(e) => super::fail(&e, 1),
    }
}
