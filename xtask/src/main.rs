//! Developer commands: `cargo xtask setup | build | run | test | lint | bench`.
//!
//! xtask builds on the image's stable toolchain, so it runs before anything is installed; it
//! installs the pinned nightly, bpf-linker and system packages, then drives cargo with that
//! nightly (aya 0.16 needs rustc >= 1.98).

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Where `cargo xtask run` mounts the proc view by default.
const DEFAULT_MOUNT: &str = "/run/bpfproc/proc";

/// The toolchain that builds everything but xtask. Keep in sync with agent/build.rs.
pub const TOOLCHAIN: &str = "nightly-2026-10-30";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain, bpf-linker and system packages (idempotent, fast when done).
    Setup,
    /// Build the agent (release) with its BPF object.
    Build,
    /// Build and run the agent with safe defaults; extra arguments go to `bpfproc agent`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole suite: formatting, clippy, unit and integration tests (root for the latter).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fmt and clippy only.
    Lint,
    /// Side-by-side benchmarks; writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            build_release()
        }
        Cmd::Run { args } => {
            setup::run()?;
            build_release()?;
            let bin = root().join("target/release/bpfproc");
            let mut cmd = Command::new(&bin);
            cmd.arg("agent");
            // A proc view at a well-known place unless the caller chose mounts themselves.
            if !args.iter().any(|a| a.starts_with("--mount")) {
                cmd.args(["--mount", DEFAULT_MOUNT]);
            }
            let status = cmd.args(&args).status()?;
            if !status.success() {
                bail!("bpfproc agent exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { no_lint, args } => {
            setup::run()?;
            if !no_lint {
                lint()?;
            }
            if !is_root() {
                eprintln!("note: not root; the integration tests will skip (CI runs them as root)");
            }
            cargo(&["test", "--workspace", "--exclude", "bpfproc-ebpf"], &args)
        }
        Cmd::Lint => {
            setup::run()?;
            lint()
        }
        Cmd::Bench(args) => {
            setup::run()?;
            build_release()?;
            bench::run(args)
        }
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// `cargo +TOOLCHAIN <args> [-- extra]` in the workspace root.
pub fn cargo(args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{TOOLCHAIN}"))
        .args(args)
        .current_dir(root());
    if !extra.is_empty() {
        cmd.args(extra);
    }
    // The stable toolchain that runs xtask must not leak into the nightly's build scripts.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN");
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build_release() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "bpfproc"], &[])
}

fn lint() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "bpfproc-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}
