//! Reads and writes of control files, carried out by the control layer on a blocking thread
//! (a write may wait for its process to stop; a `wait` read, for a child to exit), whichever
//! transport brought them: each answers when `done` is called, from that thread.

use super::*;

/// A control file's open handle, with the control layer that carries out its reads and writes.
pub(super) struct ControlIo {
    cf: ControlFiles,
    rt: tokio::runtime::Handle,
    caller: Caller,
    pid: u32,
    ctl: ControlFile,
}

impl ProcFs {
    /// The control file open as `fh`; `None` if `fh` is not one, EOPNOTSUPP if this view was
    /// made without the control layer.
    pub(super) fn control_io(&self, fh: u64) -> Option<Result<ControlIo, Errno>> {
        let Some(Handle::Control { pid, ctl, caller }) = self.handle(FileHandle(fh)) else {
            return None;
        };
        Some(
            self.control
                .clone()
                .ok_or(Errno::EOPNOTSUPP)
                .map(|cf| ControlIo {
                    cf,
                    rt: self.rt.clone(),
                    caller,
                    pid,
                    ctl,
                }),
        )
    }
}

impl ControlIo {
    /// Reads on tokio's blocking pool, off the transport's threads.
    pub(super) fn read(
        self,
        offset: u64,
        size: u32,
        done: impl FnOnce(Result<Vec<u8>, Errno>) + Send + 'static,
    ) {
        let rt = self.rt.clone();
        rt.spawn_blocking(move || {
            let Self {
                cf,
                rt,
                caller,
                pid,
                ctl,
            } = self;
            done(
                control_read(&cf, &rt, &caller, pid, ctl, offset, size)
                    .map_err(|e| Errno::from_i32(e.errno())),
            );
        });
    }

    /// Writes on tokio's blocking pool, off the transport's threads.
    pub(super) fn write(
        self,
        offset: u64,
        data: Vec<u8>,
        done: impl FnOnce(Result<usize, Errno>) + Send + 'static,
    ) {
        let rt = self.rt.clone();
        rt.spawn_blocking(move || {
            let Self {
                cf,
                caller,
                pid,
                ctl,
                ..
            } = self;
            done(
                control_write(&cf, &caller, pid, ctl, offset, &data)
                    .map_err(|e| Errno::from_i32(e.errno())),
            );
        });
    }
}

fn control_read(
    cf: &ControlFiles,
    rt: &tokio::runtime::Handle,
    caller: &Caller,
    pid: u32,
    ctl: ControlFile,
    offset: u64,
    size: u32,
) -> Result<Vec<u8>, CtlError> {
    let slice = |bytes: Vec<u8>| window(&bytes, offset, size).to_vec();
    match ctl {
        ControlFile::Mem => cf.control.read_mem(caller, pid, offset, size as usize),
        ControlFile::Regs => cf.control.regs(caller, pid).map(slice),
        ControlFile::FpRegs => cf.control.fpregs(caller, pid).map(slice),
        ControlFile::DbRegs => cf.control.dbregs(caller, pid).map(slice),
        ControlFile::NoteId => cf
            .control
            .noteid(caller, pid)
            .map(|id| slice(id.to_string().into_bytes())),
        // Each read returns the next record, as Plan 9's wait file does.
        ControlFile::Wait => rt
            .block_on(cf.waiter.next(*caller, pid, offset > 0))
            .map(|w| w.map(|w| w.render()).unwrap_or_default()),
        ControlFile::Ctl | ControlFile::Note | ControlFile::NotePg => {
            Err(CtlError::Invalid("this file is write-only".into()))
        }
    }
}

fn control_write(
    cf: &ControlFiles,
    caller: &Caller,
    pid: u32,
    ctl: ControlFile,
    offset: u64,
    data: &[u8],
) -> Result<usize, CtlError> {
    match ctl {
        ControlFile::Ctl => cf.control.write_ctl(caller, pid, data).map(|()| data.len()),
        ControlFile::Note => cf.control.note(caller, pid, data).map(|()| data.len()),
        ControlFile::NotePg => cf.control.notepg(caller, pid, data).map(|()| data.len()),
        ControlFile::Mem => cf.control.write_mem(caller, pid, offset, data),
        // The register sets are written whole.
        ControlFile::Regs if offset == 0 => {
            cf.control.set_regs(caller, pid, data).map(|()| data.len())
        }
        ControlFile::FpRegs if offset == 0 => cf
            .control
            .set_fpregs(caller, pid, data)
            .map(|()| data.len()),
        ControlFile::DbRegs if offset == 0 => cf
            .control
            .set_dbregs(caller, pid, data)
            .map(|()| data.len()),
        _ => Err(CtlError::Invalid("this file takes no writes here".into())),
    }
}
