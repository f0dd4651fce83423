//! The benchmarks at scale (issue #21): a host with tens of thousands of processes, where the
//! full comparison of every view would take hours. What a large host's users meet: how long
//! the agent takes to list every process, what a listing and a scrape asked once a second
//! cost, its memory per process, its pass over every task, `ps` on a `cache=` view, and that
//! nothing is lost while 2,000 short-lived processes come and go.

use std::{
    io::BufRead as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Verdict,
    common::{Agent, Series, agent_stat, count_processes, http_get, http_text, ms, table, time},
    fuse::{CACHE_MS, in_namespace},
};

/// From this many processes on, a run is a scale run (unless `--scale-from` says otherwise).
pub(super) const SCALE_FROM: usize = 50_000;

/// Raises `kernel.pid_max` and `kernel.threads-max` to what `target` processes need, for the
/// run; puts them back when dropped.
struct Sysctls(Vec<(&'static str, String)>);

impl Sysctls {
    fn raise(target: usize) -> anyhow::Result<Self> {
        let mut saved = Vec::new();
        // Room for the target and everything else the host runs, with pids to spare.
        let want = (target as u64 * 2).max(65_536);
        for path in ["/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"] {
            let was = std::fs::read_to_string(path)?;
            if was.trim().parse::<u64>().unwrap_or(0) < want {
                std::fs::write(path, want.to_string())
                    .with_context(|| format!("raising {path}"))?;
                saved.push((path, was));
            }
        }
        Ok(Self(saved))
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        for (path, was) in &self.0 {
            let _ = std::fs::write(path, was.trim());
        }
    }
}

/// `n` tiny processes (xtask/c/tiny.c), one process group, killed when dropped.
struct Tiny(Child);

impl Tiny {
    fn spawn(n: usize) -> anyhow::Result<Self> {
        let bin = crate::root().join("target/bench-tiny");
        let src = crate::root().join("xtask/c/tiny.c");
        if !bin.exists() {
            let built = Command::new("cc")
                .args(["-static", "-Os", "-o"])
                .arg(&bin)
                .arg(&src)
                .status()
                .context("cc")?;
            if !built.success() {
                bail!("building {}", src.display());
            }
        }
        let mut child = Command::new(&bin)
            .arg(n.to_string())
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("tiny's stdout")?)
            .read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("tiny did not start its {n} processes: {line:?}");
        }
        Ok(Self(child))
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        let _ = kill_group(self.0.id());
        let _ = self.0.wait();
    }
}

fn kill_group(pgid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The scale run at `target` processes on the host.
pub(super) fn at_scale(
    bin: &Path,
    target: usize,
    groups: &Path,
    report: &mut String,
    verdicts: &mut Vec<Verdict>,
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let _sysctls = Sysctls::raise(target)?;
    let spawned = Instant::now();
    let _tiny = Tiny::spawn(target.saturating_sub(count_processes()).max(1))?;
    let spawn_time = spawned.elapsed();
    let n = count_processes();
    println!("{n} processes ({spawn_time:.1?} to spawn the tiny ones)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let work: PathBuf =
        std::env::temp_dir().join(format!("bpfproc-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let start = Instant::now();
    let agent = Agent(
        Command::new(bin)
            .args(["agent", "--listen", &addr, "--metrics-groups-config"])
            .arg(groups)
            .arg("--socket")
            .arg(work.join("bpfproc.sock"))
            .args(["--keep-views-secs", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the agent")?,
    );
    let deadline = |what: &str| -> anyhow::Result<()> {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{what} took over 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
        Ok(())
    };
    while http_get(&addr, "/healthz").is_err() {
        deadline("the agent's start")?;
    }
    let healthy = start.elapsed();
    // Every process listed: the table holds as many as /proc does now (give or take the few
    // that come and go meanwhile).
    let want = count_processes().saturating_sub(50) as u64;
    while agent_stat(&addr, "live_processes")? < want {
        deadline("listing every process")?;
    }
    let full = start.elapsed();

    // A listing and a scrape each asked once a second, as a dashboard or Prometheus would,
    // from the moment every process is listed: the first renders every process's JSON, and
    // the agent's start-up work (argv and exe from /proc, the process map's sweep) may still
    // be running for the second; the median is of the ones after.
    let rounds = 10;
    let mut listing = Series {
        name: "`GET /v1/processes`, once a second".into(),
        samples: vec![],
    };
    let mut scrape = Series {
        name: "`GET /metrics`, once a second".into(),
        samples: vec![],
    };
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_secs(1));
        listing
            .samples
            .push(time(|| http_get(&addr, "/v1/processes").map(drop))?);
        std::thread::sleep(Duration::from_secs(1));
        scrape
            .samples
            .push(time(|| http_get(&addr, "/metrics").map(drop))?);
    }
    let pass_us = agent_stat(&addr, "last_iterator_us")?;
    let rss = vm_rss_kib(agent.0.id()) * 1024;

    // 2,000 short-lived processes, each seen to its exit.
    let short = work.join("bpfscaleshort");
    std::fs::copy("/bin/true", &short)?;
    for _ in 0..2000 {
        Command::new(&short).status()?;
    }
    let seen = (0..200)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            http_text(&addr, "/v1/exited")
                .map(|t| t.matches("\"comm\":\"bpfscaleshort\"").count())
                .unwrap_or(0)
        })
        .find(|&c| c >= 2000)
        .unwrap_or_else(|| {
            http_text(&addr, "/v1/exited")
                .map(|t| t.matches("\"comm\":\"bpfscaleshort\"").count())
                .unwrap_or(0)
        });
    let lost = [
        "map_full",
        "ringbuf_full",
        "events_undecodable",
        "read_error",
    ]
    .iter()
    .map(|k| agent_stat(&addr, k).unwrap_or(0))
    .sum::<u64>();

    // `ps` on /proc and on a cache= view, alternated.
    let view = work.join("cached");
    std::fs::create_dir_all(&view)?;
    let mounted = Command::new(bin)
        .args(["mount", "-o", &format!("cache={CACHE_MS}")])
        .arg(&view)
        .arg("--socket")
        .arg(work.join("bpfproc.sock"))
        .status()?;
    if !mounted.success() {
        bail!("mounting a cache view failed");
    }
    const PS: &str = "ps -e -o pid,ppid,comm,stat,rss";
    let mut ps_proc = Series {
        name: format!("`{PS}` on /proc"),
        samples: vec![],
    };
    let mut ps_cache = Series {
        name: format!("`{PS}` on a `cache={CACHE_MS}` view"),
        samples: vec![],
    };
    // The first `ps` fills the view's caches, under a time limit: at 100,000 processes each
    // lookup on a cache view can wait for a pass over every task (issue #21).
    const LIMIT_S: u64 = 120;
    let first = Instant::now();
    let finished = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /proc && timeout {LIMIT_S} {PS} > /dev/null",
            view.display()
        ))
        .status()?
        .success();
    let first = first.elapsed();
    if finished {
        for _ in 0..3 {
            ps_proc.samples.push(time(|| in_namespace(None, PS))?);
            ps_cache
                .samples
                .push(time(|| in_namespace(Some(&view), PS))?);
        }
    }
    let ps_note = if finished {
        format!(
            "{:.2}× /proc (the first, filling the caches: {:.1} s)",
            ps_cache.median().as_secs_f64() / ps_proc.median().as_secs_f64(),
            first.as_secs_f64()
        )
    } else {
        format!("the first did not finish in {LIMIT_S} s")
    };
    drop(agent);
    let _ = std::fs::remove_dir_all(&work);

    let per_process = rss as f64 / n as f64;
    let _ = writeln!(
        report,
        "\n### At {n} processes (scale run: tiny static processes, `pid_max` raised for the run)\n\n\
         | measure | value |\n|---|---:|\n\
         | agent start to healthy (load, attach, backfill) | {:.0} ms |\n\
         | agent start to every process listed | {:.0} ms |\n\
         | one pass of the task iterator | {:.1} ms |\n\
         | agent RSS | {:.1} MB ({per_process:.0} bytes per process) |\n\
         | losses (map_full, ringbuf_full, undecodable, read errors) | {lost} |\n\
         | short-lived processes in `/v1/exited` | {seen} of 2000 |\n\
         | `ps -e` on a `cache={CACHE_MS}` view | {ps_note} |",
        ms(healthy),
        ms(full),
        pass_us as f64 / 1e3,
        rss as f64 / 1e6,
    );
    let (listing_ms, scrape_ms) = (listing.median(), scrape.median());
    table(
        &format!("Asked once a second at {n} processes"),
        &[listing, scrape],
        report,
    );
    if finished {
        table(
            &format!("`ps -e` at {n} processes"),
            &[ps_proc, ps_cache],
            report,
        );
    }
    verdicts.extend([
        Verdict {
            target: format!("agent start to every process listed at {n} processes ≤ 2 s"),
            measured: format!(
                "{:.2} s (healthy after {:.2} s)",
                full.as_secs_f64(),
                healthy.as_secs_f64()
            ),
            holds: full <= Duration::from_secs(2),
        },
        Verdict {
            target: format!("`GET /v1/processes` once a second at {n} processes ≤ 50 ms"),
            measured: format!(
                "{:.1} ms (pass: {:.1} ms)",
                ms(listing_ms),
                pass_us as f64 / 1e3
            ),
            holds: listing_ms <= Duration::from_millis(50),
        },
        Verdict {
            target: format!("`GET /metrics` once a second at {n} processes ≤ 100 ms"),
            measured: format!("{:.1} ms", ms(scrape_ms)),
            holds: scrape_ms <= Duration::from_millis(100),
        },
        Verdict {
            target: format!("agent RSS at {n} processes ≤ 200 MB (≤ 2 KB per process)"),
            measured: format!(
                "{:.1} MB, {per_process:.0} bytes per process",
                rss as f64 / 1e6
            ),
            holds: rss <= 200_000_000,
        },
        Verdict {
            target: format!(
                "nothing lost at {n} processes: 0 losses, 2,000 short-lived processes all seen"
            ),
            measured: format!("{lost} lost; {seen} of 2000 in /v1/exited"),
            holds: lost == 0 && seen >= 2000,
        },
    ]);
    Ok(())
}
