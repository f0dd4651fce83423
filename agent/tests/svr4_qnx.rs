//! The SVR4 (RISC/os PROC(4)) and QNX (procnto) personalities through real mounts: each
//! reference file and control request against real processes. The PFC* requests go through
//! `tests/c/prfcntl_live.c`, a C program built on `include/prfcntl.h`, as a debugger would use
//! them. Needs root (CI runs as root) and a C compiler (`cargo xtask setup` installs gcc).

mod common;

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use common::{Agent, eventually, proc_stat};

/// An agent with a view of `personality` mounted (with `extra` options) at `DIR/<name>`.
fn mounted(personality: &str, extra: &str) -> (Agent, PathBuf) {
    let agent = Agent::start();
    let view = agent.dir.join(personality);
    std::fs::create_dir_all(&view).unwrap();
    let opts = format!("personality={personality}{extra}");
    let out = agent.cli(&["mount", "-o", &opts, view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    (agent, view)
}

/// Builds `tests/c/prfcntl_live.c` against `include/prfcntl.h`.
fn prfcntl_live(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = dir.join("prfcntl_live");
    let cc = Command::new("cc")
        .args(["-Wall", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join("tests/c/prfcntl_live.c"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("a C compiler (cc): cargo xtask setup installs gcc");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    // The non-root runs must be able to execute it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// Runs the C program on `file` (as `user` if given, through setpriv) and returns its output.
fn pfc(prog: &Path, user: Option<u32>, file: &Path, args: &[&str]) -> String {
    let mut cmd = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(prog);
            c
        }
        None => Command::new(prog),
    };
    let out = cmd.arg(file).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `pid` runs `comm` and is in the view at `name`.
fn settle(view: &Path, pid: u32, comm: &str, name: &str) {
    eventually(5, "exec", || {
        proc_stat(pid).filter(|(c, _)| c == comm).map(drop)
    });
    eventually(5, "in the view", || std::fs::metadata(view.join(name)).ok());
}

fn state(pid: u32) -> String {
    proc_stat(pid)
        .map(|(_, f)| f[0].clone())
        .unwrap_or_default()
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(&format!("{key}=")))
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn svr4_root_is_one_five_digit_file_per_process() {
    let (_agent, view) = mounted("svr4", "");
    let mut child = spawn(&["sleep", "60"]);
    let pid = child.id();
    let name = format!("{pid:05}");
    settle(&view, pid, "sleep", &name);

    // The listing: process files only, five digits at least.
    let names: Vec<String> = std::fs::read_dir(&view)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&name), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.len() >= 5 && n.bytes().all(|b| b.is_ascii_digit())),
        "{names:?}"
    );
    let md = std::fs::metadata(view.join(&name)).unwrap();
    assert!(md.is_file());
    // Leading zeros are optional on lookup: one file.
    for alias in [
        pid.to_string(),
        format!("0{pid}"),
        format!("00{pid}"),
        format!("0000000{pid}"),
    ] {
        assert_eq!(
            std::fs::metadata(view.join(&alias)).unwrap().ino(),
            md.ino(),
            "{alias}"
        );
    }
    // Size: the virtual memory in use (VmSize); owner: the effective ids; mode 0600.
    // (The comm `settle` waits for is set midway through the exec: until it ends, both the
    // kernel's VmSize and the table's can be the half-built address space's.)
    let vm_kb = || -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    eventually(5, "size = VmSize", || {
        let size = std::fs::metadata(view.join(&name)).ok()?.len();
        (size == vm_kb()? * 1024).then_some(())
    });
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 0, 0o600));
    // Creating or removing entries fails.
    assert_eq!(
        std::fs::File::create(view.join("99999"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    assert_eq!(
        std::fs::remove_file(view.join(&name))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        std::fs::metadata(view.join("4000000"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );

    // read/lseek at a virtual address: the executable's ELF header where it is mapped.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = u64::from_str_radix(maps.split('-').next().unwrap(), 16).unwrap();
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(view.join(&name)).unwrap();
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, base).unwrap();
    assert_eq!(&magic, b"\x7fELF");

    child.kill().unwrap();
    child.wait().unwrap();
    eventually(5, "ENOENT once gone", || {
        (std::fs::metadata(view.join(&name))
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOENT))
        .then_some(())
    });
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn svr4_pfc_ioctls_through_the_mount_with_prfcntl_h() {
    let (agent, view) = mounted("svr4", "");
    let prog = prfcntl_live(&agent.dir);
    let mut child = spawn(&["sleep", "60"]);
    let pid = child.id();
    settle(&view, pid, "sleep", &pid.to_string());
    // Looked up with one leading zero, as the manual allows.
    let file = view.join(format!("0{pid}"));
    let run = |args: &[&str]| pfc(&prog, None, &file, args);

    // GETPR: the process record. (Its numbers are at most the staleness bound old: right
    // after the exec the process may still show as running, its argv not yet read.)
    let pr = eventually(5, "asleep", || {
        let pr = run(&["getpr"]);
        (field(&pr, "sname") == Some("S") && field(&pr, "psargs") == Some("sleep 60")).then_some(pr)
    });
    assert_eq!(field(&pr, "pid"), Some(pid.to_string().as_str()), "{pr}");
    assert_eq!(
        field(&pr, "ppid"),
        Some(std::process::id().to_string().as_str())
    );
    assert_eq!(field(&pr, "fname"), Some("sleep"));
    assert_eq!(field(&pr, "psargs"), Some("sleep 60"));
    assert_eq!(
        (field(&pr, "sname"), field(&pr, "state")),
        (Some("S"), Some("1"))
    );
    assert_eq!(
        (field(&pr, "nice"), field(&pr, "euid"), field(&pr, "clname")),
        (Some("20"), Some("0"), Some("TS"))
    );

    // Malformed requests: refused, the process untouched.
    assert_eq!(run(&["bogus"]).trim(), "errno=ENOTTY");
    assert_eq!(run(&["kill", "0"]).trim(), "errno=EINVAL");
    assert_eq!(run(&["kill", "65"]).trim(), "errno=EINVAL");
    assert_eq!(run(&["nice", "40"]).trim(), "errno=EINVAL");
    assert_eq!(run(&["nice", "-1"]).trim(), "errno=EINVAL");
    assert_eq!(state(pid), "S");

    // OPENT: the text file, opened from the path it returns; also for an address in it.
    let text = run(&["opent"]);
    assert_eq!(field(&text, "elf"), Some("1"), "{text}");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(field(&text, "path"), exe.to_str());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = maps.split('-').next().unwrap();
    let at = format!("{:#x}", u64::from_str_radix(base, 16).unwrap() + 16);
    assert_eq!(field(&run(&["opent", &at]), "path"), exe.to_str());
    assert_eq!(run(&["opent", "0x10"]).trim(), "errno=ENOENT");
    assert_eq!(run(&["exclu"]).trim(), "ok=1");
    assert_eq!(run(&["exclu", "0x10"]).trim(), "errno=ENOENT");

    // STOP returns once stopped; WSTOP on a stopped process returns at once and leaves
    // the argument alone; registers while stopped; RUN.
    assert_eq!(run(&["stop"]).trim(), "status=-1");
    assert_eq!(state(pid), "T");
    assert_eq!(run(&["wstop"]).trim(), "status=-1");
    assert_eq!(run(&["wstop0"]).trim(), "ok=1");
    let regs = run(&["getregs"]);
    let pc = field(&regs, "pc").unwrap_or_else(|| panic!("{regs}"));
    assert_ne!(pc, "0");
    assert_eq!(field(&run(&["putregs"]), "pc"), Some(pc));
    assert_eq!(run(&["run"]).trim(), "ok=1");
    eventually(5, "running again", || (state(pid) == "S").then_some(()));
    assert_eq!(run(&["run"]).trim(), "ok=1", "RUN on a running process");
    assert_eq!(
        run(&["getregs"]).trim(),
        "errno=EBUSY",
        "registers need a stop"
    );

    // WSTOP interrupted by a signal to the caller: EINTR.
    assert_eq!(run(&["wstop-alarm"]).trim(), "errno=EINTR");

    // SMASK: SIGUSR1 traced, so it stops the process instead of killing it; CSIG drops it,
    // RUN continues without it; SMASK 0 ends the tracing.
    let usr1 = 1u64 << (libc::SIGUSR1 - 1);
    assert_eq!(run(&["gmask"]).trim(), "mask=0");
    assert_eq!(run(&["smask", &usr1.to_string()]).trim(), "ok=1");
    assert_eq!(run(&["gmask"]).trim(), format!("mask={usr1:#x}"));
    assert_eq!(run(&["kill", &libc::SIGUSR1.to_string()]).trim(), "ok=1");
    assert_eq!(run(&["wstop"]).trim(), "status=-1");
    assert_eq!(state(pid), "t", "stopped on the traced signal");
    assert_eq!(run(&["csig"]).trim(), "ok=1");
    assert_eq!(run(&["run"]).trim(), "ok=1");
    assert_eq!(run(&["smask", "0"]).trim(), "ok=1");
    eventually(5, "running, untraced", || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        (state(pid) == "S" && status.contains("TracerPid:\t0\n")).then_some(())
    });

    // NICE as root: either way, on SVR4's 0..39 scale.
    assert_eq!(run(&["nice", "25"]).trim(), "ok=1");
    assert_eq!(proc_stat(pid).unwrap().1[16], "5");
    assert_eq!(run(&["nice", "10"]).trim(), "ok=1");
    assert_eq!(proc_stat(pid).unwrap().1[16], "-10");

    // KILL, then WSTOP gives the exit (wait) status; a zero argument cannot take it.
    assert_eq!(run(&["kill", &libc::SIGTERM.to_string()]).trim(), "ok=1");
    eventually(5, "a zombie", || (state(pid) == "Z").then_some(()));
    assert_eq!(run(&["wstop"]).trim(), format!("status={}", libc::SIGTERM));
    assert_eq!(run(&["wstop0"]).trim(), "errno=EFAULT");
    child.wait().unwrap();
    eventually(5, "ENOENT once reaped", || {
        (pfc(&prog, None, &view.join(pid.to_string()), &["getpr"]).trim() == "errno=ENOENT")
            .then_some(())
    });
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, ptraces"]
fn svr4_sexec_and_sstep() {
    let (agent, view) = mounted("svr4", "");
    let prog = prfcntl_live(&agent.dir);

    // SEXEC: the next exec stops before the new program's first instruction.
    let mut sh = spawn(&["sh", "-c", "read line; exec sleep 30"]);
    let pid = sh.id();
    settle(&view, pid, "sh", &pid.to_string());
    let file = view.join(pid.to_string());
    assert_eq!(pfc(&prog, None, &file, &["sexec"]).trim(), "ok=1");
    use std::io::Write as _;
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(pfc(&prog, None, &file, &["wstop"]).trim(), "status=-1");
    let (comm, f) = proc_stat(pid).unwrap();
    assert_eq!((comm.as_str(), f[0].as_str()), ("sleep", "T"));
    assert_eq!(pfc(&prog, None, &file, &["rexec"]).trim(), "ok=1");
    assert_eq!(pfc(&prog, None, &file, &["run"]).trim(), "ok=1");
    eventually(5, "running", || (state(pid) == "S").then_some(()));
    sh.kill().unwrap();
    sh.wait().unwrap();

    // SSTEP on a stopped busy loop moves the program counter; RUN lets it go untraced.
    let mut busy = spawn(&["sh", "-c", "while :; do :; done"]);
    let pid = busy.id();
    settle(&view, pid, "sh", &pid.to_string());
    let file = view.join(pid.to_string());
    assert_eq!(
        pfc(&prog, None, &file, &["sstep"]).trim(),
        "errno=EBUSY",
        "a running process is not stepped"
    );
    assert_eq!(pfc(&prog, None, &file, &["stop"]).trim(), "status=-1");
    let pc = |out: String| field(&out, "pc").map(str::to_owned);
    let before = pc(pfc(&prog, None, &file, &["getregs"])).unwrap();
    assert_eq!(pfc(&prog, None, &file, &["sstep"]).trim(), "ok=1");
    assert_ne!(pc(pfc(&prog, None, &file, &["getregs"])).unwrap(), before);
    assert_eq!(pfc(&prog, None, &file, &["run"]).trim(), "ok=1");
    eventually(5, "running, untraced", || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        (state(pid) == "R" && status.contains("TracerPid:\t0\n")).then_some(())
    });
    busy.kill().unwrap();
    busy.wait().unwrap();
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn svr4_nice_as_non_root_follows_the_manual() {
    let (agent, view) = mounted("svr4", "");
    let prog = prfcntl_live(&agent.dir);
    let nobody = 65534;
    let mut child = common::sleep_as_nobody(60);
    let pid = child.id();
    settle(&view, pid, "sleep", &pid.to_string());
    let file = view.join(pid.to_string());
    eventually(5, "owned by nobody", || {
        (std::fs::metadata(&file).ok()?.uid() == nobody).then_some(())
    });
    let as_nobody = |args: &[&str]| pfc(&prog, Some(nobody), &file, args);
    assert_eq!(field(&as_nobody(&["getpr"]), "euid"), Some("65534"));
    // Raising the nice value (lowering the priority) is anyone's right...
    assert_eq!(as_nobody(&["nice", "30"]).trim(), "ok=1");
    assert_eq!(proc_stat(pid).unwrap().1[16], "10");
    // ...lowering it again is root's, below 0 not even root's.
    assert_eq!(as_nobody(&["nice", "25"]).trim(), "errno=EPERM");
    assert_eq!(as_nobody(&["nice", "0"]).trim(), "errno=EPERM");
    assert_eq!(as_nobody(&["nice", "-1"]).trim(), "errno=EINVAL");
    assert_eq!(proc_stat(pid).unwrap().1[16], "10", "untouched");
    // Another user's process file is closed to it (0600, owned by the effective uid).
    let mut root_child = spawn(&["sleep", "60"]);
    let root_pid = root_child.id();
    settle(&view, root_pid, "sleep", &root_pid.to_string());
    assert_eq!(
        pfc(
            &prog,
            Some(nobody),
            &view.join(root_pid.to_string()),
            &["kill", "9"]
        )
        .trim(),
        "errno=EACCES"
    );
    assert_eq!(state(root_pid), "S");
    for c in [&mut child, &mut root_child] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

// ---- QNX ----

// The devctl requests (view::qnx): _IO('P', 1..3), _IOW('P', 4, int), _IOR('P', 5, regs).
const DCMD_PROC_STOP: u32 = 0x5001;
const DCMD_PROC_RUN: u32 = 0x5003;
const DCMD_PROC_SIGNAL: u32 = 0x4004_5004;
const DCMD_PROC_GETGREG: u32 = 0x8000_5005 | ((size_of::<libc::user_regs_struct>() as u32) << 16);
/// A devctl outside the subset (DCMD_PROC_MAPINFO's place).
const DCMD_PROC_OTHER: u32 = 0x8000_5063 | (8 << 16);

fn ioctl(f: &std::fs::File, cmd: u32, arg: *mut libc::c_void) -> Result<(), i32> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `arg` points at a buffer of the size `cmd` encodes (or is unused).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn open_rw(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// Whether a process of `uid` can open `path` with `sh`'s `exec 3<>` (read-write) or `3<`.
fn sh_open(uid: Option<u32>, path: &Path, redirect: &str) -> String {
    let script = format!("exec 3{redirect} {} && echo opened", path.display());
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "sh",
            ]);
            c
        }
        None => Command::new("sh"),
    };
    let out = cmd.args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn qnx_personality_serves_as_ctl_cmdline_exefile() {
    let (_agent, view) = mounted("qnx", "");
    let mut child = spawn(&["sleep", "60"]);
    let pid = child.id();
    settle(&view, pid, "sleep", &pid.to_string());
    let dir = view.join(pid.to_string());

    // The root holds pid directories only; each has exactly the reference's four files.
    let names: Vec<String> = std::fs::read_dir(&view)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.parse::<u32>().is_ok()), "{names:?}");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["as", "cmdline", "ctl", "exefile"]);
    // Modes: 0666 less the umask (none here) for as and ctl.
    for (f, mode) in [("as", 0o666), ("ctl", 0o666), ("cmdline", 0o444)] {
        let md = std::fs::metadata(dir.join(f)).unwrap();
        assert_eq!(md.mode() & 0o777, mode, "{f}");
    }

    // cmdline: argv NUL-separated; exefile: the path as text, no newline. (Both are the
    // table's, filled in from the exec event: give it the staleness bound.)
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    eventually(5, "cmdline and exefile", || {
        let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
        let exefile = std::fs::read(dir.join("exefile")).ok()?;
        (cmdline == b"sleep\x0060\x00" && exefile == exe.as_os_str().as_encoded_bytes())
            .then_some(())
    });

    // as: read at a virtual address.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = u64::from_str_radix(maps.split('-').next().unwrap(), 16).unwrap();
    use std::os::unix::fs::FileExt as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(dir.join("as"))
        .unwrap()
        .read_exact_at(&mut magic, base)
        .unwrap();
    assert_eq!(&magic, b"\x7fELF");

    // ctl: the devctl subset as ioctls.
    let ctl = open_rw(&dir.join("ctl")).unwrap();
    ioctl(&ctl, DCMD_PROC_STOP, std::ptr::null_mut()).unwrap();
    assert_eq!(state(pid), "T");
    let mut regs = vec![0u64; size_of::<libc::user_regs_struct>() / 8];
    ioctl(&ctl, DCMD_PROC_GETGREG, regs.as_mut_ptr().cast()).unwrap();
    assert!(regs.iter().any(|&r| r != 0));
    // A write to `as` while stopped lands in the process.
    let a = open_rw(&dir.join("as")).unwrap();
    let mut back = [0u8; 4];
    a.write_all_at(b"\x7fELF", base)
        .unwrap_or_else(|e| panic!("{e}"));
    a.read_exact_at(&mut back, base).unwrap();
    assert_eq!(&back, b"\x7fELF");
    ioctl(&ctl, DCMD_PROC_RUN, std::ptr::null_mut()).unwrap();
    eventually(5, "running", || (state(pid) == "S").then_some(()));
    assert_eq!(
        ioctl(&ctl, DCMD_PROC_OTHER, regs.as_mut_ptr().cast()),
        Err(libc::EOPNOTSUPP)
    );
    let mut bad = 0i32;
    assert_eq!(
        ioctl(&ctl, DCMD_PROC_SIGNAL, (&raw mut bad).cast()),
        Err(libc::EINVAL)
    );
    assert_eq!(state(pid), "S", "untouched");
    let mut term = libc::SIGTERM;
    ioctl(&ctl, DCMD_PROC_SIGNAL, (&raw mut term).cast()).unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, switches uid"]
fn qnx_umask_chmod_and_one_writer() {
    let (_agent, view) = mounted("qnx", ",umask=022");
    let mut child = spawn(&["sleep", "60"]);
    let pid = child.id();
    settle(&view, pid, "sleep", &pid.to_string());
    let dir = view.join(pid.to_string());
    let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().mode() & 0o777;
    assert_eq!(
        (mode("as"), mode("ctl")),
        (0o644, 0o644),
        "0666 less the umask"
    );

    // Only one process may have `as` (or `ctl`) open for writing at a time.
    let held = open_rw(&dir.join("as")).unwrap();
    assert!(
        sh_open(None, &dir.join("as"), "<>").contains("busy"),
        "a second writer"
    );
    assert!(
        sh_open(None, &dir.join("as"), "<").contains("opened"),
        "a reader"
    );
    assert!(
        sh_open(None, &dir.join("ctl"), "<>").contains("opened"),
        "ctl is separate"
    );
    let again = open_rw(&dir.join("as")).expect("the writer itself, again");
    drop((held, again));
    // FUSE sends the release after close(2) returns.
    eventually(5, "free again", || {
        sh_open(None, &dir.join("as"), "<>")
            .contains("opened")
            .then_some(())
    });

    // A devctl that changes the process needs ctl open for writing.
    let ro = std::fs::File::open(dir.join("ctl")).unwrap();
    assert_eq!(
        ioctl(&ro, DCMD_PROC_STOP, std::ptr::null_mut()),
        Err(libc::EBADF)
    );
    assert_eq!(state(pid), "S");

    // chmod drops permissions; they never come back, not even for root.
    let nobody = 65534;
    assert!(sh_open(Some(nobody), &dir.join("as"), "<").contains("opened"));
    std::fs::set_permissions(dir.join("as"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode("as"), 0o600);
    assert!(
        sh_open(Some(nobody), &dir.join("as"), "<").contains("denied"),
        "dropped for others"
    );
    let err = std::fs::set_permissions(dir.join("as"), std::fs::Permissions::from_mode(0o644))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(mode("as"), 0o600, "unchanged");
    std::fs::set_permissions(dir.join("as"), std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(
        open_rw(&dir.join("as")).unwrap_err().raw_os_error(),
        Some(libc::EACCES),
        "no write bit left: not even root writes"
    );
    assert_eq!(mode("ctl"), 0o644, "ctl keeps its own mode");
    // Other files are not chmod'ed.
    assert_eq!(
        std::fs::set_permissions(dir.join("cmdline"), std::fs::Permissions::from_mode(0o400))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
