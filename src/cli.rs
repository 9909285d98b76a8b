//! The `tierfs` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// A local directory or file:// URL, or s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix]
    pub store: String,
    /// An existing empty directory
    pub mountpoint: PathBuf,
    /// Mount options, k=v separated by commas (see README); may repeat
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Stay in the foreground instead of returning once the mount is ready
    #[arg(short, long)]
    pub foreground: bool,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(args) => crate::mount::run(&args),
        Command::Status { mountpoint, json } => {
            crate::cli_tier::status(mountpoint.as_deref(), json)
        }
        Command::Pin { path, tier, wait } => crate::cli_tier::pin(&path, &tier, wait),
        Command::Unpin { path } => crate::cli_tier::unpin(&path),
        Command::Prefetch { path, tier, wait } => crate::cli_tier::prefetch(&path, &tier, wait),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tierfs: {message}");
            1
        }
    }
}
