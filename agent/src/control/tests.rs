//! The ptrace side against real processes: children forked from this test process (so they
//! share its address layout, and the address of a static here is the address in the child).
//! No BPF is needed, so these run as ordinary tests; the ones that change uid need root and
//! are `#[ignore = "needs root: …"]` (`cargo xtask test` runs them, as root, with
//! `--include-ignored`). `hang` and the HTTP route are tested end to end in tests/control.rs.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use nix::{
    sys::{
        prctl::set_dumpable,
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, fork, setresgid, setresuid},
};

use super::{Caller, Command, Control, CtlError, ProcInfo, ptrace::REGS_SIZE};

static MARKER: [u8; 24] = *b"bpfproc mem marker 4711\0";
static WRITABLE: AtomicU64 = AtomicU64::new(0x1111_2222_3333_4444);

/// A forked child sleeping in a loop; killed and reaped on drop.
struct Kid(u32);

impl Kid {
    /// `setup` runs in the child right after fork (async-signal-safe calls only).
    fn fork(setup: fn()) -> Kid {
        // SAFETY: the child only makes plain system calls (setup's, and nanosleep in
        // `thread::sleep`, which does not allocate) until it is killed.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Parent { child } => Kid(child.as_raw() as u32),
            ForkResult::Child => {
                setup();
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn plain() -> Kid {
        Kid::fork(|| {})
    }

    fn info(&self) -> ProcInfo {
        ProcInfo::read(self.0).expect("child exists")
    }

    fn state(&self) -> char {
        self.info().state
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        // Kill and reap our own child (the control thread may have reaped it already).
        let pid = Pid::from_raw(self.0 as i32);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
    }
}

/// All the forked child's ids to `id` (it has one thread: glibc's set*id has no other to tell).
fn become_user(id: u32) {
    let _ = setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id));
    let _ = setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id));
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rip(regs: &[u8]) -> u64 {
    // user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip …
    u64::from_ne_bytes(regs[16 * 8..17 * 8].try_into().unwrap())
}

#[test]
fn stop_start_and_kill_a_child() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    c.ctl(&Caller::ROOT, kid.0, Command::Stop).unwrap();
    assert_eq!(kid.state(), 'T', "stop returns once the target is stopped");
    assert_eq!(kid.info().tracer, 0, "stop does not trace");
    c.ctl(&Caller::ROOT, kid.0, Command::Start).unwrap();
    eventually("child running again", || kid.state() != 'T');
    let e = c.ctl(&Caller::ROOT, kid.0, Command::Start).unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "start on a running process: {e}");
    c.write_ctl(&Caller::ROOT, kid.0, b"kill\n").unwrap();
    eventually("child killed", || kid.state() == 'Z');
    c.shutdown();
}

#[test]
fn garbage_commands_leave_the_target_running() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    for bad in [&b"stopp"[..], b"STOP", b"stop now", b"", b"sigstop", b"19"] {
        let e = c.write_ctl(&Caller::ROOT, kid.0, bad).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{bad:?}");
    }
    for needs_attach in [Command::Step, Command::Run, Command::Detach] {
        let e = c.ctl(&Caller::ROOT, kid.0, needs_attach).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY, "{needs_attach:?}: {e}");
    }
    let e = c.regs(&Caller::ROOT, kid.0).unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "regs of a running process");
    std::thread::sleep(Duration::from_millis(50));
    let info = kid.info();
    assert!(matches!(info.state, 'S' | 'R'), "still running: {info:?}");
    assert_eq!(info.tracer, 0);
    c.shutdown();
}

#[test]
fn vanished_pid_is_enoent() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    let pid = kid.0;
    drop(kid);
    for cmd in [
        Command::Stop,
        Command::Kill,
        Command::Attach,
        Command::WaitStop,
    ] {
        let e = c.ctl(&Caller::ROOT, pid, cmd).unwrap_err();
        assert_eq!(e, CtlError::NoProcess(pid), "{cmd:?}");
    }
    assert_eq!(
        c.read_mem(&Caller::ROOT, pid, 0x1000, 8)
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    c.shutdown();
}

#[test]
fn waitstop_returns_when_the_target_stops() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    let (tx, rx) = std::sync::mpsc::channel();
    let (c2, pid) = (c.clone(), kid.0);
    std::thread::spawn(move || {
        let r = c2.ctl(&Caller::ROOT, pid, Command::WaitStop);
        let state = ProcInfo::read(pid).map(|i| i.state);
        let _ = tx.send((r, state));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "waitstop returned while the target was running"
    );
    assert_ne!(kid.state(), 'T', "waitstop does not touch the target");
    kill(Pid::from_raw(kid.0 as i32), Signal::SIGSTOP).unwrap();
    let (r, state) = rx.recv_timeout(Duration::from_secs(10)).expect("returned");
    r.unwrap();
    assert_eq!(state, Ok('T'), "returned with the target stopped");
    c.shutdown();
}

#[test]
#[ignore = "needs root: creates processes of another uid"]
fn callers_may_control_only_what_they_could_ptrace() {
    let c = Control::spawn(None).unwrap();
    let user = Caller {
        uid: 1000,
        gid: 1000,
        pid: 0,
    };
    // A root process: a user may not stop, signal, read or even attach to it.
    let root_kid = Kid::plain();
    for cmd in [
        Command::Stop,
        Command::Kill,
        Command::Attach,
        Command::Signal(15),
    ] {
        let e = c.ctl(&user, root_kid.0, cmd).unwrap_err();
        assert_eq!(e.errno(), libc::EACCES, "{cmd:?}: {e}");
    }
    let e = c
        .read_mem(&user, root_kid.0, MARKER.as_ptr() as u64, 8)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EACCES);
    assert_eq!(
        c.note(&user, root_kid.0, b"kill").unwrap_err().errno(),
        libc::EACCES
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(root_kid.state(), 'S' | 'R'), "untouched");

    // The user's own process: allowed.
    let own = Kid::fork(|| {
        become_user(1000);
        // Changing uid may make a process non-dumpable (fs.suid_dumpable); a program
        // exec'd by that user would be dumpable, which is the case modelled here.
        let _ = set_dumpable(true);
    });
    eventually("child switched uid", || own.info().uids == [1000; 4]);
    c.ctl(&user, own.0, Command::Stop).unwrap();
    assert_eq!(own.state(), 'T');
    let other = Caller { uid: 1001, ..user };
    assert_eq!(
        c.ctl(&other, own.0, Command::Start).unwrap_err().errno(),
        libc::EACCES
    );
    assert_eq!(own.state(), 'T', "another user's start did nothing");
    c.ctl(&user, own.0, Command::Start).unwrap();

    // Same uid, but not dumpable (as after a setuid exec, or a uid change with
    // fs.suid_dumpable=0): off limits, as it is for ptrace(2).
    let changed = Kid::fork(|| {
        become_user(1000);
        let _ = set_dumpable(false);
    });
    eventually("child switched uid and became non-dumpable", || {
        let i = changed.info();
        i.uids == [1000; 4] && !i.dumpable
    });
    let e = c.ctl(&user, changed.0, Command::Stop).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert_ne!(changed.state(), 'T');
    c.shutdown();
}

#[test]
fn attach_step_regs_detach_round_trip() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    let me = Caller::ROOT;
    c.ctl(&me, kid.0, Command::Attach).unwrap();
    let info = kid.info();
    assert_eq!(info.state, 't', "attached and stopped");
    assert!(
        std::path::Path::new(&format!("/proc/self/task/{}", info.tracer)).exists(),
        "traced by a thread of ours (the control thread): {info:?}"
    );
    assert_eq!(
        c.ctl(&me, kid.0, Command::Attach).unwrap_err().errno(),
        libc::EBUSY,
        "a second attach"
    );

    let before = c.regs(&me, kid.0).unwrap();
    assert_eq!(before.len(), REGS_SIZE);
    // The child sits in nanosleep, so its first step may be the restarted `syscall`, which
    // ends where it began; the step after it moves on.
    let mut after = before.clone();
    for _ in 0..3 {
        c.ctl(&me, kid.0, Command::Step).unwrap();
        assert_eq!(kid.state(), 't', "stopped again after each step");
        after = c.regs(&me, kid.0).unwrap();
        if rip(&after) != rip(&before) {
            break;
        }
    }
    assert_ne!(
        rip(&before),
        rip(&after),
        "steps move the instruction pointer"
    );
    let fp = c.fpregs(&me, kid.0).unwrap();
    assert_eq!(fp.len(), super::ptrace::FPREGS_SIZE);

    // Writing registers back round-trips; a wrong size is refused.
    c.set_regs(&me, kid.0, &after).unwrap();
    assert_eq!(c.regs(&me, kid.0).unwrap(), after);
    assert_eq!(
        c.set_regs(&me, kid.0, &after[..100]).unwrap_err().errno(),
        libc::EINVAL
    );

    c.ctl(&me, kid.0, Command::Detach).unwrap();
    eventually("detached child runs", || {
        let i = kid.info();
        i.tracer == 0 && matches!(i.state, 'S' | 'R')
    });
    c.shutdown();
}

#[test]
fn dbregs_read_and_set_a_watchpoint_while_attached() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    let me = Caller::ROOT;
    assert_eq!(
        c.dbregs(&me, kid.0).unwrap_err().errno(),
        libc::EBUSY,
        "FreeBSD's rule: only a stopped process"
    );
    c.ctl(&me, kid.0, Command::Attach).unwrap();
    let regs = c.dbregs(&me, kid.0).unwrap();
    assert_eq!(regs.len(), super::ptrace::DBREGS_SIZE);
    let word = |r: &[u8], n: usize| u64::from_ne_bytes(r[n * 8..n * 8 + 8].try_into().unwrap());
    assert_eq!(word(&regs, 0), 0, "no breakpoint set yet");

    // dr0 = a write watchpoint on WRITABLE (dr7: L0 enable, R/W0 = 01 write, LEN0 = 11 8 bytes).
    let mut set = vec![0u8; 64];
    set[..8].copy_from_slice(&(WRITABLE.as_ptr() as u64).to_ne_bytes());
    let dr7: u64 = 1 | (0b01 << 16) | (0b11 << 18);
    set[56..].copy_from_slice(&dr7.to_ne_bytes());
    c.set_dbregs(&me, kid.0, &set).unwrap();
    let back = c.dbregs(&me, kid.0).unwrap();
    assert_eq!(word(&back, 0), WRITABLE.as_ptr() as u64);
    assert_eq!(word(&back, 7) & 0xffff_0003, dr7);

    // dr4/dr5 do not exist; a kernel address is refused; the size is exact.
    let mut bad = set.clone();
    bad[32] = 1;
    assert_eq!(
        c.set_dbregs(&me, kid.0, &bad).unwrap_err().errno(),
        libc::EINVAL
    );
    let mut kernel = vec![0u8; 64];
    kernel[..8].copy_from_slice(&0xffff_ffff_8100_0000u64.to_ne_bytes());
    assert_eq!(
        c.set_dbregs(&me, kid.0, &kernel).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        c.set_dbregs(&me, kid.0, &set[..8]).unwrap_err().errno(),
        libc::EINVAL
    );
    c.set_dbregs(&me, kid.0, &[0u8; 64]).unwrap();
    c.ctl(&me, kid.0, Command::Detach).unwrap();
    c.shutdown();
}

#[test]
fn mem_reads_a_known_variable_and_writes_only_while_stopped() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    let me = Caller::ROOT;
    let got = c
        .read_mem(&me, kid.0, MARKER.as_ptr() as u64, MARKER.len())
        .unwrap();
    assert_eq!(got, MARKER);
    assert_eq!(
        c.read_mem(&me, kid.0, 0x10, 8).unwrap_err().errno(),
        libc::EIO,
        "an unmapped address"
    );

    let addr = WRITABLE.as_ptr() as u64;
    let new = 0xdead_beef_0bad_f00du64.to_ne_bytes();
    assert_eq!(
        c.write_mem(&me, kid.0, addr, &new).unwrap_err().errno(),
        libc::EBUSY,
        "writes only while stopped"
    );
    c.ctl(&me, kid.0, Command::Stop).unwrap();
    // An unaligned write across a word boundary, into a stopped but untraced process.
    assert_eq!(c.write_mem(&me, kid.0, addr + 3, &new[3..]).unwrap(), 5);
    assert_eq!(c.write_mem(&me, kid.0, addr, &new[..3]).unwrap(), 3);
    assert_eq!(c.read_mem(&me, kid.0, addr, 8).unwrap(), new);
    assert_eq!(
        WRITABLE.load(Ordering::Relaxed),
        0x1111_2222_3333_4444,
        "our own copy is untouched"
    );
    let info = kid.info();
    assert_eq!(
        (info.state, info.tracer),
        ('T', 0),
        "left stopped, untraced"
    );
    c.shutdown();
}

#[test]
fn shutdown_detaches_and_leaves_each_tracee_as_it_was() {
    let c = Control::spawn(None).unwrap();
    let held = Kid::plain();
    let running = Kid::plain();
    c.ctl(&Caller::ROOT, held.0, Command::Attach).unwrap();
    c.ctl(&Caller::ROOT, running.0, Command::Attach).unwrap();
    c.ctl(&Caller::ROOT, running.0, Command::Run).unwrap();
    c.shutdown();
    let h = held.info();
    assert_eq!(
        (h.state, h.tracer),
        ('T', 0),
        "stopped stays stopped: {h:?}"
    );
    eventually("running keeps running, untraced", || {
        let r = running.info();
        r.tracer == 0 && matches!(r.state, 'S' | 'R')
    });
    assert_eq!(
        c.ctl(&Caller::ROOT, held.0, Command::Start).unwrap_err(),
        CtlError::Gone
    );
}

#[test]
fn notes_become_signals() {
    let c = Control::spawn(None).unwrap();
    let kid = Kid::plain();
    assert_eq!(
        c.note(&Caller::ROOT, kid.0, b"no such note")
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(c.noteid(&Caller::ROOT, kid.0).unwrap(), kid.info().pgrp);
    c.note(&Caller::ROOT, kid.0, b"kill\n").unwrap();
    eventually("killed by the note", || kid.state() == 'Z');
    c.shutdown();
}
