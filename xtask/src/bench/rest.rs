//! What an agent costs a host where nothing happens and nobody asks: its CPU time and how often
//! its threads run, over one quiet window, next to process-exporter's in the same window
//! (which does nothing between scrapes but its Go runtime's housekeeping).

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    common::{Agent, http_get, settle, wait_answering},
    scrape::process_exporter,
};

/// CPU time (ns) and times scheduled in, summed over the threads of `pid` now
/// (`/proc/PID/task/TID/schedstat`: run time, wait time, timeslices).
fn run_and_slices(pid: u32) -> anyhow::Result<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading the threads of {pid}"))?;
    let read: Vec<(u64, u64)> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| {
            let f: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*f.first()?, *f.get(2)?))
        })
        .collect();
    // A full run once reported an agent that never ran for 30 s; a reading of nothing must
    // not pass for one.
    if read.is_empty() {
        bail!("no schedstat read for any thread of {pid}");
    }
    Ok(read
        .into_iter()
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y)))
}

/// The agent as `cargo xtask run` starts it (HTTP and a FUSE mount, default settings) and
/// process-exporter, once they have settled: left alone for `window`, then scraped twice in
/// another.
pub(super) fn at_rest(
    bin: &Path,
    groups: &Path,
    window: Duration,
    report: &mut String,
) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let work = std::env::temp_dir().join(format!("bpfproc-bench-rest-{}", std::process::id()));
    std::fs::create_dir_all(work.join("view"))?;
    let agent = Agent(
        Command::new(bin)
            .args(["agent", "--listen", &addr, "--socket"])
            .arg(work.join("s.sock"))
            .arg("--mount")
            .arg(work.join("view"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the agent")?,
    );
    let pe_addr = "127.0.0.1:19257";
    let pe = process_exporter(groups, pe_addr)?;
    wait_answering(&addr, "/healthz", Instant::now())?;
    // Past the start-up work, and past the agent's periodic pass, which runs for 10 s after
    // the last question for numbers (the health check asks none).
    settle(agent.0.id());
    settle(pe.0.id());
    let (ours, theirs) = (agent.0.id(), pe.0.id());
    let secs = window.as_secs_f64();
    let mut rows = String::new();
    // Left alone, then scraped as Prometheus does by default: both in the same window.
    for scrape_every in [None, Some(window / 2)] {
        let (o0, p0) = (run_and_slices(ours)?, run_and_slices(theirs)?);
        match scrape_every {
            None => std::thread::sleep(window),
            Some(every) => {
                for _ in 0..2 {
                    http_get(&addr, "/metrics")?;
                    http_get(pe_addr, "/metrics")?;
                    std::thread::sleep(every);
                }
            }
        }
        let (o1, p1) = (run_and_slices(ours)?, run_and_slices(theirs)?);
        let how = match scrape_every {
            None => "nothing asked".to_string(),
            Some(every) => format!("`/metrics` every {} s", every.as_secs()),
        };
        for (name, a, b) in [
            ("bpfproc agent", o0, o1),
            ("process-exporter 0.7.10", p0, p1),
        ] {
            let cpu = b.0.saturating_sub(a.0) as f64 / 1e9 / secs * 100.0;
            let runs = b.1.saturating_sub(a.1) as f64 / secs;
            println!("at rest, {how}: {name}: {cpu:.3} % of a CPU, {runs:.1} runs/s");
            let _ = writeln!(rows, "| {name}, {how} | {cpu:.3} % | {runs:.1} |");
        }
    }
    drop(agent);
    drop(pe);
    let _ = std::fs::remove_dir_all(&work);
    let _ = writeln!(
        report,
        "\n### At rest: two windows of {secs:.0} s\n\n| | CPU (of one core) | times its threads ran, per second |\n|---|---:|---:|\n{rows}\nThe agent as `cargo xtask run` starts it (HTTP and a FUSE mount, default settings) and process-exporter with the scrape comparison's settings, run together once both settled: first left alone, then each scraped twice, half a window apart (Prometheus' default interval is 15 s). From `/proc/PID/task/*/schedstat` (run time and timeslices, all threads). The host's own processes go on meanwhile, and the agent reads every record they cause; process-exporter does nothing between scrapes."
    );
    Ok(())
}
