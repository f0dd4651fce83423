//! What every comparison shares: the processes a run starts and stops, HTTP to the agent, and
//! timing a contender and tabling its series.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub(super) struct Sleepers(pub(super) Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

pub(super) struct Agent(pub(super) Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM for a clean detach; then make sure.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn count_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

pub(super) fn grow_to(target: usize, sleepers: &mut Sleepers) -> anyhow::Result<()> {
    while count_processes() < target {
        let child = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning a sleeper")?;
        sleepers.0.push(child);
    }
    Ok(())
}

/// The body of one GET (the whole response, headers included, is fine for number scraping).
pub(super) fn http_text(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

/// A numeric field of the agent's `/v1/stats` JSON.
pub(super) fn agent_stat(addr: &str, key: &str) -> anyhow::Result<u64> {
    let text = http_text(addr, "/v1/stats")?;
    let at = text
        .find(&format!("\"{key}\":"))
        .with_context(|| format!("no {key} in /v1/stats: {text}"))?;
    let rest = &text[at + key.len() + 3..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

/// The agent's FUSE requests so far, by operation (`fuse_requests_by_op` in /v1/stats).
pub(super) fn agent_requests_by_op(
    addr: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let text = http_text(addr, "/v1/stats")?;
    let key = "\"fuse_requests_by_op\":{";
    let at = text
        .find(key)
        .with_context(|| format!("no fuse_requests_by_op in /v1/stats: {text}"))?;
    let body = &text[at + key.len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    Ok(body
        .split(',')
        .filter_map(|pair| {
            let (name, n) = pair.split_once(':')?;
            Some((
                name.trim().trim_matches('"').to_owned(),
                n.trim().parse().ok()?,
            ))
        })
        .collect())
}

/// GETs `path` over a fresh HTTP/1.1 connection and returns the answer's size in bytes. The
/// body is counted as it arrives and thrown away, as `curl -o /dev/null` does: at 100,000
/// processes a listing is 46 MB, and keeping it would time this client growing a buffer
/// (~30 ms) as much as the agent answering.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 1 << 16];
    let mut head = Vec::new();
    let mut total = 0;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < 12 {
            head.extend_from_slice(&buf[..n.min(12 - head.len())]);
        }
        total += n;
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("GET {path}: {}", String::from_utf8_lossy(&head));
    }
    Ok(total)
}

pub(super) fn time<F: FnMut() -> anyhow::Result<()>>(mut f: F) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

pub(super) struct Series {
    pub(super) name: String,
    pub(super) samples: Vec<Duration>,
}

impl Series {
    pub(super) fn median(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[s.len() / 2]
    }

    fn spread(&self) -> (Duration, Duration) {
        let mut s = self.samples.clone();
        s.sort();
        (s[s.len() / 10], s[s.len() * 9 / 10])
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn table(title: &str, series: &[Series], out: &mut String) {
    let base = series[0].median();
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| contender | median (ms) | p10–p90 (ms) | time relative to the first row |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for s in series {
        let (lo, hi) = s.spread();
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3}–{:.3} | {:.2}× |",
            s.name,
            ms(s.median()),
            ms(lo),
            ms(hi),
            s.median().as_secs_f64() / base.as_secs_f64()
        );
    }
}

/// Waits until `addr` answers `path`, for at most 30 s after `since`.
pub(super) fn wait_answering(addr: &str, path: &str, since: Instant) -> anyhow::Result<()> {
    while http_get(addr, path).is_err() {
        if since.elapsed() > Duration::from_secs(30) {
            bail!("{addr} did not answer {path} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The unit of /proc/PID/stat's times: fixed at 100 by the Linux ABI, whatever CONFIG_HZ is.
pub(super) const USER_HZ: f64 = 100.0;

/// utime + stime of a process, in clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Waits (up to 5 s) until `pid` uses no more than a tick of CPU in 200 ms.
pub(super) fn settle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = cpu_ticks(pid);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_ticks(pid);
        if now.saturating_sub(last) <= 1 {
            return;
        }
        last = now;
    }
}
