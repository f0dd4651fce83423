//! End-to-end tests of the agent against the real kernel: real BPF programs, real processes.
//! They need root (CI runs them as root): `#[ignore]`d otherwise.

mod common;

use std::{
    collections::{HashMap, HashSet},
    io::BufRead as _,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Agent, eventually, kill, proc_stat};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Code(i64),
    Signal(i64),
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn every_short_lived_child_appears_in_exited_with_its_status() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    let me = std::process::id();
    let mut expected: HashMap<u32, (&str, End)> = HashMap::new();
    for i in 0..400 {
        let (comm, end, mut child) = match i % 4 {
            0 => (
                "true",
                End::Code(0),
                quiet(&mut Command::new("true")).spawn().unwrap(),
            ),
            1 => (
                "false",
                End::Code(1),
                quiet(&mut Command::new("false")).spawn().unwrap(),
            ),
            2 => (
                "sh",
                End::Code(7),
                quiet(Command::new("sh").args(["-c", "exit 7"]))
                    .spawn()
                    .unwrap(),
            ),
            _ => {
                let c = quiet(Command::new("sleep").arg("30")).spawn().unwrap();
                ("sleep", End::Signal(9), c)
            }
        };
        if let End::Signal(_) = end {
            // Let it exec first, so its name is the new program's.
            eventually(5, "sleep to exec", || {
                proc_stat(child.id())
                    .filter(|(c, _)| c == "sleep")
                    .map(drop)
            });
            kill(child.id(), 9);
        }
        expected.insert(child.id(), (comm, end));
        child.wait().unwrap();
    }
    let seen: HashMap<u32, Value> = eventually(20, "all children in /v1/exited", || {
        let list = agent.json(&format!("/v1/exited?ppid={me}"));
        let seen: HashMap<u32, Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| expected.contains_key(&(p["pid"].as_u64().unwrap() as u32)))
            .map(|p| (p["pid"].as_u64().unwrap() as u32, p.clone()))
            .collect();
        (seen.len() == expected.len()).then_some(seen)
    });
    for (pid, (comm, end)) in &expected {
        let p = &seen[pid];
        assert_eq!(p["ppid"].as_u64(), Some(u64::from(me)), "{p}");
        assert_eq!(p["comm"].as_str(), Some(*comm), "{p}");
        match end {
            End::Code(c) => {
                assert_eq!(p["exit_code"].as_i64(), Some(*c), "{p}");
                assert!(p["signal"].is_null(), "{p}");
            }
            End::Signal(s) => {
                assert_eq!(p["signal"].as_i64(), Some(*s), "{p}");
                assert!(p["exit_code"].is_null(), "{p}");
            }
        }
    }
    let stats = agent.json("/v1/stats");
    assert_eq!(stats["kernel"]["ringbuf_full"].as_u64(), Some(0), "{stats}");
}

const PF_WQ_WORKER: u64 = 0x20;

/// A process whose leader thread ends first (`SYS_exit` on the main thread) after burning
/// some CPU, and another thread then ends the process with `exit(5)`: the kernel reports the
/// group's end on that other thread.
const LAST_THREAD_NOT_LEADER: &str = "import ctypes, os, threading, time
pid = os.getpid()
def later():
    # Once the leader is a zombie: it has ended, the process has not.
    while open(f'/proc/{pid}/task/{pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':
        time.sleep(0.01)
    os._exit(5)
threading.Thread(target=later).start()
print(os.getpid(), flush=True)
while time.thread_time() < 0.3:
    pass
ctypes.CDLL(None).syscall(60, 0)";

#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_process_ended_by_a_thread_other_than_its_leader_exits_once_as_itself() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    // Debian's python3, for ctypes and a plain libc.
    let out = Command::new("/usr/bin/python3")
        .args(["-c", LAST_THREAD_NOT_LEADER])
        .output()
        .expect("python3");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let pid: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let mine = |v: &Value| -> Vec<Value> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["pid"].as_u64() == Some(pid))
            .cloned()
            .collect()
    };
    let records = eventually(5, "the exit", || {
        let r = mine(&agent.json("/v1/exited"));
        (!r.is_empty()).then_some(r)
    });
    // Once, as the process it was: not a "lost" exit of the process plus a second process
    // made from the thread that ended it.
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["exit_code"], 5, "{r}");
    assert_eq!(r["exit_known"], true, "{r}");
    assert_eq!(r["cmdline"][1], "-c", "{r}");
    // The leader's CPU time, not yet in the group's totals when the other thread ends it.
    // (The kernel's utime and stime are sampled at ticks: 0.3 s burned has shown as 0.2.)
    let cpu = r["utime"].as_f64().unwrap() + r["stime"].as_f64().unwrap();
    assert!(cpu >= 0.15, "the leader's 0.3 s of CPU is missing: {r}");
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn listing_matches_proc_for_every_stable_process() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    let before = proc_table();
    let list = agent.json("/v1/processes");
    let after = proc_table();
    let listed: HashMap<u64, &Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pid"].as_u64().unwrap(), p))
        .collect();
    let mut compared = 0;
    for (pid, (comm, ppid, start, flags)) in &before {
        // Only processes that lived across the whole query, and not workqueue kworkers, whose
        // /proc name carries the work item they are running right now.
        if after.get(pid) != Some(&(comm.clone(), *ppid, *start, *flags))
            || flags & PF_WQ_WORKER != 0
        {
            continue;
        }
        let p = listed
            .get(pid)
            .unwrap_or_else(|| panic!("pid {pid} ({comm}) not listed"));
        assert_eq!(p["ppid"].as_u64(), Some(*ppid), "pid {pid}: {p}");
        assert_eq!(p["comm"].as_str(), Some(comm.as_str()), "pid {pid}: {p}");
        assert_eq!(p["start_ticks"].as_u64(), Some(*start), "pid {pid}: {p}");
        compared += 1;
    }
    assert!(compared > 10, "compared only {compared} processes");
}

/// pid → (comm, ppid, start ticks, flags) from the kernel's /proc.
fn proc_table() -> HashMap<u64, (String, u64, u64, u64)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (comm, f) = proc_stat(pid)?;
            let n = |i: usize| f[i - 3].parse::<u64>().unwrap_or(0);
            Some((u64::from(pid), (comm, n(4), n(22), n(9))))
        })
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn agent_started_during_a_spawn_storm_misses_none() {
    let _one_at_a_time = one_at_a_time();
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut children = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                children.push(quiet(Command::new("sleep").arg("20")).spawn().unwrap());
                std::thread::sleep(Duration::from_millis(2));
            }
            children
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let agent = Agent::start();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut children = spawner.join().unwrap();
    let pids: HashSet<u64> = children.iter().map(|c| u64::from(c.id())).collect();
    let mut missing = Vec::new();
    for _ in 0..100 {
        let list = agent.json("/v1/processes");
        let listed: HashSet<u64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        missing = pids.difference(&listed).copied().collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let detail: Vec<String> = missing
        .iter()
        .map(|p| format!("{p}: {:?}", proc_stat(*p as u32)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} not listed: {detail:?}",
        missing.len(),
        pids.len()
    );
    assert!(pids.len() > 100, "the storm spawned only {}", pids.len());
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn bad_requests_get_4xx_and_the_agent_keeps_serving() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    for (path, want) in [
        ("/v1/processes/abc", 400),
        ("/v1/processes/0", 400),
        ("/v1/processes/-1", 400),
        ("/v1/processes/99999999999", 400),
        ("/v1/processes/4000000", 404),
        ("/v1/processes/4000000/status", 404),
        ("/v1/processes/1/nosuchfile", 404),
        ("/v1/processes?uid=root", 400),
        ("/v1/processes?ppid=", 400),
        ("/v1/processes?colour=blue", 400),
        ("/v1/exited?pid=x", 400),
        ("/v1/events?uid=-3", 400),
        ("/nope", 404),
    ] {
        let (status, body) = agent.get(path);
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        let err: Value = serde_json::from_slice(&body).expect("JSON error body");
        assert!(err["error"].is_string(), "{path}: {err}");
    }
    assert_eq!(agent.get("/healthz").0, 200);
    assert!(!agent.json("/v1/processes").as_array().unwrap().is_empty());
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn rendered_files_match_the_kernels_for_a_sleeping_child() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    let mut child = quiet(Command::new("sleep").args(["15", "15"]))
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "exec", || {
        proc_stat(pid).filter(|(c, _)| c == "sleep").map(drop)
    });
    std::thread::sleep(Duration::from_millis(200));
    for file in ["stat", "statm", "cmdline", "maps", "comm"] {
        let kernel =
            String::from_utf8(std::fs::read(format!("/proc/{pid}/{file}")).unwrap()).unwrap();
        let (status, ours) = agent.get_with_token(&format!("/v1/processes/{pid}/{file}"));
        assert_eq!(status, 200, "{file}");
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours, kernel, "{file} differs from the kernel's");
    }
    // maps is an address-space layout: like procfs, only for a caller who could ptrace the
    // process, which over HTTP means the token holder.
    assert_eq!(agent.get(&format!("/v1/processes/{pid}/maps")).0, 401);
    // status: every line we render is the kernel's line, and the lines tools read are there.
    let kernel = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let (_, ours) = agent.get(&format!("/v1/processes/{pid}/status"));
    let ours = String::from_utf8(ours).unwrap();
    let kernel_lines: HashSet<&str> = kernel.lines().collect();
    for line in ours.lines() {
        if ["VmHWM:", "VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"]
            .iter()
            .any(|k| line.starts_with(k))
        {
            continue;
        }
        assert!(
            kernel_lines.contains(line),
            "status line {line:?} not in the kernel's:\n{kernel}"
        );
    }
    for key in [
        "Name:", "State:", "Tgid:", "PPid:", "Uid:", "Gid:", "VmRSS:", "Threads:",
    ] {
        assert!(ours.lines().any(|l| l.starts_with(key)), "no {key} line");
    }
    let one = agent.json(&format!("/v1/processes/{pid}"));
    assert_eq!(one["cmdline"], serde_json::json!(["sleep", "15", "15"]));
    assert_eq!(one["ppid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(one["exe"].as_str().unwrap().ends_with("sleep"), "{one}");
    child.kill().unwrap();
    child.wait().unwrap();
    let (status, _) = eventually(5, "404 after exit", || {
        let r = agent.get(&format!("/v1/processes/{pid}"));
        (r.0 == 404).then_some(r)
    });
    assert_eq!(status, 404);
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn event_stream_reports_fork_exec_and_exit_in_order() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    let me = std::process::id();
    let mut stream = agent.sse(&format!("/v1/events?ppid={me}"));
    // Give the subscription a moment to be registered before the child starts.
    std::thread::sleep(Duration::from_millis(200));
    let mut child = quiet(Command::new("sh").args(["-c", "exit 3"]))
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    child.wait().unwrap();
    let mut kinds = Vec::new();
    let mut line = String::new();
    while kinds.last() != Some(&"exit".to_string()) {
        line.clear();
        stream
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = stream.read_line(&mut line).expect("event stream stalled");
        assert!(n > 0, "stream closed");
        let Some(data) = line.trim().strip_prefix("data:") else {
            continue;
        };
        // Chunk-size lines of the chunked encoding are not "data:" lines; skip them above.
        let ev: Value = serde_json::from_str(data.trim()).unwrap();
        if ev["pid"].as_u64() != Some(pid) {
            continue;
        }
        kinds.push(ev["event"].as_str().unwrap().to_string());
        if ev["event"] == "exit" {
            assert_eq!(ev["exit_code"].as_i64(), Some(3), "{ev}");
            assert_eq!(ev["comm"], "sh", "{ev}");
        }
    }
    assert_eq!(kinds, ["fork", "exec", "exit"]);
}

/// On a quiet host the ring reader stops polling (an idle agent wakes for nothing), and the
/// next record wakes it: a child started then reaches the event stream, which asks the table
/// nothing that would drain the ring, and the kernel's wake-up is counted.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_parked_ring_reader_is_woken_by_the_next_record() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    let me = std::process::id();
    let stat = |key: &str| agent.json("/v1/stats")[key].as_u64().unwrap();
    let mut stream = agent.sse(&format!("/v1/events?ppid={me}"));
    stream
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The host's own processes may end a lull at any time: try until a child is the record
    // that ends one.
    for _attempt in 0..20 {
        let parks = stat("reader_parks");
        eventually(30, "the ring reader parked", || {
            (stat("reader_parks") > parks).then_some(())
        });
        let woken = stat("reader_woken");
        let mut child = quiet(Command::new("sh").args(["-c", "exit 4"]))
            .spawn()
            .unwrap();
        let pid = u64::from(child.id());
        child.wait().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(stream.read_line(&mut line).expect("event stream stalled") > 0);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let ev: Value = serde_json::from_str(data.trim()).unwrap();
            if ev["pid"].as_u64() == Some(pid) && ev["event"] == "exit" {
                assert_eq!(ev["exit_code"].as_i64(), Some(4), "{ev}");
                break;
            }
        }
        if stat("reader_woken") > woken {
            return;
        }
    }
    panic!("no record woke the parked reader in 20 lulls");
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn sigterm_shuts_the_agent_down_cleanly() {
    let _one_at_a_time = one_at_a_time();
    let agent = Agent::start();
    let stats = agent.json("/v1/stats");
    assert!(
        stats["table"]["backfilled"].as_u64().unwrap() > 10,
        "{stats}"
    );
    // The process map's entries for what predates the agent come from the sweep that follows
    // the first pass.
    eventually(10, "the process map backfilled", || {
        (agent.json("/v1/stats")["bpf_map_entries"].as_u64()? > 10).then_some(())
    });
    let status = agent.stop();
    assert!(status.success(), "agent exited with {status}");
}

/// With `bpfproc::ebpf=debug` the programs load with their log statements live (the verifier
/// accepts them), and what they say on a failure path reaches the agent's log: a ring buffer of
/// one page, drained every 2 s, overflows under bursts of spawns, and each lost record is
/// counted and logged with its process.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn bpf_failure_paths_reach_the_log_when_its_level_asks() {
    let _one_at_a_time = one_at_a_time();
    let (agent, log) = Agent::start_logging(
        "warn,bpfproc::ebpf=debug",
        &["--ringbuf-bytes", "4096", "--drain-ms", "2000"],
    );
    let logged = eventually(60, "a lost record in the log", || {
        for _ in 0..100 {
            let _ = quiet(&mut Command::new("/bin/true")).status();
        }
        log.try_iter()
            .find(|l| l.contains("ringbuf_full (counted)"))
    });
    assert!(
        logged.contains("bpfproc::ebpf") && logged.contains("pid "),
        "{logged}"
    );
    assert!(agent.json("/v1/stats")["kernel"]["ringbuf_full"].as_u64() > Some(0));
}

/// A listing whose numbers are older than the bound reads again the processes that ran since
/// the last refresh (the scheduler's hooks mark them), not every task: a busy process's CPU
/// time is read after the question; a sleeping process is right as it is, and shows what
/// other processes did to it (moved it to another cgroup, ended its parent) though it never
/// ran.
#[test]
#[ignore = "needs root: loads BPF programs, makes a cgroup"]
fn a_stale_listing_reads_again_what_ran_and_what_was_done_to_a_sleeper() {
    let _one_at_a_time = one_at_a_time();
    // Enough sleepers that reading what ran one by one is cheaper than a pass, as on a big
    // host (on a small one a pass is, and is made).
    let mut many = Command::new("sh")
        .args([
            "-c",
            "for i in $(seq 1000); do sleep 600 & done; echo ready; wait",
        ])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(many.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    // Everything this test starts is in that group, killed however the test ends.
    let pgid = many.id();
    let mut group = Group(vec![many]);
    let agent = Agent::start();
    // Busy a fifth of the time: its CPU time moves, without taking a CPU from the tests that
    // run alongside (they measure CPU times of their own).
    let burn = "while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.1; done";
    let busy = quiet(Command::new("sh").args(["-c", burn]))
        .process_group(pgid as i32)
        .spawn()
        .unwrap();
    let busy_pid = busy.id();
    group.0.push(busy);
    // A sleeping process whose parent waits on its stdin, to end when told.
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 120 & echo $!; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(pgid as i32)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sleeper: u64 = line.trim().parse().unwrap();
    // utime + stime in ticks, as /proc/PID/stat shows them. (Each is scaled to the precise
    // runtime on its own, so only their sum is ordered in time, to within the two ticks the
    // kernel rounds down.)
    let cpu = |pid: u32| -> u64 {
        let (_, f) = proc_stat(pid).unwrap();
        f[14 - 3].parse::<u64>().unwrap() + f[15 - 3].parse::<u64>().unwrap()
    };
    let entry = |list: &Value, pid: u64| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"].as_u64() == Some(pid))
            .unwrap_or_else(|| panic!("{pid} not listed"))
            .clone()
    };
    let counts = |s: &Value| {
        (
            s["table"]["snapshots"].as_u64().unwrap(),
            s["partial_refreshes"].as_u64().unwrap(),
        )
    };
    eventually(5, "both listed", || {
        let list = agent.json("/v1/processes");
        let listed = |pid: u64| list.as_array().unwrap().iter().any(|p| p["pid"] == pid);
        (listed(u64::from(busy_pid)) && listed(sleeper)).then_some(())
    });
    let (passes, partials) = counts(&agent.json("/v1/stats"));
    let cgroup = common::cgroup2_root().join(format!("bpfproc-ran-{}", std::process::id()));
    std::fs::create_dir(&cgroup).unwrap();
    let _cgroup = Cgroup(cgroup.clone(), pgid);
    for round in 0..5 {
        // Past twice the bound: no refresh ahead, so every listing waits for one begun after
        // the question.
        std::thread::sleep(Duration::from_millis(300));
        match round {
            2 => std::fs::write(cgroup.join("cgroup.procs"), sleeper.to_string()).unwrap(),
            3 => drop(parent.stdin.take()),
            _ => {}
        }
        if round == 3 {
            // The parent has ended (a zombie until reaped), and its child has a new one.
            eventually(5, "the sleeper's new parent", || {
                let (_, f) = proc_stat(sleeper as u32)?;
                (f[4 - 3] != parent.id().to_string()).then_some(())
            });
        }
        let before = cpu(busy_pid);
        let list = agent.json("/v1/processes");
        let after = cpu(busy_pid);
        let b = entry(&list, u64::from(busy_pid));
        let listed = (b["utime"].as_f64().unwrap() + b["stime"].as_f64().unwrap()) * 100.0;
        assert!(
            before as f64 <= listed + 1e-6 && listed < after as f64 + 2.0,
            "round {round}: busy CPU {listed} ticks, /proc said {before} then {after}"
        );
        let s = entry(&list, sleeper);
        let (_, f) = proc_stat(sleeper as u32).unwrap();
        assert_eq!(s["state"], "S", "round {round}: {s}");
        assert_eq!(
            s["ppid"].as_u64().unwrap().to_string(),
            f[4 - 3],
            "round {round}: {s}"
        );
        assert_eq!(
            s["rss_bytes"].as_u64().unwrap() / 1024,
            common::rss_kib(sleeper as u32),
            "round {round}: {s}"
        );
        if round >= 2 {
            let name = cgroup.file_name().unwrap().to_str().unwrap();
            assert_eq!(s["cgroup"], format!("/{name}"), "round {round}: {s}");
        }
    }
    let (passes_after, partials_after) = counts(&agent.json("/v1/stats"));
    // Every listing waited for a refresh begun after it (the CPU times above say so), and they
    // were refreshes of what ran: a pass stands in only when more than a third of the table
    // ran (the other tests of this file, run alongside, can storm), or every 10 s.
    assert!(
        partials_after > partials && (partials_after - partials) + (passes_after - passes) >= 5,
        "{partials} → {partials_after} refreshes of what ran, {passes} → {passes_after} passes"
    );
    let _ = parent.wait();
}

/// The tests of this file one at a time: `a_stale_listing_reads_again_only_what_ran…` counts
/// the agent's passes, and a refresh is a pass by design when more than a third of the table
/// ran, as it does while another test spawns its thousands of processes alongside.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The processes of a process group (its leader first), killed and reaped when the test
/// ends, however it ends.
struct Group(Vec<std::process::Child>);

impl Drop for Group {
    fn drop(&mut self) {
        common::kill_group(self.0[0].id(), 9);
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// A cgroup removed when the test ends, once the group `.1` killed in it has left it.
struct Cgroup(std::path::PathBuf, u32);

impl Drop for Cgroup {
    fn drop(&mut self) {
        common::kill_group(self.1, 9);
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
