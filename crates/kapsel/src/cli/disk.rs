//! `kapsel disk create|info`: make and describe disk images (raw, qcow2 with backing files).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct DiskArgs {
    #[command(subcommand)]
    pub op: DiskOp,
}

#[derive(Debug, Subcommand)]
pub enum DiskOp {
    /// Create an image: raw (sparse) or qcow2, optionally a copy-on-write overlay over a
    /// backing image (which is never written through the overlay).
    Create {
        /// The new image (must not exist).
        file: PathBuf,
        /// Virtual size, e.g. `10G`, `512M` (plain number: MiB); default: the backing
        /// image's size.
        #[arg(long)]
        size: Option<String>,
        /// Image format.
        #[arg(long, default_value = "qcow2")]
        format: disk::Format,
        /// Backing image, as recorded in the overlay: a relative name is relative to the
        /// overlay's directory.
        #[arg(long)]
        backing: Option<String>,
        /// Format of the backing image (recorded, never guessed).
        #[arg(long)]
        backing_format: Option<disk::Format>,
        /// qcow2 cluster size in bytes (a power of two, 512 to 2M).
        #[arg(long, default_value_t = 65536)]
        cluster_size: u64,
    },
    /// Describe an image and its backing chain.
    Info {
        file: PathBuf,
        /// Format of FILE; default: read from its first bytes (describing only).
        #[arg(long)]
        format: Option<disk::Format>,
        /// Print the chain as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: DiskArgs) -> ExitCode {
    match args.op {
        DiskOp::Create {
            file,
            size,
            format,
            backing,
            backing_format,
            cluster_size,
        } => {
            let size = match size.as_deref().map(vmm::config::parse_size).transpose() {
                Ok(s) => s,
                Err(e) => return super::fail(&e, 2),
            };
            if !cluster_size.is_power_of_two() {
                eprintln!("kapsel: --cluster-size {cluster_size} is not a power of two");
                return ExitCode::from(2);
            }
            let backing = match (backing, backing_format) {
                (Some(b), Some(f)) => Some((b, f)),
                (None, None) => None,
                (Some(_), None) => {
                    eprintln!(
                        "kapsel: --backing needs --backing-format raw|qcow2 (recorded in the \
                         image; kapsel never guesses a backing format)"
                    );
                    return ExitCode::from(2);
                }
                (None, Some(_)) => {
                    eprintln!("kapsel: --backing-format without --backing");
                    return ExitCode::from(2);
                }
            };
            let opts = disk::CreateOptions {
                format,
                size,
                backing,
                cluster_bits: cluster_size.trailing_zeros(),
            };
            match disk::create(&file, &opts) {
                Ok(size) => {
                    println!("{}: {format}, {size} bytes", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => super::fail(&e, 1),
            }
        }
        DiskOp::Info { file, format, json } => match disk::info_chain(&file, format) {
            Ok(chain) if json => match serde_json::to_string_pretty(&chain) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => super::fail(&e, 1),
            },
            Ok(chain) => {
                for (depth, i) in chain.iter().enumerate() {
                    let indent = "  ".repeat(depth);
                    println!("{indent}{}", i.path.display());
                    println!("{indent}  format: {}", i.format);
                    println!("{indent}  virtual size: {} bytes", i.virtual_size);
                    println!("{indent}  disk usage: {} bytes", i.disk_usage);
                    if let (Some(v), Some(cs)) = (i.qcow2_version, i.cluster_size) {
                        println!("{indent}  qcow2 version: {v}, cluster size: {cs}");
                    }
                    if let (Some(b), Some(f)) = (&i.backing_file, i.backing_format) {
                        println!("{indent}  backing file: {b} ({f})");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => super::fail(&e, 1),
        },
    }
}
