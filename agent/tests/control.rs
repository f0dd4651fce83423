//! Control end to end: a real agent, real processes, the HTTP route with its token, the
//! BPF stop-on-exec bit, gdb, and the CLI. Root only (BPF); skipped with a message otherwise.
//! The ptrace details (attach/step/regs, mem, permission rule) are tested against forked
//! children in agent/src/control/tests.rs.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Agent, eventually, kill, proc_stat};

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
fn ctl_over_http_needs_the_token_and_maps_errors() {
    require_root!();
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
fn signal_names_and_the_cli() {
    require_root!();
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
fn hang_stops_the_execd_grandchild_at_exec_and_gdb_can_attach() {
    require_root!();
    let agent = Agent::start();
    // The shell waits for a line, then forks a child that execs sleep.
    let mut sh = Command::new("sh")
        .args(["-c", "read go; sleep 60 & echo $!; wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, body) = agent.ctl(sh.id(), "hang");
    assert_eq!(status, 200, "{body}");
    writeln!(sh.stdin.as_mut().unwrap(), "go").unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
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

    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-p", &grandchild.to_string()])
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
fn run_stop_on_exec_starts_the_program_stopped() {
    require_root!();
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
fn plan9_wait_reports_a_childs_exit_status() {
    require_root!();
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
fn agent_shutdown_detaches_its_tracees() {
    require_root!();
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
