//! Side-by-side benchmarks. Each comparison alternates the contenders in one run and reports
//! medians, spread and the ratio; results go to BENCHMARKS.md with the machine's facts.

mod common;
mod floors;
mod fuse;
mod listing;
mod rest;
mod scale;
mod scrape;
mod tracing;

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use common::{Agent, Sleepers, grow_to, wait_answering};
use floors::{Floor, UringSwitch, round_trip_floor};
use fuse::{CACHE_MS, View, fuse_verdicts, fuse_vs_proc};
use scrape::{GROUPS_YAML, scrape_vs_process_exporter};
use tracing::tracing_cost;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short smoke run (fewer processes and rounds).
    #[arg(long)]
    quick: bool,
    /// Target process counts on the host.
    #[arg(long, value_delimiter = ',', default_value = "3000,10000")]
    processes: Vec<usize>,
    /// Rounds per contender.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Where to write the report (default: BENCHMARKS.md in the workspace).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// From this many processes on, a count gets the scale run (scale.rs) instead of every
    /// view's comparison (lower it to try the scale run on a small host).
    #[arg(long, default_value_t = scale::SCALE_FROM)]
    scale_from: usize,
}

impl BenchArgs {
    /// The `--quick` run the test suite makes to prove the benchmark still works end to end;
    /// its report goes to `out`, and nothing about its timings is asserted.
    pub fn smoke(out: std::path::PathBuf) -> Self {
        Self {
            quick: true,
            processes: Vec::new(),
            rounds: 0,
            out: Some(out),
            scale_from: scale::SCALE_FROM,
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the benchmarks load BPF programs: run as root");
    }
    let (counts, rounds) = if args.quick {
        (vec![500], 5)
    } else {
        (args.processes.clone(), args.rounds)
    };
    // A free port: a fixed one could be answered by some other agent on the machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let bin = crate::root().join("target/release/bpfproc");
    let mut report = String::new();
    let mut sleepers = Sleepers(Vec::new());
    let mut verdicts = Vec::new();
    let uring = UringSwitch::on();
    if let Err(e) = &uring {
        println!("no FUSE-over-io_uring floor: {e:#}");
    }
    let uring = uring.ok();
    // The same groups for both exporters: process-exporter's config, which the agent reads too.
    let groups =
        std::env::temp_dir().join(format!("bpfproc-bench-groups-{}.yaml", std::process::id()));
    std::fs::write(&groups, GROUPS_YAML)?;
    // First, while the host has only its own processes: after the scale run's teardown, a
    // full run once read an agent that never ran for 30 s (reason not found).
    let mut rest = String::new();
    rest::at_rest(
        &bin,
        &groups,
        Duration::from_secs(if args.quick { 4 } else { 30 }),
        &mut rest,
    )?;
    for &target in &counts {
        if target >= args.scale_from {
            scale::at_scale(&bin, target, &groups, &mut report, &mut verdicts)?;
            continue;
        }
        grow_to(target, &mut sleepers)?;
        let start = Instant::now();
        let work = std::env::temp_dir().join(format!("bpfproc-bench-{}", std::process::id()));
        let view = work.join("view");
        std::fs::create_dir_all(&view)?;
        let agent = Agent(
            Command::new(&bin)
                .args(["agent", "--listen", &addr, "--metrics-groups-config"])
                .arg(&groups)
                .arg("--socket")
                .arg(work.join("bpfproc.sock"))
                .arg("--mount")
                .arg(&view)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the agent")?,
        );
        wait_answering(&addr, "/healthz", start)?;
        let startup = start.elapsed();
        let (n, ps_median) =
            listing::listing_vs_ps(&addr, &agent, startup, rounds, &mut report, &mut verdicts)?;
        // Processes that stay put for the whole comparison: our sleepers, or, if the host had
        // enough processes without them, its own sleepers (which may still end meanwhile).
        let mut pids: Vec<u32> = sleepers.0.iter().map(Child::id).take(500).collect();
        if pids.is_empty() {
            pids = std::fs::read_dir("/proc")?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
                .take(500)
                .collect();
        }
        let mount = |name: &str, options: &str| -> anyhow::Result<std::path::PathBuf> {
            let dir = work.join(name);
            std::fs::create_dir_all(&dir)?;
            let mounted = Command::new(&bin)
                .args(["mount", "-o", options])
                .arg(&dir)
                .arg("--socket")
                .arg(work.join("bpfproc.sock"))
                .status()?;
            if !mounted.success() {
                bail!("mounting a view with -o {options} failed");
            }
            Ok(dir)
        };
        let passthrough = mount("passthrough", "passthrough")?;
        let uring_view = uring
            .as_ref()
            .map(|_| mount("uring", "uring"))
            .transpose()?;
        let uring_backed = uring
            .as_ref()
            .map(|_| mount("uring-passthrough", "uring,passthrough"))
            .transpose()?;
        let cached = mount("cached", &format!("cache={CACHE_MS}"))?;
        let cache_label = format!("a `cache={CACHE_MS}` view (bounded staleness)");
        let cache_name = format!("cache={CACHE_MS}");
        let floor_dev = Floor::start(&work.join("floor"), false)?;
        let floor_uring = uring
            .as_ref()
            .map(|_| Floor::start(&work.join("floor-uring"), true))
            .transpose()?;
        let mut views = vec![
            View {
                name: "default",
                label: "the default mount (`bpfproc mount DIR`: never-stale)",
                dir: &view,
                agent: true,
            },
            View {
                name: "passthrough",
                label: "a never-stale `passthrough` view",
                dir: &passthrough,
                agent: true,
            },
            View {
                name: "uring",
                label: "a never-stale `uring` view (io_uring queues)",
                dir: uring_view.as_deref().unwrap_or(&view),
                agent: true,
            },
            View {
                name: "uring+passthrough",
                label: "a never-stale `uring,passthrough` view",
                dir: uring_backed.as_deref().unwrap_or(&view),
                agent: true,
            },
            View {
                name: &cache_name,
                label: &cache_label,
                dir: &cached,
                agent: true,
            },
            View {
                name: "floor",
                label: "the FUSE floor over /dev/fuse (forwards to /proc, no work of its own)",
                dir: &floor_dev.dir,
                agent: false,
            },
        ];
        if uring_view.is_none() {
            views.retain(|v| !v.name.starts_with("uring"));
        }
        if let Some(f) = &floor_uring {
            views.push(View {
                name: "floor io_uring",
                label: "the FUSE floor over io_uring (per-CPU queues)",
                dir: &f.dir,
                agent: false,
            });
        }
        let fuse = fuse_vs_proc(&addr, agent.0.id(), &views, &pids, rounds, &mut report)?;
        for floor in [Some(floor_dev), floor_uring].into_iter().flatten() {
            let _ = writeln!(report, "\n{}", floor.stop());
        }
        let (one_cpu_us, _) = round_trip_floor(rounds, &mut report)?;
        fuse_verdicts(&fuse, n, one_cpu_us, ps_median, &mut verdicts);
        let scrape = scrape_vs_process_exporter(&addr, &groups, rounds, &mut report)?;
        verdicts.push(Verdict {
            target: format!(
                "Prometheus scrape at {n} processes: ≥ 60× faster than process-exporter"
            ),
            measured: format!("{scrape:.1}×"),
            holds: scrape >= 60.0,
        });
        drop(agent);
        let _ = std::fs::remove_dir_all(&work);
    }
    drop(sleepers);
    report.push_str(&rest);
    verdicts.push(tracing_cost(
        &bin,
        if args.quick { (1000, 2) } else { (5000, 5) },
        &mut report,
    )?);
    let _ = std::fs::remove_file(&groups);
    write_report(&args, &(verdicts_table(&verdicts) + &report))
}

/// One of the targets (issues #8 and #20) as this run measured it.
struct Verdict {
    target: String,
    measured: String,
    holds: bool,
}

fn verdicts_table(verdicts: &[Verdict]) -> String {
    let mut out = String::from(
        "\n## Targets (issues #8 and #20) in this run\n\nThe default configuration first; a row marked (option) measured the option it names.\n\n| target | measured | holds |\n|---|---|---|\n",
    );
    for v in verdicts {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            if v.holds { "yes" } else { "**no**" }
        );
    }
    out
}

fn write_report(args: &BenchArgs, body: &str) -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench{}`. Kernel {}, {cores} cores. Each table alternates its contenders round by round in one run; ratios are of medians.",
        if args.quick { " --quick" } else { "" },
        kernel.trim()
    );
    let _ = writeln!(
        out,
        "\nWhich of the targets hold, why the others do not, and what was changed to get here: [docs/performance.md](docs/performance.md)."
    );
    out.push_str(body);
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| crate::root().join("BENCHMARKS.md"));
    std::fs::write(&path, out)?;
    println!("wrote {}", path.display());
    Ok(())
}
