//! What exec/exit tracing costs the traced: a spawn loop with the agent off and on.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    Verdict,
    common::{
        Agent, Series, USER_HZ, agent_stat, cpu_ticks, http_get, settle, table, time,
        wait_answering,
    },
};

/// What watching costs the watched: a spawn loop of /bin/true (Rust's Command uses
/// posix_spawn) with the agent off and on, alternated, and whether every spawn was seen.
pub(super) fn tracing_cost(
    bin: &std::path::Path,
    (spawns, rounds): (usize, usize),
    report: &mut String,
) -> anyhow::Result<Verdict> {
    let spawn_loop = || -> anyhow::Result<()> {
        for _ in 0..spawns {
            let status = Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("/bin/true failed");
            }
        }
        Ok(())
    };
    let mut off = Series {
        name: format!("{spawns} spawns of /bin/true, no agent"),
        samples: vec![],
    };
    let mut on = Series {
        name: format!("{spawns} spawns of /bin/true, agent running"),
        samples: vec![],
    };
    let (mut spawned, mut seen, mut lost, mut agent_ticks) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..rounds {
        off.samples.push(time(spawn_loop)?);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let work = std::env::temp_dir().join(format!("bpfproc-bench-trace-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let agent = Agent(
            Command::new(bin)
                .args(["agent", "--listen", &addr, "--socket"])
                .arg(work.join("s.sock"))
                .arg("--token-file")
                .arg(work.join("token"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_answering(&addr, "/healthz", Instant::now())?;
        // Steady state is what tracing costs: let the start-up work (backfill, identities,
        // the first renders) finish before the loop, or it is charged to the loop.
        settle(agent.0.id());
        let exits0 = agent_stat(&addr, "exits")?;
        let cpu0 = cpu_ticks(agent.0.id());
        on.samples.push(time(spawn_loop)?);
        agent_ticks += cpu_ticks(agent.0.id()).saturating_sub(cpu0);
        // Let the timed drain pick up the last records before counting.
        std::thread::sleep(Duration::from_millis(100));
        let _ = http_get(&addr, "/v1/processes");
        seen += agent_stat(&addr, "exits")? - exits0;
        lost += agent_stat(&addr, "ringbuf_full")?;
        spawned += spawns as u64;
        drop(agent);
        let _ = std::fs::remove_dir_all(&work);
    }
    let slowdown = (on.median().as_secs_f64() / off.median().as_secs_f64() - 1.0) * 100.0;
    println!(
        "tracing cost: {slowdown:+.1} % on a spawn loop; {seen} exits seen of {spawned} spawned (+ other processes' exits), {lost} lost"
    );
    table(
        &format!(
            "Exec/exit tracing cost: {slowdown:+.1} % on a spawn loop ({rounds} rounds, agent off/on alternated)"
        ),
        &[off, on],
        report,
    );
    let _ = writeln!(
        report,
        "\nCompleteness: {spawned} processes spawned while the agent ran, {seen} exits recorded (every process on the host counts, so at least the spawned ones), {lost} records lost (ring buffer full). The agent's own CPU time during the loops: {:.1} µs per spawn (user + system, all its threads; the BPF programs run in the spawning processes and are in the loop's time).",
        agent_ticks as f64 * 1e6 / USER_HZ / spawned.max(1) as f64
    );
    Ok(Verdict {
        target: "exec/exit tracing: ≤ 2 % slowdown, every spawned process seen".into(),
        measured: format!("{slowdown:+.1} %; {seen} exits seen of {spawned} spawned, {lost} lost"),
        holds: slowdown <= 2.0 && seen >= spawned && lost == 0,
    })
}
