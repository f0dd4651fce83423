//! The Prometheus scrape vs process-exporter's walk of /proc, with the same groups.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::common::{Agent, Series, count_processes, http_get, ms, table, time, wait_answering};

/// Every process with a command line, grouped by name: process-exporter's usual set-up.
pub(super) const GROUPS_YAML: &str =
    "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline: ['.+']\n";

/// Debian's process-exporter with `groups`, serving on `addr`, once it answers. Its smaps and
/// per-thread families are off: bpfproc has neither, and both would only slow it down.
pub(super) fn process_exporter(groups: &std::path::Path, addr: &str) -> anyhow::Result<Agent> {
    let bin = "/usr/bin/prometheus-process-exporter";
    if !std::path::Path::new(bin).exists() {
        bail!("{bin} missing: cargo xtask setup installs prometheus-process-exporter");
    }
    let pe = Agent(
        Command::new(bin)
            .arg(format!("-config.path={}", groups.display()))
            .arg(format!("-web.listen-address={addr}"))
            .args(["-gather-smaps=false", "-threads=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting process-exporter")?,
    );
    wait_answering(addr, "/metrics", Instant::now())?;
    Ok(pe)
}

/// `/metrics` of the agent next to Debian's process-exporter with the same groups.
pub(super) fn scrape_vs_process_exporter(
    addr: &str,
    groups: &std::path::Path,
    rounds: usize,
    report: &mut String,
) -> anyhow::Result<f64> {
    let pe_addr = "127.0.0.1:19256";
    let _pe = process_exporter(groups, pe_addr)?;
    let n = count_processes();
    let mut ours = Series {
        name: "`GET /metrics` (bpfproc)".into(),
        samples: vec![],
    };
    let mut theirs = Series {
        name: "`GET /metrics` (process-exporter 0.7.10, same groups)".into(),
        samples: vec![],
    };
    http_get(addr, "/metrics")?;
    let (mut our_bytes, mut their_bytes) = (0, 0);
    for _ in 0..rounds {
        ours.samples.push(time(|| {
            our_bytes = http_get(addr, "/metrics")?;
            Ok(())
        })?);
        theirs.samples.push(time(|| {
            their_bytes = http_get(pe_addr, "/metrics")?;
            Ok(())
        })?);
    }
    let ratio = theirs.median().as_secs_f64() / ours.median().as_secs_f64();
    println!(
        "{n} processes: /metrics {:.3} ms vs process-exporter {:.3} ms = {ratio:.1}x faster",
        ms(ours.median()),
        ms(theirs.median())
    );
    table(
        &format!(
            "Prometheus scrape at {n} processes ({rounds} rounds, alternated) — bpfproc is {ratio:.1}× faster than process-exporter"
        ),
        &[ours, theirs],
        report,
    );
    let _ = writeln!(
        report,
        "\nBoth group by comm every process with a command line (the same YAML config). Response sizes: bpfproc {our_bytes} bytes, process-exporter {their_bytes} bytes. Each bpfproc scrape includes a fresh task-iterator pass (its numbers are never older than `--max-staleness-ms`), the same pass `GET /v1/processes` pays above; at this size that pass is most of the scrape."
    );
    Ok(ratio)
}
