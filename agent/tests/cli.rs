//! The everyday commands against a real agent: `ps`, `tree`, `events` and `top` (in a real
//! terminal, tmux), the config file, the OpenAPI document, completions and man pages, and
//! `mount -t fuse.bpfproc`. Tests that load BPF need root (CI runs as root): `#[ignore]`d
//! otherwise.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::{Agent, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_bpfproc");

/// Runs the CLI against `agent` over HTTP (as a user would with BPFPROC_URL).
fn cli(agent: &Agent, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BPFPROC_URL", &agent.addr)
        .env("BPFPROC_SOCKET", &agent.socket)
        .output()
        .expect("run bpfproc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// A copy of `bin` under a name no other process has, so its comm identifies it.
fn named(agent: &Agent, bin: &str, name: &str) -> PathBuf {
    let p = agent.dir.join(name);
    std::fs::copy(bin, &p).expect("copy binary");
    p
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Reaped {
    Reaped(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn"),
    )
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn ps_lists_and_filters_live_processes() {
    let agent = Agent::start();
    let sleeper = named(&agent, "/usr/bin/sleep", "pstestsleep");
    let child = spawn(Command::new(&sleeper).arg("1000"));
    let pid = child.0.id().to_string();

    let out = eventually(10, "ps to show the sleeper", || {
        let o = ok(cli(&agent, &["ps", "--comm", "pstestsleep"]));
        o.contains(&pid).then_some(o)
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("USER") && lines[0].ends_with("CMD"),
        "{out}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], "root");
    assert_eq!(cols[1], pid);
    assert_eq!(cols[2], std::process::id().to_string(), "PPID");
    assert_eq!(cols[3], "S");
    assert!(
        lines[1].ends_with(&format!("{} 1000", sleeper.display())),
        "{out}"
    );

    // -p and -u select it; another user's filter does not.
    assert!(
        ok(cli(&agent, &["ps", "-p", &format!("1,{pid}")]))
            .contains(&sleeper.display().to_string())
    );
    assert!(ok(cli(&agent, &["ps", "-u", "root", "--comm", "pstestsleep"])).contains(&pid));
    assert_eq!(
        ok(cli(&agent, &["ps", "-u", "65534", "--comm", "pstestsleep"]))
            .lines()
            .count(),
        1,
        "only the header"
    );
    // Kernel threads are there unless -k.
    assert!(ok(cli(&agent, &["ps", "-p", "2"])).contains("[kthreadd]"));
    assert_eq!(ok(cli(&agent, &["ps", "-k", "-p", "2"])).lines().count(), 1);

    // --json is the agent's objects.
    let json: serde_json::Value =
        serde_json::from_str(&ok(cli(&agent, &["ps", "--json", "-p", &pid]))).expect("JSON");
    assert_eq!(json[0]["pid"].as_u64(), Some(child.0.id() as u64));
    assert_eq!(json[0]["cmdline"][1], "1000");

    // Our own cgroup contains it; a cgroup that does not exist is a clear error.
    let cg = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    if let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) {
        assert!(ok(cli(&agent, &["ps", "--cgroup", path, "-p", &pid])).contains(&pid));
    }
    let bad = cli(&agent, &["ps", "--cgroup", "/no/such/cgroup"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("does not exist"), "{}", stderr(&bad));

    let bad = cli(&agent, &["ps", "-p", "abc"]);
    assert!(!bad.status.success() && stderr(&bad).contains("\"abc\" is not a process id"));
    let bad = cli(&agent, &["ps", "-u", "no-such-user-here"]);
    assert!(!bad.status.success() && stderr(&bad).contains("no such user"));
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn ps_exited_shows_how_processes_ended() {
    let agent = Agent::start();
    let sh = named(&agent, "/bin/sh", "psexitsh");
    let st = Command::new(&sh)
        .args(["-c", "exit 7"])
        .status()
        .expect("sh");
    assert_eq!(st.code(), Some(7));
    let st = Command::new(&sh)
        .args(["-c", "kill -KILL $$"])
        .status()
        .expect("sh");
    assert!(st.code().is_none());

    let out = eventually(10, "both exits in ps --exited", || {
        let o = ok(cli(&agent, &["ps", "--exited", "--comm", "psexitsh"]));
        (o.lines().count() == 3).then_some(o)
    });
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("EXIT") && lines[0].contains("RUNTIME"),
        "{out}"
    );
    // Oldest exit first.
    assert_eq!(lines[1].split_whitespace().nth(3), Some("7"), "{out}");
    assert!(lines[1].ends_with("-c exit 7"), "{out}");
    assert_eq!(lines[2].split_whitespace().nth(3), Some("SIGKILL"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(cli(
        &agent,
        &["ps", "--exited", "--json", "--comm", "psexitsh"],
    )))
    .expect("JSON");
    assert_eq!(json[0]["exit_code"], 7);
    assert_eq!(json[1]["signal"], 9);
    assert!(json[0]["runtime"].as_f64().is_some_and(|r| r > 0.0));
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn tree_draws_children_and_exited_ones() {
    let agent = Agent::start();
    let parent = named(&agent, "/bin/sh", "treeparent");
    let kid = named(&agent, "/usr/bin/sleep", "treekid");
    let quick = named(&agent, "/usr/bin/true", "treequick");
    let script = format!(
        "{} 1000 & {}; echo ready; wait",
        kid.display(),
        quick.display()
    );
    // Its own process group, so the guard ends the shell and the sleeper it started.
    use std::os::unix::process::CommandExt as _;
    let mut child = Group(
        Command::new(&parent)
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("ready");
    let ppid = child.0.id();

    let out = eventually(10, "the tree to show both children", || {
        let o = ok(cli(&agent, &["tree", "-A", "-x", &ppid.to_string()]));
        (o.contains("treekid") && o.contains("treequick")).then_some(o)
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("treeparent({ppid})"), "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    // pid order: the sleeper was started first.
    assert!(lines[1].starts_with("|-treekid("), "{out}");
    assert!(
        lines[2].starts_with("`-treequick(") && lines[2].contains("[exited 0 after"),
        "{out}"
    );
    // Without -x only the live child. The shell reaped treequick before it said "ready", but
    // numbers may be up to --max-staleness-ms old, and a snapshot from between its exit and
    // its reaping rightly shows it as a zombie: ask until one after the reaping answers.
    let live = eventually(5, "the reaped child to leave the live tree", || {
        let o = ok(cli(&agent, &["tree", &ppid.to_string()]));
        (!o.contains("treequick")).then_some(o)
    });
    assert!(live.contains("└─treekid("), "{live}");
    // -a adds the arguments.
    assert!(ok(cli(&agent, &["tree", "-a", &ppid.to_string()])).contains("treekid("));
    let bad = cli(&agent, &["tree", "999999999"]);
    assert!(!bad.status.success() && stderr(&bad).contains("no live process"));
}

/// A child leading its own process group; the whole group is killed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        common::kill_group(self.0.id(), 9);
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn events_tail_exec_and_exit() {
    let agent = Agent::start();
    let sh = named(&agent, "/bin/sh", "evtestsh");
    let tail = |json: bool| {
        let mut c = Command::new(BIN);
        c.args(["events", "--comm", "evtestsh", "-t", "exec,exit", "-n", "4"])
            .env("BPFPROC_URL", &agent.addr)
            .stdout(Stdio::piped());
        if json {
            c.arg("--json");
        }
        c.spawn().expect("events")
    };
    for json in [true, false] {
        let mut events = tail(json);
        // The subscription starts some time after spawn: keep producing until two arrive.
        eventually(20, "two events", || {
            let _ = Command::new(&sh).args(["-c", "exit 5"]).status();
            match events.try_wait() {
                Ok(Some(_)) => Some(()),
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            }
        });
        let text = stdout(&events.wait_with_output().expect("output"));
        // The subscription may begin in the middle of one shell's life (its exit without its
        // exec): four events hold at least one whole exec-then-exit pair.
        let lines: Vec<&str> = text.lines().collect();
        if json {
            assert_eq!(lines.len(), 4, "{text}");
            let events: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect();
            let pair = events
                .windows(2)
                .find(|w| w[0]["event"] == "exec" && w[1]["event"] == "exit")
                .unwrap_or_else(|| panic!("no exec then exit: {text}"));
            assert_eq!(pair[0]["cmdline"][2], "exit 5", "{text}");
            assert_eq!(pair[1]["exit_code"], 5, "{text}");
            assert_eq!(pair[0]["pid"], pair[1]["pid"], "{text}");
        } else {
            assert_eq!(lines.len(), 5, "{text}");
            assert!(lines[0].starts_with("TIME") && lines[0].contains("EVENT"));
            let pair = lines[1..]
                .windows(2)
                .find(|w| w[0].contains(" exec ") && w[1].contains(" exit "))
                .unwrap_or_else(|| panic!("no exec then exit: {text}"));
            assert!(pair[0].ends_with("-c exit 5"), "{text}");
            assert!(pair[1].contains("evtestsh exited 5 after"), "{text}");
        }
    }
    let bad = cli(&agent, &["events", "-t", "spawn"]);
    assert!(!bad.status.success() && stderr(&bad).contains("spawn"));
}

#[test]
fn clients_explain_a_missing_agent() {
    // No root needed: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    for cmd in ["ps", "tree", "events"] {
        let o = Command::new(BIN)
            .arg(cmd)
            .env("BPFPROC_URL", format!("127.0.0.1:{port}"))
            .output()
            .expect("run");
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("cannot reach the agent at http://127.0.0.1:"),
            "{cmd}: {e}"
        );
        assert!(e.contains("hint:"), "{cmd}: {e}");
        assert!(!e.contains("backtrace"), "{cmd}: {e}");
    }
    let o = Command::new(BIN)
        .args(["ps", "--agent", "not a url"])
        .output()
        .expect("run");
    assert!(!o.status.success() && stderr(&o).contains("is not an agent address"));
    // top refuses a pipe before taking over a screen.
    let o = Command::new(BIN)
        .args(["top", "--agent", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run");
    assert!(!o.status.success() && stderr(&o).contains("needs a terminal"));
}

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux").args(args).output().expect("tmux");
    stdout(&o)
}

struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

impl Session {
    fn screen(&self) -> String {
        tmux(&["capture-pane", "-p", "-t", &self.0])
    }
    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", self.0.as_str()];
        a.extend(keys);
        tmux(&a);
    }
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        eventually(20, what, || {
            let s = self.screen();
            f(&s).then_some(s)
        })
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn top_in_a_real_terminal() {
    let agent = Agent::start();
    let sleeper = named(&agent, "/usr/bin/sleep", "toptestsleep");
    let quick = named(&agent, "/bin/sh", "topquick");
    let mut target = spawn(Command::new(&sleeper).arg("1000"));
    let pid = target.0.id();
    // The agent's own token: stop and kill go through its control route.
    let token = agent.token_file.clone();

    let name = format!("bpfproc-top-{}", std::process::id());
    let cmd = format!(
        "{BIN} top --agent {} -d 0.3 --token-file {}; echo top-exited-$?; sleep 60",
        agent.addr,
        token.display()
    );
    let out = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "160",
            "-y",
            "50",
            &cmd,
        ])
        .status()
        .expect("tmux");
    assert!(out.success());
    let s = Session(name);

    let screen = s.wait_for("top's header", |t| {
        t.contains("bpfproc top") && t.contains("processes (")
    });
    assert!(screen.contains("sort: %CPU"), "{screen}");
    assert!(
        screen.contains("forks/s") && screen.contains("exits/s"),
        "{screen}"
    );
    assert!(
        screen.contains("losses:") && screen.contains("ringbuf_full 0"),
        "{screen}"
    );

    // Sort keys.
    s.keys(&["m"]);
    s.wait_for("sort by memory", |t| t.contains("sort: RSS"));
    s.keys(&["p"]);
    s.wait_for("sort by pid", |t| t.contains("sort: PID"));

    // Filter down to the sleeper: it is the only row, so it is selected.
    s.keys(&["/", "toptestsleep", "Enter"]);
    let screen = s.wait_for("the filtered table", |t| {
        t.contains("filter: toptestsleep") && t.contains("processes (1)")
    });
    assert!(screen.contains(&format!("{pid} ")), "{screen}");

    // A process that lives a moment shows in the exited pane, with how it ended.
    let screen = eventually(20, "a short-lived process in the exited pane", || {
        let _ = Command::new(&quick).args(["-c", "exit 4"]).status();
        std::thread::sleep(Duration::from_millis(150));
        let t = s.screen();
        // Columns PID, PPID, EXIT…, inside the pane's border.
        t.lines()
            .map(|l| l.replace('│', " "))
            .any(|l| l.contains("topquick -c exit 4") && l.split_whitespace().nth(2) == Some("4"))
            .then_some(t)
    });
    assert!(screen.contains("exited since the last refresh"), "{screen}");

    // stop: confirmed, then done through the control route; the target is stopped.
    s.keys(&["s"]);
    s.wait_for("the stop confirmation", |t| {
        t.contains(&format!("stop {pid} (toptestsleep)? y/n"))
    });
    s.keys(&["y"]);
    s.wait_for("the stop answer", |t| {
        t.contains(&format!("stop {pid} (toptestsleep): done"))
    });
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    assert!(state.contains(") T "), "stopped: {state}");

    // kill: n cancels...
    s.keys(&["k"]);
    s.wait_for("the kill confirmation", |t| {
        t.contains(&format!("kill {pid} (toptestsleep)? y/n"))
    });
    s.keys(&["n"]);
    s.wait_for("the cancellation", |t| {
        t.contains(&format!("kill {pid} cancelled"))
    });
    assert!(target.0.try_wait().expect("wait").is_none());
    // ...y kills, through the control route.
    s.keys(&["k"]);
    s.wait_for("the kill confirmation", |t| t.contains("y/n"));
    s.keys(&["y"]);
    let screen = s.wait_for("the kill answer", |t| {
        t.contains(&format!("kill {pid} (toptestsleep): done"))
    });
    let status = target.0.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "{screen}");

    s.keys(&["q"]);
    s.wait_for("top to quit cleanly", |t| t.contains("top-exited-0"));
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn config_file_sets_the_agent_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("bpfproc-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mnt = dir.join("view");
    let file = dir.join("bpfproc.toml");
    // listen here is overridden by the harness's --listen; exited and the mount are used.
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:1\"\nexited = 2\n\n[[mount]]\ndir = \"{}\"\noptions = \"umask=027\"\n",
            mnt.display()
        ),
    )
    .expect("write");
    let agent = Agent::start_with(&["--config", file.to_str().expect("utf-8")]);
    let mounts = agent.cli(&["mounts"]);
    assert!(
        stdout(&mounts).contains(&format!("{} umask=027", mnt.display())),
        "{}{}",
        stdout(&mounts),
        stderr(&mounts)
    );
    assert!(mnt.join("1/stat").exists());
    for _ in 0..4 {
        let _ = Command::new("/bin/true").status();
    }
    eventually(10, "the exited ring to hold exactly 2", || {
        let v = agent.json("/v1/exited");
        (v.as_array().map(Vec::len) == Some(2)).then_some(())
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_reports_the_line() {
    // No root needed: --check-config loads nothing.
    let dir = std::env::temp_dir().join(format!("bpfproc-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let check = |text: &str| {
        let f = dir.join("c.toml");
        std::fs::write(&f, text).expect("write");
        Command::new(BIN)
            .args(["agent", "--check-config", "--config"])
            .arg(&f)
            .output()
            .expect("run")
    };
    let good = check(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/bpfproc.toml"
        ))
        .expect("the packaged config"),
    );
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(stdout(&good).ends_with(": ok\n"));
    let bad =
        check("exited = 10\n\n[[mount]]\ndir = \"/run/x\"\noptions = \"personality=amiga\"\n");
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("c.toml:5: mount options"),
        "{}",
        stderr(&bad)
    );
    let bad = check("exited = 10\nlisten_address = \"x\"\n");
    assert!(stderr(&bad).contains("line 2") && stderr(&bad).contains("unknown field"));
    let missing = Command::new(BIN)
        .args([
            "agent",
            "--check-config",
            "--config",
            "/nonexistent/bpfproc.toml",
        ])
        .output()
        .expect("run");
    assert!(!missing.status.success() && stderr(&missing).contains("/nonexistent/bpfproc.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `.route("PATH", …)` in http/mod.rs, with its method.
fn router_paths() -> Vec<(String, String)> {
    let src = include_str!("../src/http/mod.rs");
    src.split(".route(\"")
        .skip(1)
        .map(|rest| {
            let path = rest.split('"').next().expect("path").to_string();
            let method = rest
                .split(", ")
                .nth(1)
                .and_then(|m| m.split('(').next())
                .expect("method")
                .to_string();
            (path, method)
        })
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn openapi_lists_every_route() {
    let agent = Agent::start();
    let doc = agent.json("/v1/openapi.json");
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    let mut served = router_paths();
    documented.sort();
    served.sort();
    assert_eq!(documented, served, "OpenAPI paths vs the router's routes");

    // And each documented GET really answers (not the router's fallback 404).
    let me = agent.pid().to_string();
    for (path, _) in documented.iter().filter(|(_, method)| method == "get") {
        if path == "/v1/events" {
            let mut r = agent.sse(path);
            let mut line = String::new();
            // The stream is open; the first bytes are a keep-alive or an event.
            std::io::BufRead::read_line(&mut r, &mut line).expect("SSE");
            continue;
        }
        let p = path
            .replace("{pid}", &me)
            .replace("{tid}", &me)
            .replace("{file}", "stat");
        let (status, body) = agent.get(&p);
        assert_eq!(status, 200, "{p}: {}", String::from_utf8_lossy(&body));
    }

    // A real validator agrees it is OpenAPI.
    let f = agent.dir.join("openapi.json");
    std::fs::write(&f, serde_json::to_vec(&doc).expect("JSON")).expect("write");
    let o = Command::new("python3")
        .args([
            "-c",
            "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&f)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let dir = std::env::temp_dir().join(format!("bpfproc-man-{}", std::process::id()));
    let o = Command::new(BIN)
        .arg("manpage")
        .arg(&dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    for page in [
        "bpfproc.1",
        "bpfproc-ps.1",
        "bpfproc-top.1",
        "bpfproc-agent.1",
    ] {
        assert!(dir.join(page).exists(), "{page}");
    }
    let man = Command::new("man")
        .arg("-l")
        .arg(dir.join("bpfproc-ps.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man");
    let text = stdout(&man);
    assert!(
        text.contains("--exited") && text.contains("bpfproc-ps"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // bash completes the subcommands from the generated script.
    let script = format!(
        "source <({BIN} completions bash); COMP_WORDS=(bpfproc tr); COMP_CWORD=1; \
         COMP_LINE='bpfproc tr'; COMP_POINT=10; _bpfproc bpfproc tr bpfproc; echo \"${{COMPREPLY[@]}}\""
    );
    let o = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert_eq!(stdout(&o).trim(), "tree", "{}", stderr(&o));
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, unshares a mount namespace"]
fn mount_helper_mounts_through_the_agent() {
    let agent = Agent::start();
    let mnt = agent.dir.join("fstab-view");
    std::fs::create_dir_all(&mnt).expect("dir");
    // mount(8) runs /sbin/mount.fuse.bpfproc for fuse.bpfproc; in a private mount namespace a
    // tmpfs over /usr/sbin holds only our helper, so the host's /sbin is left alone.
    let script = format!(
        "mount -t tmpfs none /usr/sbin && ln -s {BIN} /usr/sbin/mount.fuse.bpfproc && \
         mount -t fuse.bpfproc bpfproc {} -o rw,nofail,socket={},umask=077",
        mnt.display(),
        agent.socket.display()
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // The agent mounted it in its own (the host's) namespace, with the view's options only.
    let mounts = stdout(&agent.cli(&["mounts"]));
    assert!(
        mounts.contains(&format!("{} umask=077", mnt.display())),
        "{mounts}"
    );
    let md = std::fs::metadata(mnt.join("1")).expect("pid 1 in the view");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(md.permissions().mode() & 0o077, 0, "umask=077 applied");
    assert!(
        agent
            .cli(&["umount", mnt.to_str().expect("utf-8")])
            .status
            .success()
    );

    // A bad option fails before any mount, naming it.
    use std::os::unix::process::CommandExt as _;
    let o = Command::new(BIN)
        .arg0("mount.fuse.bpfproc")
        .args([
            "bpfproc",
            mnt.to_str().expect("utf-8"),
            "-o",
            "personality=amiga",
        ])
        .env("BPFPROC_SOCKET", &agent.socket)
        .output()
        .expect("helper");
    assert!(
        !o.status.success() && stderr(&o).contains("amiga"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&mnt).join("1").exists());
}

fn packaging(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(path)
}

#[test]
fn kubernetes_manifests_validate() {
    // kubernetes-validate (PyPI) ships the Kubernetes JSON schemas: nothing is downloaded.
    let validate = |f: &Path| {
        Command::new("kubernetes-validate")
            .args(["--strict", "--no-warn"])
            .arg(f)
            .output()
            .expect("kubernetes-validate (cargo xtask setup installs it)")
    };
    let ds = packaging("kubernetes/daemonset.yaml");
    let o = validate(&ds);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    for kind in [
        "namespace/bpfproc",
        "configmap/bpfproc",
        "daemonset/bpfproc",
    ] {
        assert!(
            stdout(&o).contains(&format!("passed for resource {kind}")),
            "{}",
            stdout(&o)
        );
    }
    let o = validate(&packaging("kubernetes/servicemonitor.yaml"));
    assert!(o.status.success() && stdout(&o).contains("passed for resource service/bpfproc"));
    // The validator does catch a misspelt field, so the pass above means something.
    let text = std::fs::read_to_string(&ds).expect("read");
    let dir = std::env::temp_dir().join(format!("bpfproc-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).expect("write");
    assert!(!validate(&bad).status.success());

    // What the schema cannot say: the fields the agent needs on a node.
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let pod = &ds["spec"]["template"];
    assert_eq!(pod["spec"]["hostPID"], true);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let c = &pod["spec"]["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("caps")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for cap in ["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"] {
        assert!(caps.contains(&cap), "{cap} missing");
    }
    assert!(text.contains("path: /dev/fuse"));
    // Kubernetes refuses Bidirectional propagation in an unprivileged container.
    let privileged = c["securityContext"]["privileged"] == true;
    assert!(privileged || !text.contains("\n              mountPropagation: Bidirectional"));
    // The ConfigMap's agent config passes the agent's own check.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let toml = dir.join("bpfproc.toml");
    std::fs::write(&toml, cm["data"]["bpfproc.toml"].as_str().expect("toml")).expect("write");
    let o = Command::new(BIN)
        .args(["agent", "--check-config", "--config"])
        .arg(&toml)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_verifies() {
    // systemd-analyze checks every directive; the binary path is pointed at the one built here
    // (it must exist and be executable), man pages are not looked up.
    let dir = std::env::temp_dir().join(format!("bpfproc-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let unit = std::fs::read_to_string(packaging("systemd/bpfproc.service")).expect("unit");
    let f = dir.join("bpfproc.service");
    std::fs::write(&f, unit.replace("/usr/bin/bpfproc", BIN)).expect("write");
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&f)
        .output()
        .expect("systemd-analyze");
    let all = stdout(&o) + &stderr(&o);
    assert!(o.status.success(), "{all}");
    assert!(!all.contains("Unknown"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
