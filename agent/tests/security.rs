//! Least privilege, against the real kernel: a non-root caller gets from the view exactly
//! what the kernel's own /proc gives it, the agent keeps only its documented capabilities, and
//! the control routes answer only loopback callers. Needs root (CI runs as root).

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Agent, eventually, proc_stat};

/// Tries each access to `/PID/…` under `base` and prints `name result` lines, the result
/// being `ok` or the errno's name. Run as the unprivileged caller through setpriv.
const PROBE: &str = r#"
import errno, os, sys
base, pid, view = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
d = os.path.join(base, pid)
def res(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def read(name):
    with open(os.path.join(d, name), "rb") as f:
        f.read()
def read_at0(name):
    fd = os.open(os.path.join(d, name), os.O_RDONLY)
    try:
        os.pread(fd, 8, 0)
    finally:
        os.close(fd)
def write(name, data):
    fd = os.open(os.path.join(d, name), os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
out = {}
for name in ["environ", "io", "maps", "cmdline", "status", "stat", "cgroup", "limits"]:
    out[name] = res(lambda: read(name))
for name in ["exe", "cwd", "root"]:
    out["link " + name] = res(lambda: os.readlink(os.path.join(d, name)))
out["list fd"] = res(lambda: os.listdir(os.path.join(d, "fd")))
out["mem"] = res(lambda: read_at0("mem"))
if view:
    out["regs"] = res(lambda: read_at0("regs"))
    out["ctl cont"] = res(lambda: write("ctl", b"cont"))
for k, v in out.items():
    print(k, v)
"#;

const CALLER: [&str; 3] = ["--reuid=65533", "--regid=65533", "--clear-groups"];

fn probe(base: &Path, pid: u32, view: bool) -> BTreeMap<String, String> {
    let out = Command::new("setpriv")
        .args(CALLER)
        // The system's python: a per-user one (pyenv) is not reachable by the caller.
        .args(["/usr/bin/python3", "-c", PROBE])
        .arg(base)
        .arg(pid.to_string())
        .arg(if view { "1" } else { "0" })
        .output()
        .expect("setpriv python3");
    assert!(out.status.success(), "probe failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn")
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn a_non_root_caller_gets_from_the_view_what_procfs_gives_it() {
    let (agent, view) = Agent::start_with_view(&[]);
    // The caller must be able to reach the mount point.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |uid: &str| {
        vec![
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_string(),
        ]
    };
    let sleeper = |prefix: Vec<String>, extra: &[&str]| {
        let mut args: Vec<String> = prefix;
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Reaped(spawn(&refs))
    };
    // Another user's process, the caller's own, the caller's own that made itself
    // non-dumpable (as ssh-agent and gpg-agent do, so that their memory and environment are
    // root's), and root's.
    let targets = [
        ("other user", sleeper(as_user("65534"), &["sleep", "60"])),
        ("own", sleeper(as_user("65533"), &["sleep", "60"])),
        (
            "own, not dumpable",
            sleeper(
                as_user("65533"),
                &[
                    "/usr/bin/python3",
                    "-c",
                    "import ctypes, time; ctypes.CDLL(None).prctl(4, 0); time.sleep(60)",
                ],
            ),
        ),
        ("root", sleeper(Vec::new(), &["sleep", "60"])),
    ];
    for (what, child) in &targets {
        let pid = child.0.id();
        eventually(5, "the target to exec", || {
            let (comm, _) = proc_stat(pid)?;
            // The python target is ready once its environ belongs to root (not dumpable).
            let ready = comm == "sleep"
                || std::fs::metadata(format!("/proc/{pid}/environ"))
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
            ready.then_some(())
        });
        eventually(5, "the target in the view", || {
            std::fs::metadata(view.join(pid.to_string())).ok()
        });
        std::thread::sleep(Duration::from_millis(150));
        let kernel = probe(Path::new("/proc"), pid, false);
        let ours = probe(&view, pid, true);
        for (name, k) in &kernel {
            assert_eq!(
                ours.get(name),
                Some(k),
                "{what} process, {name}: the kernel says {k}, the view {:?}\nkernel: {kernel:?}\nview: {ours:?}",
                ours.get(name)
            );
        }
        // The control files, which the kernel's /proc does not have: only the caller's own
        // dumpable process may be controlled (regs needs it stopped: EBUSY, not EACCES).
        let (regs, ctl) = if *what == "own" {
            ("EBUSY", "ok")
        } else {
            ("EACCES", "EACCES")
        };
        assert_eq!(ours["regs"], regs, "{what}: {ours:?}");
        assert_eq!(ours["ctl cont"], ctl, "{what}: {ours:?}");
    }
}

fn caps(pid: u32, tid: u32) -> BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?))
        })
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn the_agent_keeps_only_the_capabilities_it_documents() {
    let agent = Agent::start();
    // CAP_DAC_READ_SEARCH, CAP_KILL, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_SYS_NICE, CAP_PERFMON,
    // CAP_BPF (docs/security.md says why each).
    let keep: u64 = (1 << 2) | (1 << 5) | (1 << 19) | (1 << 21) | (1 << 23) | (1 << 38) | (1 << 39);
    // Permitted only, raised by no long-lived thread, for a throwaway thread that becomes a
    // writer of the kernel's files: CAP_DAC_OVERRIDE, CAP_SETGID, CAP_SETUID,
    // CAP_SYS_RESOURCE (as far as the bounding set the agent started with has them).
    let ours = caps(std::process::id(), std::process::id());
    let held = keep | ((1 << 1) | (1 << 6) | (1 << 7) | (1 << 24)) & ours["CapBnd"];
    // Exercise what needs them after start: a mount on demand and a control command.
    let dir = agent.dir.join("v");
    std::fs::create_dir_all(&dir).unwrap();
    let out = agent.cli(&["mount", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut child = spawn(&["sleep", "30"]);
    eventually(5, "exec", || {
        proc_stat(child.id())
            .filter(|(c, _)| c == "sleep")
            .map(drop)
    });
    let (status, body) = agent.ctl(child.id(), "stop");
    assert_eq!(status, 200, "{body}");
    // A write through to the kernel's file, made as a user: its thread is gone after.
    let out = common::sh_as_nobody(&format!(
        "echo 5 > {}/{}/oom_score_adj",
        dir.display(),
        child.id()
    ));
    assert!(
        !out.status.success(),
        "root's process, written as nobody: {out:?}"
    );
    std::fs::write(dir.join(format!("{}/oom_score_adj", child.id())), "5").unwrap();
    agent.ctl(child.id(), "kill");
    child.wait().unwrap();
    let pid = agent.pid();
    let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(tids.len() > 2, "the agent runs several threads: {tids:?}");
    for tid in tids {
        let c = caps(pid, tid);
        if c.is_empty() {
            continue; // the thread ended meanwhile
        }
        assert_eq!(c["CapEff"], keep, "thread {tid}: {c:x?}");
        assert_eq!(c["CapPrm"], held, "thread {tid}: {c:x?}");
        assert_eq!(c["CapBnd"], held, "thread {tid}: {c:x?}");
        assert_eq!(c["CapInh"], 0, "thread {tid}: {c:x?}");
        assert_eq!(c["CapAmb"], 0, "thread {tid}: {c:x?}");
        let uids = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
        if let Some(uids) = uids {
            assert_eq!(uids, "0 0 0 0", "thread {tid}");
        }
    }
    // The keeper that holds the views' connections across restarts has no capability at all.
    let keeper_socket = format!("{}.keeper", agent.dir.join("bpfproc.sock").display());
    let keeper = eventually(5, "the keeper", || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&keeper_socket)
                .then_some(pid)
        })
    });
    let c = caps(keeper, keeper);
    assert_eq!((c["CapEff"], c["CapPrm"]), (0, 0), "the keeper: {c:x?}");
    let status = std::fs::read_to_string(format!("/proc/{keeper}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let out = agent.cli(&["umount", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// The agent in a network namespace of its own, listening on every address, with a second
/// address that is not a loopback one (192.0.2.1, TEST-NET-1, put on `lo`: a request to it
/// comes from it). Requests are made from inside that namespace with curl, so no traffic
/// leaves the namespace.
#[test]
#[ignore = "needs root: loads BPF programs in a network namespace"]
fn control_is_served_to_loopback_callers_only() {
    let dir = std::env::temp_dir().join(format!("bpfproc-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let script = format!(
        "ip link set lo up && ip addr add 192.0.2.1/32 dev lo && exec {} agent --listen 0.0.0.0:9464 --socket {} --token-file {}",
        env!("CARGO_BIN_EXE_bpfproc"),
        dir.join("sock").display(),
        token_file.display()
    );
    let mut agent = Reaped(
        Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare"),
    );
    let ns = format!("--net=/proc/{}/ns/net", agent.0.id());
    let curl = |args: &[&str]| -> (String, String) {
        let out = Command::new("nsenter")
            .arg(&ns)
            .args([
                "curl",
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "20",
            ])
            .args(args)
            .output()
            .expect("nsenter curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    eventually(60, "the agent in its namespace", || {
        (curl(&["http://127.0.0.1:9464/healthz"]).0 == "200").then_some(())
    });
    let token = std::fs::read_to_string(&token_file).unwrap();
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (code, _) = curl(&["http://192.0.2.1:9464/metrics"]);
    assert_eq!(
        code, "200",
        "read-only routes are open on the chosen address"
    );
    let mut child = spawn(&["sleep", "30"]);
    let ctl = |host: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            "--data-binary",
            "cont",
            &format!("http://{host}:9464/v1/processes/{}/ctl", child.id()),
        ])
    };
    let (code, body) = ctl("192.0.2.1");
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("loopback"), "{body}");
    let (code, body) = ctl("127.0.0.1");
    assert_eq!(code, "200", "{body}");
    let (code, _) = curl(&[
        "-H",
        &bearer,
        &format!("http://192.0.2.1:9464/v1/processes/{}/maps", child.id()),
    ]);
    assert_eq!(code, "200", "maps with the token");
    let (code, _) = curl(&[&format!(
        "http://127.0.0.1:9464/v1/processes/{}/maps",
        child.id()
    )]);
    assert_eq!(code, "401", "maps without the token");
    child.kill().unwrap();
    child.wait().unwrap();
    common::kill(agent.0.id(), libc::SIGTERM);
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
