//! `kapsel image import|list|delete`.

use std::path::PathBuf;

use api::daemon::ImportImage;
use clap::{Args, Subcommand};

use super::lifecycle::NameArgs;
use super::list::{Format, ListArgs};
use super::{print_json, Conn, VerbError, VerbResult};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Name of the image.
    pub name: String,
    /// Kernel (bzImage or ELF vmlinux): a VM image.
    #[arg(long, required_unless_present = "rootfs", conflicts_with = "rootfs")]
    pub kernel: Option<PathBuf>,
    /// Root filesystem directory or tarball: a container image.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Root disk (raw).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Base kernel command line of instances of this image.
    #[arg(long)]
    pub cmdline: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy kernel, initrd and disk (a VM image) or a root filesystem directory or tarball
    /// (a container image) into the storage pool.
    Import(ImportArgs),
    List(ListArgs),
    Delete(NameArgs),
}

fn absolute(p: PathBuf) -> Result<String, VerbError> {
    std::fs::canonicalize(&p)
        .map(|p| p.display().to_string())
        .map_err(|source| VerbError::Io {
            what: format!("cannot find {}", p.display()),
            source,
        })
}

pub fn run(c: ImageCommand) -> VerbResult {
    match c {
        ImageCommand::Import(a) => {
            let req = ImportImage {
                name: a.name,
                kernel: a.kernel.map(absolute).transpose()?.unwrap_or_default(),
                rootfs: a.rootfs.map(absolute).transpose()?,
                initrd: a.initrd.map(absolute).transpose()?,
                disk: a.disk.map(absolute).transpose()?,
                cmdline: a.cmdline,
            };
            let img = a
                .conn
                .client()
                .import_image(&req)
                .map_err(VerbError::from)?;
            println!("{} imported ({} bytes)", img.name, img.size_bytes);
            Ok(())
        }
        ImageCommand::List(a) => {
            let imgs = a.conn.client().images().map_err(VerbError::from)?;
            match a.format {
                Format::Json => print_json(&imgs),
                Format::Table => {
                    println!("{:<24} {:>12}  CMDLINE", "NAME", "SIZE");
                    for i in imgs {
                        println!("{:<24} {:>12}  {}", i.name, i.size_bytes, i.cmdline);
                    }
                    Ok(())
                }
            }
        }
        ImageCommand::Delete(a) => {
            a.conn
                .client()
                .delete_image(&a.name)
                .map_err(VerbError::from)?;
            println!("{} deleted", a.name);
            Ok(())
        }
    }
}
