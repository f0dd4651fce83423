//! The Plan 9 `wait` file: one Waitmsg per read for each exited child of a process, taken
//! from the table's exit records (the BPF exit hook's status and CPU times). In Plan 9 a
//! Waitmsg is consumed by whoever takes it first, the wait file or wait(2); here the kernel
//! keeps its own zombie, so a child is reported while it is a zombie (exited, not yet reaped:
//! the usual order on Linux), or if it exited while the read was waiting, and once per
//! process either way. A child its parent had already reaped before the read was consumed
//! by waitpid(2) and is not reported.
//!
//! A read blocks until there is such a child. A process reading its own wait file with
//! nothing to report and no living children gets ECHILD, as the manual says; on a handle
//! that has already returned a record that is the end of the file instead, so a Unix reader
//! that reads to EOF (`cat`, Python's `read()`) gets its records rather than an error. A
//! read whose process exits meanwhile ends with ENOENT.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    state::State,
    table::{Change, Process},
};

use super::{Caller, CtlError, Target};

/// A Plan 9 Waitmsg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitMsg {
    pub pid: u32,
    /// User, system and real (start to exit) time, in milliseconds as Plan 9 keeps them.
    pub user_ms: u64,
    pub sys_ms: u64,
    pub real_ms: u64,
    /// Plan 9's exit string: empty for success, else `comm pid: …` with the status.
    pub msg: String,
}

impl WaitMsg {
    pub fn from_process(p: &Process) -> Option<WaitMsg> {
        let exit = p.exit?;
        let comm = String::from_utf8_lossy(&p.comm);
        let status = match (exit.exit_code(), exit.signal()) {
            (Some(0), _) => String::new(),
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => {
                let name =
                    super::short_signal_name(sig).map_or_else(|| sig.to_string(), str::to_owned);
                let core = if exit.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                };
                format!("sys: killed: {name}{core}")
            }
            (None, None) => "exit status unknown (exit record lost)".into(),
        };
        Some(WaitMsg {
            pid: p.pid,
            user_ms: exit.utime_ns / 1_000_000,
            sys_ms: exit.stime_ns / 1_000_000,
            real_ms: exit.ts.saturating_sub(p.start_boottime) / 1_000_000,
            msg: if status.is_empty() {
                status
            } else {
                format!("{comm} {}: {status}", p.pid)
            },
        })
    }

    /// The record as the Plan 9 kernel formats it: `pid utime stime rtime 'msg'` (`%q`
    /// quoting: single quotes, an inner quote doubled, and an empty message as `''`).
    pub fn render(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} '{}'\n",
            self.pid,
            self.user_ms,
            self.sys_ms,
            self.real_ms,
            self.msg.replace('\'', "''")
        )
        .into_bytes()
    }
}

type Key = (u32, u64);

/// Reads of `wait` files. Cheap to clone; the record of what was already reported is shared.
#[derive(Clone)]
pub struct Waiter {
    state: State,
    /// (parent pid, start) → children (pid, start) already reported to some reader.
    reported: Arc<Mutex<HashMap<Key, HashSet<Key>>>>,
}

/// How long a blocked read sleeps before looking again even without an exit event (the event
/// stream can lag and drop; the table is the truth).
const RECHECK: Duration = Duration::from_millis(500);

impl Waiter {
    pub fn new(state: State) -> Self {
        Self {
            state,
            reported: Arc::default(),
        }
    }

    /// The next Waitmsg for `pid`'s wait file, blocking as the manual says; `None` (end of
    /// file) when `after_record`, the handle has returned records, and no more can come.
    pub async fn next(
        &self,
        caller: Caller,
        pid: u32,
        after_record: bool,
    ) -> Result<Option<WaitMsg>, CtlError> {
        // The permission check reads /proc: keep it off the async workers.
        tokio::task::spawn_blocking(move || Target::open(&caller, pid).map(drop))
            .await
            .map_err(|_| CtlError::Gone)??;
        let since = crate::sys::clock::boot_ns();
        let mut events = self.state.subscribe();
        loop {
            let snap = self
                .state
                .snapshot_within(Duration::MAX)
                .await
                .map_err(|_| CtlError::Gone)?;
            let parent = snap.get(pid).ok_or(CtlError::NoProcess(pid))?;
            let key = (pid, parent.start_boottime);
            {
                let mut reported = self.reported.lock().map_err(|_| CtlError::Gone)?;
                // Forget parents that are gone, and children that left the exited ring.
                reported.retain(|(ppid, start), _| {
                    snap.get(*ppid).is_some_and(|p| p.start_boottime == *start)
                });
                let done = reported.entry(key).or_default();
                done.retain(|c| snap.exited.iter().any(|p| (p.pid, p.start_boottime) == *c));
                if let Some(child) = snap.exited.iter().find(|c| {
                    is_child(c, key)
                        && !done.contains(&(c.pid, c.start_boottime))
                        && (is_zombie(&snap, c) || c.exit.is_some_and(|e| e.ts >= since))
                }) && let Some(msg) = WaitMsg::from_process(child)
                {
                    done.insert((child.pid, child.start_boottime));
                    return Ok(Some(msg));
                }
            }
            let living = snap
                .processes
                .iter()
                .any(|p| is_child(p, key) && p.exit.is_none());
            if !living && caller.pid == pid {
                if after_record {
                    return Ok(None);
                }
                // "It is an error for a process to attempt to read its own wait file when it
                // has no children": nothing could ever end that read.
                return Err(CtlError::NoChildren(pid));
            }
            if parent.exit.is_some() {
                return Err(CtlError::NoProcess(pid));
            }
            // Block until one of its children exits or it exits itself (or look again after a
            // while); a process with no children yet may still fork one, so others' reads
            // block too, as in Plan 9.
            let _ = tokio::time::timeout(RECHECK, async {
                loop {
                    match events.recv().await {
                        Ok(change) => {
                            if let Change::Exit(p) = &*change
                                && (p.ppid == pid || p.pid == pid)
                            {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
            .await;
        }
    }
}

/// `p` is a child of the process `(pid, start)` (started after it, so not a reused pid's).
fn is_child(p: &Process, (pid, start): Key) -> bool {
    p.ppid == pid && p.start_boottime >= start
}

/// The exited `c` is still its parent's zombie: listed, until the kernel frees it.
fn is_zombie(snap: &crate::state::Snapshot, c: &Process) -> bool {
    snap.get(c.pid)
        .is_some_and(|p| p.start_boottime == c.start_boottime && p.exit.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{ExitInfo, Origin};

    fn exited(pid: u32, comm: &str, status: u32) -> Process {
        Process {
            pid,
            ppid: 1,
            comm: comm.as_bytes().to_vec(),
            uid: 0,
            gid: 0,
            euid: 0,
            egid: 0,
            start_boottime: 1_000_000_000,
            exe: None,
            cmdline: Vec::new(),
            cmdline_truncated: false,
            kthread: false,
            origin: Origin::Event,
            exec_ts: None,
            exit: Some(ExitInfo {
                ts: 3_500_000_000,
                status: Some(status),
                utime_ns: 1_200_000_000,
                stime_ns: 300_000_000,
            }),
            tasks: crate::table::Tasks::default(),
            refreshed_at: 0,
            event_ts: 0,
            needs_identity: false,
            event_cgroup_id: 0,
            rev: 0,
        }
    }

    #[test]
    fn success_has_an_empty_message() {
        let w = WaitMsg::from_process(&exited(42, "true", 0)).unwrap();
        assert_eq!(w.render(), b"42 1200 300 2500 ''\n");
    }

    #[test]
    fn exit_code_and_signal_are_in_the_message() {
        let w = WaitMsg::from_process(&exited(42, "sh", 7 << 8)).unwrap();
        assert_eq!(w.msg, "sh 42: exit 7");
        let w = WaitMsg::from_process(&exited(43, "sleep", 9)).unwrap();
        assert_eq!(w.msg, "sleep 43: sys: killed: kill");
        let w = WaitMsg::from_process(&exited(44, "a'b", 0x80 | 11)).unwrap();
        assert_eq!(w.msg, "a'b 44: sys: killed: segv (core dumped)");
        assert!(
            String::from_utf8(w.render())
                .unwrap()
                .ends_with("'a''b 44: sys: killed: segv (core dumped)'\n")
        );
    }

    #[test]
    fn a_live_process_has_no_waitmsg() {
        let mut p = exited(1, "x", 0);
        p.exit = None;
        assert_eq!(WaitMsg::from_process(&p), None);
    }
}
