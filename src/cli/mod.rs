//! The `tierfs` command line.

pub mod mount;
pub mod tier;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use mount::MountArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tierfs",
    version,
    about = "Checkpoints in an object store, as files, tiered over NVMe and RAM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount STORE (a directory, file://, s3://bucket/prefix, gs://, az://) at MOUNTPOINT.
    Mount(MountArgs),
    /// Show the tiers, the mover and the uploads of a mount (of every mount when none is named).
    Status {
        mountpoint: Option<PathBuf>,
        /// Print the control API's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Keep a file, or everything below a directory, in a tier.
    Pin {
        path: PathBuf,
        /// ram or nvme
        #[arg(long)]
        tier: String,
        /// Wait, with a progress bar, until the bytes are in place
        #[arg(long)]
        wait: bool,
    },
    /// Remove the pin set on a file or directory.
    Unpin { path: PathBuf },
    /// Fetch a file, or everything below a directory, into a tier once.
    Prefetch {
        path: PathBuf,
        /// ram or nvme
        #[arg(long)]
        tier: String,
        /// Wait, with a progress bar, until the fetch is done
        #[arg(long)]
        wait: bool,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(args) => mount::run(&args),
        Command::Status { mountpoint, json } => tier::status(mountpoint.as_deref(), json),
        Command::Pin { path, tier, wait } => tier::pin(&path, &tier, wait),
        Command::Unpin { path } => tier::unpin(&path),
        Command::Prefetch { path, tier, wait } => tier::prefetch(&path, &tier, wait),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tierfs: {message}");
            1
        }
    }
}
