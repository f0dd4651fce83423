//! The QNX (procnto) personality in the FUSE adapter: the modes of `as` and `ctl` (the
//! mount's umask, then only ever dropped by chmod), one writer per file (EBUSY for a second
//! process), and the devctl subset as ioctls on `ctl`. The rules themselves are
//! `view::qnx::Access` and `view::qnx::devctl`; this file applies them to FUSE requests.

use std::{collections::HashMap, sync::Mutex};

use fuser::{Errno, FileAttr, FileHandle, OpenAccMode, OpenFlags, ReplyIoctl};

use super::{Asker, Handle, ProcFs};
use crate::{
    control::{Caller, Command, CtlError},
    fs::tree::{ControlFile, Node},
    table::Process,
    view::qnx::{Access, Devctl, File, devctl},
};

/// One open of `as` or `ctl` for writing.
#[derive(Clone, Copy)]
struct Writer {
    pid: u32,
    start: u64,
    file: File,
    /// The opening process; the release may come from elsewhere (or from the kernel).
    opener: u32,
}

pub(super) struct QnxFiles {
    access: Mutex<Access>,
    /// By file handle.
    writers: Mutex<HashMap<u64, Writer>>,
}

impl QnxFiles {
    pub(super) fn new(umask: u16) -> Self {
        Self {
            access: Mutex::new(Access::new(umask)),
            writers: Mutex::new(HashMap::new()),
        }
    }
}

impl ProcFs {
    /// Which managed file `node` is, in a QNX mount.
    fn qnx_file(&self, node: Node) -> Option<(u32, File)> {
        if !self.desc.own_modes {
            return None;
        }
        let Node::ProcFile(pid, i) = node else {
            return None;
        };
        match self.files_table().get(i as usize)?.name {
            "as" => Some((pid, File::As)),
            "ctl" => Some((pid, File::Ctl)),
            _ => None,
        }
    }

    /// The mode of `as`/`ctl` now (`None` for every other node).
    pub(super) fn qnx_mode(&self, node: Node, p: &Process) -> Option<u16> {
        let (pid, file) = self.qnx_file(node)?;
        let access = self.qnx.access.lock().ok()?;
        Some(access.mode(pid, p.start_boottime, file))
    }

    /// The QNX rules for opening `as`/`ctl`: an access that nobody has any more (chmod took
    /// every read or every write bit) is EACCES even for root — dropped is dropped for good;
    /// a second process opening for writing is EBUSY.
    pub(super) fn qnx_open(
        &self,
        node: Node,
        flags: OpenFlags,
        fh: u64,
        handle: &Handle,
    ) -> Result<(), Errno> {
        let Some((pid, file)) = self.qnx_file(node) else {
            return Ok(());
        };
        let Handle::Control { caller, .. } = handle else {
            return Ok(());
        };
        let (_, p) = self.process(pid)?;
        let start = p.start_boottime;
        let (read, write) = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => (true, false),
            OpenAccMode::O_WRONLY => (false, true),
            OpenAccMode::O_RDWR => (true, true),
        };
        let mut access = self.qnx.access.lock().map_err(|_| Errno::EIO)?;
        let mode = access.mode(pid, start, file);
        if (read && mode & 0o444 == 0) || (write && mode & 0o222 == 0) {
            return Err(Errno::EACCES);
        }
        access
            .open(pid, start, file, caller.pid, write)
            .map_err(|e| Errno::from_i32(e.errno()))?;
        if write && let Ok(mut writers) = self.qnx.writers.lock() {
            writers.insert(
                fh,
                Writer {
                    pid,
                    start,
                    file,
                    opener: caller.pid,
                },
            );
        }
        Ok(())
    }

    pub(super) fn qnx_release(&self, fh: u64) {
        let Some(w) = self.qnx.writers.lock().ok().and_then(|mut w| w.remove(&fh)) else {
            return;
        };
        if let Ok(mut access) = self.qnx.access.lock() {
            access.close(w.pid, w.start, w.file, w.opener, true);
        }
    }

    /// chmod of `as`/`ctl` (`None` for any other node, which the caller refuses).
    pub(super) fn qnx_chmod(
        &self,
        req: &Asker,
        node: Node,
        mode: u32,
    ) -> Option<Result<FileAttr, Errno>> {
        let (pid, file) = self.qnx_file(node)?;
        Some((|| {
            let (snap, p) = self.process(pid)?;
            {
                let mut access = self.qnx.access.lock().map_err(|_| Errno::EIO)?;
                // The modes of processes that have gone are of no more use.
                access.retain_alive(|pid, start| {
                    snap.get(pid).is_some_and(|p| p.start_boottime == start)
                });
                access
                    .chmod(pid, p.start_boottime, file, (mode & 0o777) as u16)
                    .map_err(|e| Errno::from_i32(e.errno()))?;
            }
            self.getattr_node(req, node)
        })())
    }

    /// A devctl on `ctl`. Those that change the process need `ctl` open for writing (EBADF
    /// otherwise), so the one writer is the one controller.
    pub(super) fn qnx_ioctl(
        &self,
        req: &super::Asker,
        fh: FileHandle,
        cmd: u32,
        arg: &[u8],
        reply: ReplyIoctl,
    ) {
        let Some(Handle::Control {
            pid,
            ctl: ControlFile::Ctl,
            ..
        }) = self.handle(fh)
        else {
            return reply.error(Errno::ENOTTY);
        };
        let dcmd = match devctl(cmd, arg) {
            Ok(d) => d,
            Err(e) => return reply.error(Errno::from_i32(e)),
        };
        let writer = self.qnx.writers.lock().is_ok_and(|w| w.contains_key(&fh.0));
        if dcmd.changes_process() && !writer {
            return reply.error(Errno::EBADF);
        }
        let Some(cf) = self.control.clone() else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        let caller = Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: self.caller_tgid(req.pid()).unwrap_or(req.pid()),
        };
        let tid = req.pid();
        self.rt.spawn_blocking(move || {
            let c = &cf.control;
            let interrupted = || super::svr4::signal_pending(tid);
            let r: Result<Vec<u8>, CtlError> = match dcmd {
                Devctl::Stop => c.ctl_until(&caller, pid, Command::Stop, &interrupted),
                Devctl::WaitStop => c.ctl_until(&caller, pid, Command::WaitStop, &interrupted),
                Devctl::Run => c.make_runnable(&caller, pid),
                Devctl::Signal(sig) => c.ctl(&caller, pid, Command::Signal(sig)),
                Devctl::GetRegs { fp: false } => return answer(reply, c.regs(&caller, pid)),
                Devctl::GetRegs { fp: true } => return answer(reply, c.fpregs(&caller, pid)),
                Devctl::SetRegs { fp: false, data } => c.set_regs(&caller, pid, &data),
                Devctl::SetRegs { fp: true, data } => c.set_fpregs(&caller, pid, &data),
            }
            .map(|()| Vec::new());
            answer(reply, r);
        });
    }
}

fn answer(reply: ReplyIoctl, r: Result<Vec<u8>, CtlError>) {
    match r {
        Ok(data) => reply.ioctl(0, &data),
        Err(e) => reply.error(Errno::from_i32(e.errno())),
    }
}
