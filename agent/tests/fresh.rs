//! The default view is never stale: a read shows the kernel as it was at or after the read's
//! open. Each case changes a process and reads the view at once, with no waiting and no retry:
//! a SIGSTOP just sent, a thread just started, a child just exited (a zombie), memory just
//! touched. Needs root (CI runs as root); ignored otherwise.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use common::{Agent, eventually, kill};

/// A Python process that does what it is told on stdin and answers each command on stdout
/// once the kernel has done it.
struct Puppet {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const PUPPET: &str = r#"
import os, sys, threading, time
held, threads, kids = [], [], []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "thread":
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, daemon=True)
        t.start()
        threads.append(ev)
        print(threading.active_count(), flush=True)
    elif cmd[0] == "touch":
        b = bytearray(int(cmd[1]) << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        held.append(b)
        print(len(b), flush=True)
    elif cmd[0] == "child":
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        # Not reaped: wait until the kernel shows the zombie.
        while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.001)
        kids.append(pid)
        print(pid, flush=True)
"#;

impl Puppet {
    fn start(view: &Path) -> Puppet {
        let mut child = Command::new("python3")
            .args(["-c", PUPPET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let pid = child.id();
        eventually(10, "the puppet in the view", || {
            std::fs::read_to_string(view.join(format!("{pid}/status")))
                .ok()
                .filter(|s| s.starts_with("Name:\tpython3"))
                .map(drop)
        });
        Puppet {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

fn state(stat: &str) -> char {
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .expect("a stat line")
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn every_read_shows_what_the_kernel_did_before_its_open() {
    let (_agent, view) = Agent::start_with_view(&[]);
    let mut p = Puppet::start(&view);
    let pid = p.pid();
    let dir = view.join(pid.to_string());
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();

    // A stop just sent: the very next read says T, as /proc does.
    kill(pid, libc::SIGSTOP);
    common::eventually(5, "the kernel's stop", || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (state(&s) == 'T').then_some(())
    });
    assert_eq!(state(&read("stat")), 'T', "stat right after SIGSTOP");
    assert!(field(&read("status"), "State").starts_with('T'));
    kill(pid, libc::SIGCONT);
    common::eventually(5, "the kernel's continue", || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (state(&s) != 'T').then_some(())
    });
    assert_ne!(state(&read("stat")), 'T', "stat right after SIGCONT");

    // A thread just started: counted, and listed under task/.
    let threads: usize = p.ask("thread").parse().unwrap();
    assert_eq!(threads, 2);
    assert_eq!(field(&read("status"), "Threads"), "2");
    let tasks = std::fs::read_dir(dir.join("task")).unwrap().count();
    assert_eq!(tasks, 2, "task/ lists the new thread");

    // Memory just touched: VmRSS has it.
    let before: u64 = field(&read("status"), "VmRSS")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    p.ask("touch 64");
    let after: u64 = field(&read("status"), "VmRSS")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(
        after >= before + 60 * 1024,
        "VmRSS {before} kB then {after} kB after touching 64 MiB"
    );

    // A child just exited and not reaped: a zombie, in stat and status.
    let kid: u32 = p.ask("child").parse().unwrap();
    let kid_stat = std::fs::read_to_string(view.join(format!("{kid}/stat"))).unwrap();
    assert_eq!(state(&kid_stat), 'Z', "{kid_stat}");
    let kid_status = std::fs::read_to_string(view.join(format!("{kid}/status"))).unwrap();
    assert!(field(&kid_status, "State").starts_with('Z'), "{kid_status}");
}
