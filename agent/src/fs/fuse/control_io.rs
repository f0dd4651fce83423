//! Reads and writes of control files, carried out by the control layer on a blocking thread
//! (a write may wait for its process to stop; a `wait` read, for a child to exit).

use super::*;

pub(super) fn control_read(
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

pub(super) fn control_write(
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
