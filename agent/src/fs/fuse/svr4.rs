//! The SVR4 (RISC/os PROC(4)) personality in the FUSE adapter: a root of one five-digit file
//! per process (any number of leading zeros on lookup), each file the process's address space
//! (read/write/lseek, as `mem`), and the PFC* requests as ioctls on an open one. `view::svr4`
//! decodes the requests and builds the records; the control layer carries them out.

use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, ReplyIoctl};

use super::{DirEnt, Handle, ProcFs};
use crate::fs::{
    kernel_files::{errno, kernel_file, kernel_link},
    processes::Processes,
};
use crate::{
    control::{Caller, Command, CtlError, Target},
    fs::tree::Node,
    view::svr4::{self, PfcError, Request as Pfc},
};

/// "Normal file protections apply": the owner (the effective uid) reads and writes.
const FILE_MODE: u16 = 0o600;

impl ProcFs {
    pub(super) fn svr4_lookup(&self, name: &str) -> Result<Node, Errno> {
        let pid = svr4::parse_name(name).ok_or(Errno::ENOENT)?;
        self.process(pid)?;
        Ok(Node::PidFile(pid))
    }

    /// Size: the virtual memory in use; owner and group: the effective ids.
    pub(super) fn svr4_attr(&self, pid: u32) -> Result<FileAttr, Errno> {
        let (_, p) = self.process(pid)?;
        let mut attr = self.attr(
            Node::PidFile(pid),
            FileType::RegularFile,
            FILE_MODE,
            svr4::owner(&p),
            self.proc_time(&p),
        );
        attr.size = svr4::file_size(&p, &self.host).map_err(|e| errno(&e))?;
        Ok(attr)
    }

    pub(super) fn svr4_listing(&self, out: &mut Vec<DirEnt>) -> Result<(), Errno> {
        let snap = self.snapshot()?;
        for p in snap.processes.iter().filter(|p| self.visible(p)) {
            if let Some(ino) = Node::PidFile(p.pid).ino() {
                out.push(DirEnt {
                    ino,
                    kind: FileType::RegularFile,
                    name: svr4::file_name(p.pid).into_bytes(),
                });
            }
        }
        Ok(())
    }

    /// A PFC* request on an open process file. A malformed one is refused before the process
    /// is looked at; the ones that wait (STOP, WSTOP, SSTEP) or trace run off the FUSE
    /// threads.
    pub(super) fn svr4_ioctl(
        &self,
        req: &super::Asker,
        fh: FileHandle,
        cmd: u32,
        arg: &[u8],
        reply: ReplyIoctl,
    ) {
        let Some(Handle::Control { pid, .. }) = self.handle(fh) else {
            return reply.error(Errno::ENOTTY);
        };
        let request = match svr4::request(cmd, arg) {
            Ok(r) => r,
            Err(e) => return reply.error(Errno::from_i32(e.errno())),
        };
        // The rights checked are those of whoever makes the request (it may not be the
        // opener: descriptors are inherited and passed).
        let caller = Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: self.caller_tgid(req.pid()).unwrap_or(req.pid()),
        };
        let tid = req.pid();
        // The records read from the table and the kernel's /proc: answered here.
        let local = match &request {
            Pfc::GetPr => Some(
                self.process(pid)
                    .and_then(|(_, p)| svr4::getpr(&p, &self.host).map_err(|e| errno(&e)))
                    .map(|r| r.as_bytes()),
            ),
            Pfc::OpenText(addr) => Some(self.svr4_text(pid, *addr).and_then(|path| {
                svr4::open_text_reply(*addr, &path).map_err(|e| Errno::from_i32(e.errno()))
            })),
            Pfc::Exclusive(addr) => Some(self.svr4_text(pid, *addr).map(|_| Vec::new())),
            _ => None,
        };
        if let Some(result) = local {
            return match result {
                Ok(data) => reply.ioctl(0, &data),
                Err(e) => reply.error(e),
            };
        }
        let Some(cf) = self.control.clone() else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        let table = self.table.clone();
        self.rt.spawn_blocking(move || {
            let interrupted = || signal_pending(tid);
            match control(&cf.control, &*table, &caller, pid, request, &interrupted) {
                Ok(data) => reply.ioctl(0, &data),
                Err(e) => reply.error(e),
            }
        });
    }

    /// The file behind PFCOPENT/PFCEXCLU's region: the executable for address 0, else the
    /// file mapped at `addr`. ENOENT for no such region or an anonymous one.
    fn svr4_text(&self, pid: u32, addr: u64) -> Result<Vec<u8>, Errno> {
        let (_, p) = self.process(pid)?;
        if addr == 0 {
            return kernel_link(&p, "exe");
        }
        let maps = kernel_file(&p, "maps").map_err(|e| errno(&e))?;
        region_file(&maps, addr).ok_or(Errno::ENOENT)
    }
}

/// The path of the file mapped at `addr` in a /proc/PID/maps text, if any.
fn region_file(maps: &[u8], addr: u64) -> Option<Vec<u8>> {
    maps.split(|&b| b == b'\n').find_map(|line| {
        let text = std::str::from_utf8(line).ok()?;
        let (range, rest) = text.split_once(' ')?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        if !(lo..hi).contains(&addr) {
            return None;
        }
        // perms offset dev inode, then the path (which may contain spaces).
        let path = rest.splitn(5, ' ').nth(4)?.trim_start();
        path.starts_with('/').then(|| path.as_bytes().to_vec())
    })
}

/// The requests the control layer carries out; the bytes to copy out.
fn control(
    control: &crate::control::Control,
    table: &dyn Processes,
    caller: &Caller,
    pid: u32,
    request: Pfc,
    interrupted: &dyn Fn() -> bool,
) -> Result<Vec<u8>, Errno> {
    let ctl = |e: CtlError| Errno::from_i32(e.errno());
    let none = |r: Result<(), CtlError>| r.map(|()| Vec::new()).map_err(ctl);
    match request {
        Pfc::Stop | Pfc::WaitStop => {
            let cmd = if request == Pfc::Stop {
                Command::Stop
            } else {
                Command::WaitStop
            };
            match control.ctl_until(caller, pid, cmd, interrupted) {
                // Stopped, or exited (before or while waiting): the status if it has exited,
                // and the argument is ignored otherwise.
                Ok(()) | Err(CtlError::NoProcess(_)) => {
                    if crate::control::ProcInfo::read(pid).is_ok_and(|i| !i.exited()) {
                        Ok(Vec::new())
                    } else {
                        exit_status(table, pid).map(|s| s.to_ne_bytes().to_vec())
                    }
                }
                Err(e) => Err(ctl(e)),
            }
        }
        Pfc::Run => none(control.make_runnable(caller, pid)),
        Pfc::SetMask(mask) => none(control.set_sigmask(caller, pid, mask)),
        Pfc::GetMask => control
            .sigmask(caller, pid)
            .map(|m| m.to_ne_bytes().to_vec())
            .map_err(ctl),
        Pfc::ClearSignal => none(control.clear_signal(caller, pid)),
        Pfc::Kill(sig) => none(control.ctl(caller, pid, Command::Signal(sig))),
        Pfc::SetExec => none(control.ctl(caller, pid, Command::Hang)),
        Pfc::ClearExec => none(control.ctl(caller, pid, Command::NoHang)),
        Pfc::Nice(n) => renice(caller, pid, n).map(|()| Vec::new()),
        Pfc::Step => none(control.step_stopped(caller, pid, interrupted)),
        Pfc::GetRegs => control.regs(caller, pid).map_err(ctl),
        Pfc::PutRegs(data) => none(control.set_regs(caller, pid, &data)),
        Pfc::GetPr | Pfc::OpenText(_) | Pfc::Exclusive(_) => Err(Errno::ENOTTY),
    }
}

/// The wait status of `pid`, which has exited, from the table's exit record (the latest
/// process on that pid). The BPF exit hook runs before the kernel shows the zombie, but the
/// record can still be on its way to the table: it is given a moment. ENOENT if there is no
/// record (never seen, or lost).
fn exit_status(table: &dyn Processes, pid: u32) -> Result<i32, Errno> {
    for _ in 0..50 {
        let snap = table.snapshot(Duration::ZERO).map_err(|_| Errno::EIO)?;
        let status = snap
            .get(pid)
            .into_iter()
            .chain(snap.exited.iter().filter(|p| p.pid == pid))
            .filter_map(|p| Some((p.start_boottime, p.exit?)))
            .max_by_key(|(start, _)| *start)
            .and_then(|(_, exit)| exit.status);
        if let Some(status) = status {
            return Ok(status as i32);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(Errno::ENOENT)
}

/// PFCNICE: the caller must be able to control the process; then the manual's rules
/// (`nice_request`) against its nice value now. Linux's setpriority(PRIO_PROCESS) sets one
/// thread, so every thread of the process is set. getpriority and setpriority through libc:
/// nix wraps neither.
fn renice(caller: &Caller, pid: u32, svr4_nice: i32) -> Result<(), Errno> {
    let target = Target::open(caller, pid).map_err(|e| Errno::from_i32(e.errno()))?;
    // -1 is a valid answer, so errno tells.
    nix::errno::Errno::clear();
    // SAFETY: getpriority takes plain integers.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t) };
    if current == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(Errno::ENOENT);
    }
    let nice = svr4::nice_request(svr4_nice, current + 20, caller.uid == 0)
        .map_err(|e: PfcError| Errno::from_i32(e.errno()))?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|_| Errno::ENOENT)?;
    for tid in tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::id_t>().ok())
    {
        // SAFETY: plain integers. A thread that exited meanwhile (ESRCH) is no matter.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        match nix::errno::Errno::result(r) {
            Ok(_) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(Errno::from_i32(e as i32)),
        }
    }
    // The pid still names the process that was checked.
    target.signal(0).map_err(|e| Errno::from_i32(e.errno()))
}

/// Whether the calling thread has a signal to take (pending, not blocked, not ignored), or is
/// gone: its FUSE request should then end with EINTR. The FUSE library answers the kernel's
/// INTERRUPT requests with ENOSYS, so the kernel does not tell; /proc does.
pub(super) fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_file_finds_the_mapping_at_an_address() {
        let maps = b"55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234 /usr/bin/my prog\n\
55d0c0a02000-55d0c0a06000 r-xp 00002000 08:01 1234 /usr/bin/my prog\n\
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]\n\
7ffd1c100000-7ffd1c101000 rw-p 00000000 00:00 0\n";
        assert_eq!(
            region_file(maps, 0x55d0_c0a0_3000).as_deref(),
            Some(&b"/usr/bin/my prog"[..])
        );
        assert_eq!(
            region_file(maps, 0x55d0_c0a0_6000),
            None,
            "end is exclusive"
        );
        assert_eq!(
            region_file(maps, 0x7ffd_1c00_0010),
            None,
            "[stack] is no file"
        );
        assert_eq!(region_file(maps, 0x7ffd_1c10_0000), None, "anonymous");
        assert_eq!(region_file(b"garbage\n", 1), None);
    }

    #[test]
    fn a_thread_with_no_signal_is_not_interrupted() {
        // This test thread has nothing pending; a thread that does not exist is "gone".
        let tid = nix::unistd::gettid().as_raw() as u32;
        assert!(!signal_pending(tid));
        assert!(signal_pending(u32::MAX));
    }
}
