//! The namespaces procfs answers host-wide files for. `/proc/sys/net/…` is the reader's network
//! namespace's, `sys/kernel/hostname` its UTS namespace's, `sysvipc/…` and `sys/kernel/shm*` its
//! IPC namespace's; the agent reads them for someone else on a throwaway thread that has joined
//! that process's namespaces of those kinds (`run_in`).

use std::{io, path::PathBuf, sync::OnceLock};

use nix::sched::CloneFlags;

/// The kinds one thread can join on its own: setns(2) into a mount or user namespace needs a
/// single-threaded caller, and a pid or time namespace applies to children only.
const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
];

fn ids(pid: &str) -> io::Result<Vec<PathBuf>> {
    KINDS
        .iter()
        .map(|(kind, _)| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")))
        .collect()
}

/// Whether process (or thread) `pid` is in the agent's network, UTS and IPC namespaces.
pub fn shares_mine(pid: u32) -> io::Result<bool> {
    static MINE: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let mine = match MINE.get() {
        Some(m) => m,
        None => {
            let m = ids("self")?;
            MINE.get_or_init(|| m)
        }
    };
    Ok(ids(&pid.to_string())? == *mine)
}

/// Runs `f` on a new thread that has joined `pid`'s network, UTS and IPC namespaces (threads
/// `f` starts are in them too). No other work ever runs there: the thread ends with `f`.
pub fn run_in<T: Send>(pid: u32, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let fds = KINDS
        .iter()
        .map(|&(kind, flag)| Ok((std::fs::File::open(format!("/proc/{pid}/ns/{kind}"))?, flag)))
        .collect::<io::Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(2) of these kinds acts on the calling thread only.
            for (fd, flag) in &fds {
                nix::sched::setns(fd, *flag)?;
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Whether a path under /proc names a file procfs answers per namespace of those kinds.
pub fn keyed(rel: &str) -> bool {
    rel == "sys" || rel.starts_with("sys/") || rel == "sysvipc" || rel.starts_with("sysvipc/")
}
