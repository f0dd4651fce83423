//! Developer commands: `cargo xtask setup | build | run | test | lint | bench`.
//!
//! xtask builds on the image's stable toolchain, so it runs before anything is installed; it
//! installs the pinned nightly, bpf-linker and system packages, then drives cargo with that
//! nightly (aya 0.16 needs rustc >= 1.98).

mod bench;
mod floor;
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
    /// The benchmarks' FUSE floor: /proc served over FUSE with no work of its own.
    #[command(hide = true)]
    FuseFloor(floor::FloorArgs),
    /// The long forms of the stress tests (agent/tests/stress.rs, hostile.rs): 100,000 spawns,
    /// 60 s of wrk, 500 pid reuses, … on a release build. Prints a FIGURES line per test.
    Stress {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the parsers of hostile input with cargo-fuzz (installed first): ctl, note,
    /// mount_options, each for --seconds.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
}

const FUZZ_TARGETS: [&str; 3] = ["ctl", "note", "mount_options"];

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
            // The tests that need root are `#[ignore = "needs root: …"]`. As root (CI) they run
            // too: `--include-ignored` for the test binaries, after the caller's `--` if they gave
            // one (unless they chose `--ignored` or `--include-ignored` themselves).
            let (root, whole_suite) = (is_root(), args.is_empty());
            let mut test_args = args;
            if root {
                let harness = test_args.iter().position(|a| a == "--");
                let chosen = harness.is_some_and(|i| {
                    test_args[i + 1..]
                        .iter()
                        .any(|a| a == "--ignored" || a == "--include-ignored")
                });
                if !chosen {
                    if harness.is_none() {
                        test_args.push("--".into());
                    }
                    test_args.push("--include-ignored".into());
                }
            } else {
                eprintln!(
                    "note: not root: the tests that need root (BPF, FUSE mounts, ptrace) are left \
                     out and reported as ignored (CI runs them as root)"
                );
            }
            cargo(
                &["test", "--workspace", "--exclude", "bpfproc-ebpf"],
                &test_args,
            )?;
            if !root {
                eprintln!(
                    "note: not root: the tests reported as ignored above need root and did not \
                     run; run `cargo xtask test` as root for the whole suite"
                );
            }
            // The whole suite (no filter) also proves `cargo xtask bench` still runs: its
            // --quick form, reported to a scratch file so BENCHMARKS.md keeps the full run.
            if root && whole_suite {
                build_release()?;
                let out = std::env::temp_dir().join("bpfproc-bench-smoke.md");
                bench::run(bench::BenchArgs::smoke(out))?;
            }
            Ok(())
        }
        Cmd::Lint => {
            setup::run()?;
            lint()
        }
        Cmd::FuseFloor(args) => floor::run(args),
        Cmd::Bench(args) => {
            setup::run()?;
            build_release()?;
            bench::run(args)
        }
        Cmd::Stress { args } => {
            setup::run()?;
            // The stress tests need root (`#[ignore = "needs root: …"]`): run them all the same.
            let mut extra = vec!["--".to_string(), "--nocapture".into()];
            if !args
                .iter()
                .any(|a| a == "--ignored" || a == "--include-ignored")
            {
                extra.push("--include-ignored".into());
            }
            if !is_root() {
                eprintln!("note: not root: the stress tests need root and will fail");
            }
            extra.extend(args);
            cargo_env(
                &[
                    "test",
                    "--release",
                    "-p",
                    "bpfproc",
                    "--test",
                    "stress",
                    "--test",
                    "hostile",
                ],
                &extra,
                &[("BPFPROC_STRESS", "1")],
            )
        }
        Cmd::Fuzz { seconds, targets } => {
            setup::run()?;
            setup::cargo_fuzz()?;
            fuzz(seconds, &targets)
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
    cargo_env(args, extra, &[])
}

/// `cargo`, with `env` set for it.
fn cargo_env(args: &[&str], extra: &[String], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.envs(env.iter().copied());
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
    )?;
    // The BPF programs build for their own target (agent/build.rs, with aya-build): lint
    // them there.
    cargo(
        &[
            "clippy",
            "-p",
            "bpfproc-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // Doc comments are read by people: a broken intra-doc link is a wrong sentence.
    cargo_env(
        &[
            "doc",
            "--workspace",
            "--exclude",
            "bpfproc-ebpf",
            "--no-deps",
        ],
        &[],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}

/// Runs each fuzz target for `seconds` and reports libFuzzer's execution count; a crash stops
/// with the reproducer's path (fuzz/artifacts/TARGET/), which the unit tests then replay.
fn fuzz(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        FUZZ_TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    for t in targets {
        let out = Command::new("cargo")
            .arg(format!("+{TOOLCHAIN}"))
            .args([
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(root().join("fuzz"))
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("no summary");
        println!("fuzz {t}: {done}");
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            bail!("fuzz target {t} failed (see fuzz/artifacts/{t}/)");
        }
    }
    Ok(())
}
