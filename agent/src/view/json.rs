//! The JSON shape of a process in the HTTP API.

use serde::Serialize;

use super::{Host, process_state};
use crate::table::{Change, Process};

#[derive(Serialize)]
pub struct ProcessJson {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// The Linux state letter (R, S, D, T, t, Z, X, P, I).
    pub state: String,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub threads: u32,
    /// Unix time in seconds.
    pub start_time: f64,
    /// Clock ticks since boot, as field 22 of /proc/PID/stat.
    pub start_ticks: u64,
    pub cmdline: Vec<String>,
    pub cmdline_truncated: bool,
    pub exe: Option<String>,
    pub kthread: bool,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    /// CPU seconds of the whole thread group.
    pub utime: f64,
    pub stime: f64,
    pub origin: crate::table::Origin,
    /// The cgroup v2 path, from the hierarchy's root; null until the iterator has read it.
    pub cgroup: Option<String>,
    /// The Kubernetes pod's uid, from the cgroup path.
    pub pod_uid: Option<String>,
    /// The container's id, from the cgroup path.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o` or `docker` when the cgroup's name says.
    pub container_runtime: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitJson>,
}

#[derive(Serialize)]
pub struct ExitJson {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    /// Unix time in seconds.
    pub exit_time: f64,
    /// Seconds from start to exit.
    pub runtime: f64,
    /// False when the exit record was lost and the end was found by a rescan.
    pub exit_known: bool,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn process(p: &Process, host: &Host) -> ProcessJson {
    let leader = p.leader();
    let (mut utime, mut stime) = leader
        .map(|t| {
            let sum = p.totals(&t, true);
            (sum.utime, sum.stime)
        })
        .unwrap_or((0, 0));
    let exit = p.exit.map(|e| {
        if e.status.is_some() {
            utime = e.utime_ns;
            stime = e.stime_ns;
        }
        ExitJson {
            exit_code: e.exit_code(),
            signal: e.signal(),
            core_dumped: e.core_dumped(),
            exit_time: host.epoch_secs(e.ts),
            runtime: e.ts.saturating_sub(p.start_boottime) as f64 / 1e9,
            exit_known: e.status.is_some(),
        }
    });
    let cgroup = crate::sys::cgroup::path_of(p.cgroup_id());
    let container = cgroup
        .as_deref()
        .and_then(crate::sys::cgroup::container)
        .unwrap_or_default();
    ProcessJson {
        pid: p.pid,
        ppid: p.ppid,
        comm: lossy(&p.name()),
        state: process_state(p).to_string(),
        uid: p.uid,
        gid: p.gid,
        euid: p.euid,
        egid: p.egid,
        threads: leader.map(|t| t.nr_threads).unwrap_or(1),
        start_time: host.epoch_secs(p.start_boottime),
        start_ticks: host.ticks(p.start_boottime),
        cmdline: p.argv().map(lossy).collect(),
        cmdline_truncated: p.cmdline_truncated,
        exe: p.exe_shown().as_deref().map(lossy),
        kthread: p.kthread,
        rss_bytes: leader
            .map(|t| (t.rss_sum[0] + t.rss_sum[1] + t.rss_sum[3]) * host.page_size)
            .unwrap_or(0),
        vsize_bytes: leader.map(|t| t.total_vm * host.page_size).unwrap_or(0),
        utime: utime as f64 / 1e9,
        stime: stime as f64 / 1e9,
        origin: p.origin,
        cgroup: cgroup.map(|c| c.to_string()),
        pod_uid: container.pod_uid,
        container_id: container.container_id,
        container_runtime: container.runtime.map(crate::sys::cgroup::Runtime::name),
        exit,
    }
}

#[derive(Serialize)]
pub struct EventJson {
    pub event: &'static str,
    /// Unix time in seconds.
    pub time: f64,
    #[serde(flatten)]
    pub process: ProcessJson,
}

pub fn event(change: &Change, host: &Host) -> EventJson {
    let (event, p, ts) = match change {
        Change::Fork(p) => ("fork", p, p.event_ts),
        Change::Exec(p) => ("exec", p, p.exec_ts.unwrap_or(p.event_ts)),
        Change::Exit(p) => ("exit", p, p.exit.map(|e| e.ts).unwrap_or(p.event_ts)),
    };
    EventJson {
        event,
        time: host.epoch_secs(ts),
        process: process(p, host),
    }
}
