//! The views used the way people use them: control files written with `echo CMD > ctl` (which
//! opens with O_TRUNC), Python's `open(…, "w")`, `tee`, several writes per open; Plan 9 `wait`
//! read by a parent whose child is still a zombie; and `exe` as the kernel resolves it, for a
//! program started by a relative path or through a symlinked directory. Needs root (CI runs
//! as root): `#[ignore]`d otherwise.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use common::{Agent, eventually, proc_stat, view::mount_view};

/// A `sleep 60`, once the view lists it.
fn sleeper(view: &Path) -> Child {
    let child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(5, "sleeper in the view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });
    child
}

fn state(pid: u32) -> String {
    proc_stat(pid)
        .map(|(_, f)| f[0].clone())
        .unwrap_or_default()
}

/// Runs `script` with sh and asserts it succeeded, with its stderr in the message.
fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stopped_then_started(pid: u32, stop: impl Fn(), start: impl Fn()) {
    stop();
    eventually(5, "stopped", || (state(pid) == "T").then_some(()));
    start();
    eventually(5, "running again", || (state(pid) != "T").then_some(()));
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn echo_into_ctl_works_in_every_personality_that_has_one() {
    let (agent, linux) = Agent::start_with_view(&[]);
    let views = [
        ("linux", linux),
        ("plan9", mount_view(&agent, "plan9", "personality=plan9")),
        (
            "freebsd",
            mount_view(&agent, "freebsd", "personality=freebsd"),
        ),
        ("netbsd", mount_view(&agent, "netbsd", "personality=netbsd")),
        ("qnx", mount_view(&agent, "qnx", "personality=qnx")),
    ];
    for (name, view) in &views {
        let mut child = sleeper(view);
        let pid = child.id();
        let ctl = view.join(pid.to_string()).join("ctl");
        let ctl = ctl.to_str().unwrap();
        if *name != "netbsd" {
            // The shell's redirection: open(O_WRONLY|O_CREAT|O_TRUNC), then one write.
            stopped_then_started(
                pid,
                || sh(&format!("echo stop > {ctl}")),
                || sh(&format!("printf 'start\\n' > {ctl}")),
            );
            // tee, and Python's open(…, "w") (C's fopen("w") opens the same way).
            stopped_then_started(
                pid,
                || sh(&format!("echo stop | tee {ctl} >/dev/null")),
                || {
                    python(
                        "open(__import__('sys').argv[1], 'w').write('start')",
                        &[ctl],
                    );
                },
            );
            // Several writes on one open, each flushed by its newline.
            let out = python(
                "import sys, time\n\
                 f = open(sys.argv[1], 'w', buffering=1)\n\
                 f.write('stop\\n')\n\
                 time.sleep(0.3)\n\
                 print(open('/proc/' + sys.argv[2] + '/stat').read().split(') ')[1][0])\n\
                 f.write('start\\n')\n\
                 f.close()",
                &[ctl, &pid.to_string()],
            );
            assert_eq!(out.trim(), "T", "{name}: first of two writes on one open");
            eventually(5, "started by the second write", || {
                (state(pid) != "T").then_some(())
            });
        }
        // A malformed command through the shell is still EINVAL and the target untouched
        // (bash names the errno; dash's echo says "I/O error" whatever it was).
        let out = Command::new("bash")
            .args(["-c", &format!("echo frobnicate > {ctl}")])
            .output()
            .unwrap();
        if *name == "netbsd" {
            // NetBSD's procfs has no ctl file: the shell's O_CREAT gets EACCES.
            assert!(!out.status.success());
        } else {
            assert!(!out.status.success(), "{name}: a bad command was taken");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Invalid argument"), "{name}: {err}");
            assert_eq!(state(pid), "S", "{name}: target untouched");
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    // Plan 9 note: `echo kill > note`.
    let plan9 = &views[1].1;
    let mut child = sleeper(plan9);
    let note = plan9.join(child.id().to_string()).join("note");
    sh(&format!("echo kill > {}", note.display()));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));

    // QNX opens `ctl` and `as` with "wb" (O_TRUNC): both opens succeed, and ctl takes a
    // command written that way.
    let qnx = &views[4].1;
    let mut child = sleeper(qnx);
    let pid = child.id();
    let dir = qnx.join(pid.to_string());
    stopped_then_started(
        pid,
        || {
            python(
                "import sys\nwith open(sys.argv[1], 'wb') as f: f.write(b'stop')",
                &[dir.join("ctl").to_str().unwrap()],
            );
        },
        || sh(&format!("echo start > {}", dir.join("ctl").display())),
    );
    python(
        "import sys\nopen(sys.argv[1], 'wb').close()",
        &[dir.join("as").to_str().unwrap()],
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn truncating_a_file_is_a_no_op_for_those_who_may_write_it_and_eacces_for_others() {
    let (_agent, view) = Agent::start_with_view(&[]);
    let mut child = sleeper(&view);
    let dir = view.join(child.id().to_string());
    // ctl as root: truncate(2) succeeds and changes nothing.
    let ctl = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("ctl"))
        .unwrap();
    ctl.set_len(0).unwrap();
    // A read-only file for someone who may not write it: EACCES, as procfs gives.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "truncate",
        ])
        .args(["-s", "0"])
        .arg(dir.join("stat"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Modes and owners stay the process's.
    let err = std::fs::set_permissions(
        dir.join("stat"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(state(child.id()), "S");
    let _ = child.kill();
    let _ = child.wait();
}

/// The parent forks a child that exits 3, waits until the agent shows it as a zombie, and
/// reads its own `wait` file; then reaps it and reads again.
const ZOMBIE_WAIT: &str = r#"
import os, sys, time, json, urllib.request
view, agent = sys.argv[1], sys.argv[2]
c = os.fork()
if c == 0:
    os._exit(3)
for _ in range(500):
    p = json.load(urllib.request.urlopen(f"http://{agent}/v1/processes/{c}"))
    if p["state"] == "Z":
        break
    time.sleep(0.01)
me = os.getpid()
fd = os.open(f"{view}/{me}/wait", os.O_RDONLY)
first = os.read(fd, 512).decode()
# The same handle, nothing more to come: the end of the file, so read() to EOF works.
rest = os.read(fd, 512).decode()
os.close(fd)
still_zombie = open(f"/proc/{c}/stat").read().split(") ")[1][0]
os.waitpid(c, 0)
try:
    again = open(f"{view}/{me}/wait").read()
except OSError as e:
    again = f"errno {e.errno}"
print(json.dumps({"child": c, "first": first, "rest": rest, "zombie": still_zombie, "again": again}))
"#;

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn plan9_wait_reports_a_zombie_child_once_and_not_after_waitpid() {
    let agent = Agent::start();
    let view = mount_view(&agent, "plan9", "personality=plan9");
    let out = python(ZOMBIE_WAIT, &[view.to_str().unwrap(), &agent.addr]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let child = v["child"].as_u64().unwrap();
    assert_eq!(v["zombie"], "Z", "the read came before the reap");
    let first = v["first"].as_str().unwrap();
    assert!(first.starts_with(&format!("{child} ")), "{first:?}");
    assert!(first.trim_end().ends_with(": exit 3'"), "{first:?}");
    assert_eq!(v["rest"], "", "one record, then the end of the file");
    assert_eq!(
        v["again"],
        format!("errno {}", libc::ECHILD),
        "after waitpid the child is not reported again, and no children are left"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn exe_is_the_path_the_kernel_resolves() {
    let agent = Agent::start();
    let qnx = mount_view(&agent, "qnx", "personality=qnx");
    let dir = agent.dir.join("exe");
    let real = dir.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::copy("/bin/sleep", real.join("mysleep")).unwrap();
    let link = dir.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let gone = dir.join("gone");
    std::fs::copy("/bin/sleep", &gone).unwrap();
    let through_link = link.join("mysleep");
    let starts: [(&str, &Path); 4] = [
        ("./mysleep", &real),
        (through_link.to_str().unwrap(), Path::new("/")),
        ("/bin/sleep", Path::new("/")),
        (gone.to_str().unwrap(), Path::new("/")),
    ];
    let mut children = Vec::new();
    for (program, cwd) in starts {
        let child = Command::new(program)
            .arg("60")
            .current_dir(cwd)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        eventually(5, "exec'd", || {
            (std::fs::read_link(format!("/proc/{pid}/exe")).ok()?
                != std::fs::read_link("/proc/self/exe").ok()?)
            .then_some(())
        });
        children.push((program, child));
    }
    std::fs::remove_file(&gone).unwrap();
    for (program, child) in &mut children {
        let pid = child.id();
        let kernel = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let kernel = kernel.to_str().unwrap().to_owned();
        assert!(kernel.starts_with('/'));
        eventually(5, "the JSON's exe is the kernel's", || {
            let p = agent.json(&format!("/v1/processes/{pid}"));
            (p["exe"] == kernel.as_str()).then_some(())
        });
        let exefile = std::fs::read(qnx.join(pid.to_string()).join("exefile")).unwrap();
        assert_eq!(String::from_utf8(exefile).unwrap(), kernel, "{program}");
        let _ = child.kill();
        let _ = child.wait();
    }
    // The exit records keep it: the relative start, the symlinked directory and /bin (a
    // symlink to /usr/bin here, or not) each give the real location.
    let exited = agent.json("/v1/exited");
    let exe_of = |pid: u32| {
        exited
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .map(|p| p["exe"].as_str().unwrap_or_default().to_owned())
    };
    let want = [
        real.join("mysleep").display().to_string(),
        real.join("mysleep").display().to_string(),
        std::fs::canonicalize("/bin/sleep")
            .unwrap()
            .display()
            .to_string(),
    ];
    for ((program, child), want) in children.iter().zip(want) {
        assert_eq!(
            exe_of(child.id()).as_deref(),
            Some(want.as_str()),
            "{program}"
        );
    }
}
