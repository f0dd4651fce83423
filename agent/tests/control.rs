//! Control end to end: a real agent, real processes, the HTTP route with its token, the
//! BPF stop-on-exec bit, gdb, the CLI, and the control files of a mounted view. Root only
//! (BPF): `#[ignore]`d otherwise.
//! The ptrace details (attach/step/regs, mem, permission rule) are tested against forked
//! children in agent/src/control/tests.rs.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::{
    Agent, eventually, kill, proc_stat,
    view::{
        errno_of, fuse_requests, has_fuse_uring, mount_view, mounted_agent, uring_requests,
        write_file,
    },
};

/// The state letter and TracerPid of a process, from the kernel.
fn state(pid: u32) -> Option<(char, u32)> {
    let (_, f) = proc_stat(pid)?;
    let letter = f.first()?.chars().next()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    Some((letter, tracer))
}

fn sleeper() -> std::process::Child {
    Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

#[test]
#[ignore = "needs root: loads BPF programs, ptraces"]
fn ctl_over_http_needs_the_token_and_maps_errors() {
    let agent = Agent::start();
    let mut child = sleeper();
    let pid = child.id();
    let path = format!("/v1/processes/{pid}/ctl");

    let meta = std::fs::metadata(&agent.token_file).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "token is root-only"
    );

    assert_eq!(agent.post(&path, "stop", None).0, 401, "no token");
    assert_eq!(
        agent.post(&path, "stop", Some("wrong")).0,
        403,
        "wrong token"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(
        state(pid).unwrap().0,
        'T',
        "unauthenticated stop did nothing"
    );

    for garbage in ["stopp", "STOP", "", "stop start", "sigterm"] {
        let (status, body) = agent.ctl(pid, garbage);
        assert_eq!(status, 400, "{garbage:?}: {body}");
        assert!(body.contains("\"errno\":22"), "EINVAL: {body}");
    }
    assert!(
        matches!(state(pid).unwrap().0, 'S' | 'R'),
        "garbage left it running"
    );

    assert_eq!(agent.ctl(pid, "start").0, 409, "start on a running process");
    assert_eq!(agent.ctl(pid, "step").0, 409, "step without attach");
    assert_eq!(agent.ctl(4_000_000, "stop").0, 404, "no such process");
    assert_eq!(agent.ctl(1, "stop").0, 403, "nobody stops init through us");

    let (status, body) = agent.ctl(pid, "stop\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(pid).unwrap(), ('T', 0), "stopped, not traced");
    assert_eq!(agent.ctl(pid, "start").0, 200);
    eventually(5, "running again", || {
        matches!(state(pid)?.0, 'S' | 'R').then_some(())
    });
    assert_eq!(agent.ctl(pid, "kill").0, 200);
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(st.signal(), Some(9));
}

#[test]
#[ignore = "needs root: loads BPF programs, ptraces"]
fn signal_names_and_the_cli() {
    let agent = Agent::start();
    let mut child = sleeper();
    let pid = child.id();
    let cli = |cmd: &str| {
        Command::new(env!("CARGO_BIN_EXE_bpfproc"))
            .args(["ctl", "--agent", &agent.addr, "--token-file"])
            .arg(&agent.token_file)
            .args([&pid.to_string(), cmd])
            .output()
            .unwrap()
    };
    let out = cli("stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(pid).unwrap().0, 'T');
    let out = cli("bogus");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown ctl command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(pid).unwrap().0, 'T', "a bad command changed nothing");

    // A user who cannot read the token cannot control anything, not even via the CLI.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_bpfproc"))
        .args(["ctl", "--agent", &agent.addr, "--token-file"])
        .arg(&agent.token_file)
        .args([&pid.to_string(), "cont"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unprivileged caller got through");
    assert_eq!(state(pid).unwrap().0, 'T', "still stopped");

    assert!(cli("cont").status.success(), "SIGCONT by name");
    eventually(5, "running again", || {
        matches!(state(pid)?.0, 'S' | 'R').then_some(())
    });
    assert!(cli("term").status.success());
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(child.wait().unwrap().signal(), Some(15));
}

#[test]
#[ignore = "needs root: loads BPF programs, ptraces"]
fn hang_stops_the_execd_grandchild_at_exec_and_gdb_can_attach() {
    let agent = Agent::start();
    // The shell says it runs, waits for a line, then forks a child that execs sleep.
    let mut sh = Command::new("sh")
        .args(["-c", "echo ready; read go; sleep 60 & echo $!; wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sh.stdout.take().unwrap());
    let mut line = String::new();
    // Not before: spawn() returns once the exec closed its error pipe, which is before the
    // exec is through (and before the exec hook runs); a `hang` set then stops the shell at
    // its own exec, and the shell never reads the line.
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let (status, body) = agent.ctl(sh.id(), "hang");
    assert_eq!(status, 200, "{body}");
    writeln!(sh.stdin.as_mut().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let grandchild: u32 = line.trim().parse().expect("grandchild pid");

    eventually(10, "grandchild stopped at exec", || {
        let (comm, _) = proc_stat(grandchild)?;
        (comm == "sleep" && state(grandchild)? == ('T', 0)).then_some(())
    });
    assert_ne!(
        state(sh.id()).unwrap().0,
        'T',
        "the shell itself did not exec, so it runs on"
    );
    let stats = agent.json("/v1/stats");
    assert!(stats["kernel"]["hang_stops"].as_u64().unwrap() >= 1);

    // Bounded: a gdb that cannot attach fails the test rather than hang the suite.
    let out = Command::new("timeout")
        .args([
            "-k",
            "5",
            "120",
            "gdb",
            "-nx",
            "-batch",
            "-p",
            &grandchild.to_string(),
        ])
        .args(["-ex", "info registers rip"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("rip")),
        "gdb attached and read rip:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // nohang clears the bit: the next exec in that shell's family runs straight through.
    assert_eq!(agent.ctl(sh.id(), "nohang").0, 200);
    kill(grandchild, 9);
    kill(sh.id(), 9);
    let _ = sh.wait();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn run_stop_on_exec_starts_the_program_stopped() {
    let agent = Agent::start();
    let mut run = Command::new(env!("CARGO_BIN_EXE_bpfproc"))
        .args(["run", "--agent", &agent.addr, "--token-file"])
        .arg(&agent.token_file)
        .args(["--stop-on-exec", "--", "sleep", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(run.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u32 = line
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|w| w.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let (comm, _) = proc_stat(pid).unwrap();
    assert_eq!(comm, "sleep");
    assert_eq!(state(pid).unwrap(), ('T', 0), "stopped, untraced");
    assert_ne!(
        state(run.id()).unwrap().0,
        'T',
        "the launcher is not stopped"
    );
    kill(pid, 9);
    assert_eq!(
        run.wait().unwrap().code(),
        Some(128 + 9),
        "exit status passed on"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn plan9_wait_reports_a_childs_exit_status() {
    let agent = Agent::start();
    let mut sh = Command::new("sh")
        .args(["-c", "read go; sh -c 'exit 7'; sleep 60"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sh.id();
    let token = agent.token();
    // Let the agent see the shell before asking.
    eventually(5, "shell in the table", || {
        (agent.get(&format!("/v1/processes/{pid}")).0 == 200).then_some(())
    });
    assert_eq!(
        agent.post(&format!("/v1/processes/{pid}/wait"), "", None).0,
        401
    );
    let waiter = {
        let addr = agent.addr.clone();
        let token = token.clone();
        std::thread::spawn(move || {
            common::post(
                &addr,
                &format!("/v1/processes/{pid}/wait"),
                "",
                Some(&token),
            )
        })
    };
    // The read blocks while the shell has no exited child; then the child exits 7.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiter.is_finished(),
        "wait returned before any child exited"
    );
    writeln!(sh.stdin.as_mut().unwrap(), "go").unwrap();
    let (status, body) = waiter.join().unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{body}");
    let fields: Vec<&str> = body.splitn(5, ' ').collect();
    let child: u32 = fields[0].parse().unwrap();
    assert_ne!(child, pid);
    assert!(
        body.trim_end().ends_with(&format!("'sh {child}: exit 7'")),
        "{body:?}"
    );

    // A read on a process with no children blocks (it may still fork one) and ends when
    // the process itself exits.
    let mut lone = sleeper();
    let lone_pid = lone.id();
    eventually(5, "sleeper in the table", || {
        (agent.get(&format!("/v1/processes/{lone_pid}")).0 == 200).then_some(())
    });
    let addr = agent.addr.clone();
    let blocked = std::thread::spawn(move || {
        common::post(
            &addr,
            &format!("/v1/processes/{lone_pid}/wait"),
            "",
            Some(&token),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !blocked.is_finished(),
        "wait on a childless process returned"
    );
    let _ = lone.kill();
    let _ = lone.wait();
    let (status, body) = blocked.join().unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    kill(pid, 9);
    let _ = sh.wait();
}

#[test]
#[ignore = "needs root: loads BPF programs, ptraces"]
fn agent_shutdown_detaches_its_tracees() {
    let agent = Agent::start();
    let mut held = sleeper();
    let mut running = sleeper();
    assert_eq!(agent.ctl(held.id(), "attach").0, 200);
    assert_eq!(state(held.id()).unwrap().0, 't');
    assert_eq!(agent.ctl(running.id(), "attach").0, 200);
    assert_eq!(agent.ctl(running.id(), "run").0, 200);
    assert!(agent.stop().success());
    assert_eq!(state(held.id()).unwrap(), ('T', 0), "stopped stays stopped");
    eventually(5, "running keeps running, untraced", || {
        let (s, t) = state(running.id())?;
        (matches!(s, 'S' | 'R') && t == 0).then_some(())
    });
    for c in [&mut held, &mut running] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn state_of(view: &Path, pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(view.join(format!("{pid}/stat"))).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().next().map(str::to_owned)
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn a_control_command_shows_in_the_next_read_however_long_the_bound() {
    // A minute's staleness: without the table knowing of the command, the view would show
    // the state from before it for that long.
    let (agent, view) = Agent::start_with_view(&["--max-staleness-ms", "60000"]);
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id();
    // (Whatever the view shows now may stay for the minute.)
    eventually(5, "child asleep", || {
        (state_of(Path::new("/proc"), pid).as_deref() == Some("S")).then_some(())
    });
    let ctl = view.join(format!("{pid}/ctl"));
    let state_over_http = || agent.json(&format!("/v1/processes/{pid}"))["state"].clone();
    write_file(&ctl, b"stop").unwrap();
    assert_eq!(state_of(&view, pid).as_deref(), Some("T"));
    assert_eq!(state_over_http(), "T");
    write_file(&ctl, b"start").unwrap();
    // Running again, or already back in its sleep.
    assert!(matches!(state_of(&view, pid).as_deref(), Some("S" | "R")));
    assert!(state_over_http() == "S" || state_over_http() == "R");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn control_files_stop_start_signal_and_read_memory_through_the_mount() {
    let (_agent, view) = mounted_agent();
    stop_start_signal_and_read_memory(&view);
}

fn stop_start_signal_and_read_memory(view: &Path) {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import ctypes, sys, time\n\
             b = ctypes.create_string_buffer(b'bpfproc-marker-42')\n\
             print(ctypes.addressof(b), flush=True)\n\
             time.sleep(60)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: u64 = line.trim().parse().unwrap();
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    let ctl = view.join(format!("{pid}/ctl"));
    // Asleep in time.sleep: the view reads the kernel at each open, so right after its print
    // the child may still show running.
    eventually(5, "child asleep", || {
        (state_of(Path::new("/proc"), pid).as_deref() == Some("S")).then_some(())
    });

    // A malformed command is EINVAL and leaves the target running.
    let err = write_file(&ctl, b"launch the missiles\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert_eq!(state_of(view, pid).as_deref(), Some("S"));

    write_file(&ctl, b"stop\n").unwrap();
    assert_eq!(
        state_of(view, pid).as_deref(),
        Some("T"),
        "stop returns once it is stopped"
    );
    // mem: the marker at its address, read through the view.
    use std::os::unix::fs::FileExt as _;
    let mem = std::fs::File::open(view.join(format!("{pid}/mem"))).unwrap();
    let mut buf = [0u8; 17];
    mem.read_exact_at(&mut buf, addr).unwrap();
    assert_eq!(&buf, b"bpfproc-marker-42");
    let regs = std::fs::read(view.join(format!("{pid}/regs"))).unwrap();
    assert_eq!(regs.len(), 27 * 8, "user_regs_struct");
    write_file(&ctl, b"start").unwrap();
    eventually(5, "running again", || {
        (state_of(view, pid).as_deref() == Some("S")).then_some(())
    });

    // A caller who could not ptrace the target is refused by the kernel's permission check.
    let out = common::sh_as_nobody(&format!("echo stop > {}", ctl.display()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert_eq!(
        state_of(view, pid).as_deref(),
        Some("S"),
        "the target is untouched"
    );

    // A signal by name (FreeBSD), then the process is gone: ENOENT.
    write_file(&ctl, b"term").unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    eventually(5, "ENOENT", || {
        (errno_of(write_file(&ctl, b"stop")) == Some(libc::ENOENT)).then_some(())
    });
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn wait_and_hang_through_the_mount() {
    let (_agent, view) = mounted_agent();
    wait_and_hang(&view);
}

fn wait_and_hang(view: &Path) {
    // A shell that runs a child exiting 7, then waits for a line before exec'ing sleep.
    let mut sh = Command::new("sh")
        .args(["-c", "sh -c 'exit 7'; read line; exec sleep 30"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sh.id();
    eventually(5, "shell in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    // Plan 9 wait: one record per read (a second read would block until another child exits),
    // for the child that exited 7.
    let mut buf = [0u8; 512];
    let n = std::io::Read::read(
        &mut std::fs::File::open(view.join(format!("{pid}/wait"))).unwrap(),
        &mut buf,
    )
    .unwrap();
    let record = String::from_utf8_lossy(&buf[..n]).into_owned();
    let fields: Vec<&str> = record.split_whitespace().collect();
    let child: u32 = fields[0].parse().unwrap();
    assert!(
        record
            .trim_end()
            .ends_with(&format!("'sh {child}: exit 7'")),
        "{record:?}"
    );

    // hang: the shell's exec stops the new program before its first instruction.
    write_file(&view.join(format!("{pid}/ctl")), b"hang").unwrap();
    use std::io::Write as _;
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    eventually(5, "stopped at exec", || {
        let (comm, f) = proc_stat(pid)?;
        (comm == "sleep" && f[0] == "T").then_some(())
    });
    let status = std::fs::read_to_string(view.join(format!("{pid}/status"))).unwrap();
    assert!(
        status.contains("Name:\tsleep\n") && status.contains("TracerPid:\t0\n"),
        "{status}"
    );
    sh.kill().unwrap();
    sh.wait().unwrap();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn attach_step_regs_detach_through_the_mount() {
    let (_agent, view) = mounted_agent();
    // A busy loop, so a single step always moves the instruction pointer.
    let mut child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    let ctl = view.join(format!("{pid}/ctl"));
    let rip = || -> u64 {
        let regs = std::fs::read(view.join(format!("{pid}/regs"))).unwrap();
        // user_regs_struct: rip is the 17th u64.
        u64::from_ne_bytes(regs[16 * 8..17 * 8].try_into().unwrap())
    };
    write_file(&ctl, b"attach").unwrap();
    assert_eq!(
        state_of(&view, pid).as_deref(),
        Some("t"),
        "attached and stopped"
    );
    let before = rip();
    write_file(&ctl, b"step").unwrap();
    assert_ne!(rip(), before, "a single step moves rip");
    // step without being attached is refused, and the process is left alone.
    write_file(&ctl, b"detach").unwrap();
    eventually(5, "running after detach", || {
        (state_of(&view, pid).as_deref() == Some("R")).then_some(())
    });
    let err = write_file(&ctl, b"step").unwrap_err();
    assert!(err.raw_os_error().is_some(), "{err}");
    assert_eq!(state_of(&view, pid).as_deref(), Some("R"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The control files of a `-o uring` view: the same commands, reads and waits as through
/// fuser's threads, and reads that wait for a child's exit (each holding a queue entry until
/// its answer comes from the blocking pool) leave the queue answering its CPU's other
/// requests.
#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn control_files_over_io_uring_queues_and_waiting_reads_stall_none() {
    if !has_fuse_uring() {
        return;
    }
    let (agent, _) = mounted_agent();
    let view = mount_view(&agent, "uring", "uring");
    let carried = uring_requests(&agent);
    stop_start_signal_and_read_memory(&view);
    wait_and_hang(&view);
    assert!(uring_requests(&agent) > carried, "the queues carried them");
    waiting_reads_stall_no_queue(&agent, &view);
}

/// Fills one CPU's queue with as many waiting `wait` reads as it may hold, then reads other
/// files from that CPU: answered meanwhile. One more waiting read is refused (EAGAIN) rather
/// than let the waits take the whole queue.
fn waiting_reads_stall_no_queue(agent: &Agent, view: &Path) {
    // Every request from a task on one CPU goes to that CPU's queue.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cpu = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|l| l.trim().split([',', '-']).next())
        .unwrap()
        .to_owned();
    let on_cpu = |args: &[&str]| {
        Command::new("taskset")
            .args(["-c", &cpu])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // One read(2) of a wait file: a second would wait for another record.
    let read_wait = |pid: u32| {
        let wait = view.join(format!("{pid}/wait"));
        let input = format!("if={}", wait.display());
        on_cpu(&["dd", &input, "bs=512", "count=1", "status=none"])
    };
    // Shells whose child exits on cue: until then, a read of their wait file waits.
    let mut shells: Vec<Child> = (0..fusewire::PARKED)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "read go; sh -c 'exit 7'; exec sleep 60"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for sh in &shells {
        eventually(5, "shell in view", || {
            std::fs::metadata(view.join(sh.id().to_string())).ok()
        });
    }
    let reads = fuse_requests(agent, "read");
    let waiting: Vec<Child> = shells.iter().map(|sh| read_wait(sh.id())).collect();
    // The queue takes its requests in turn: once it has taken these reads, each waits in
    // one of its entries.
    eventually(10, "the wait reads taken", || {
        (fuse_requests(agent, "read") >= reads + fusewire::PARKED as u64).then_some(())
    });
    for sh in &shells {
        let status = finished(on_cpu(&[
            "cat",
            &format!("{}/{}/status", view.display(), sh.id()),
        ]));
        assert!(status.status.success(), "{status:?}");
        assert!(status.stdout.starts_with(b"Name:\tsh\n"), "{status:?}");
    }
    let refused = finished(read_wait(shells[0].id()));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Resource temporarily unavailable"),
        "{refused:?}"
    );
    for sh in &mut shells {
        sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    for reader in waiting {
        let out = finished(reader);
        let record = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        assert!(record.trim_end().ends_with(": exit 7'"), "{record:?}");
    }
    for sh in &mut shells {
        sh.kill().unwrap();
        sh.wait().unwrap();
    }
}

/// `child`'s output once it has exited, within 10 seconds.
fn finished(mut child: Child) -> Output {
    eventually(10, "the command's exit", || child.try_wait().unwrap());
    child.wait_with_output().unwrap()
}
