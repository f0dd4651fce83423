//! The ptrace(2) and process_vm_readv(2) calls the control thread makes: the register
//! sets and their sizes, `mem` reads and writes, and the mapping of the kernel's errors to
//! `CtlError`. The ptrace calls must come from the control thread, the tracer.

use std::io::IoSliceMut;

use nix::{
    errno::Errno,
    sys::{
        ptrace,
        uio::{RemoteIoVec, process_vm_readv},
    },
    unistd::Pid,
};

use super::CtlError;

pub const REGS_SIZE: usize = size_of::<libc::user_regs_struct>();
pub const FPREGS_SIZE: usize = size_of::<libc::user_fpregs_struct>();
/// x86-64's eight debug registers, `u_debugreg` in `struct user` (dr4 and dr5 do not exist
/// and read as 0).
pub const DBREGS_SIZE: usize = 8 * 8;

/// A register set, read and written whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RegSet {
    /// `user_regs_struct`.
    General,
    /// `user_fpregs_struct`.
    Float,
    /// `u_debugreg[8]`.
    Debug,
}

impl RegSet {
    pub(super) fn size(self) -> usize {
        match self {
            RegSet::General => REGS_SIZE,
            RegSet::Float => FPREGS_SIZE,
            RegSet::Debug => DBREGS_SIZE,
        }
    }
}

fn nix_pid(pid: u32) -> Pid {
    Pid::from_raw(pid as libc::pid_t)
}

/// How a stopped tracee goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resume {
    Cont,
    Step,
    Detach,
}

/// PTRACE_CONT, PTRACE_SINGLESTEP or PTRACE_DETACH, delivering `sig` (0: none). Raw:
/// nix's `Signal` has no real-time signals, and a tracee stopped for SIGRTMIN+n must be given
/// it back.
pub(super) fn resume(how: Resume, pid: u32, sig: i32) -> Result<(), Errno> {
    let req = match how {
        Resume::Cont => libc::PTRACE_CONT,
        Resume::Step => libc::PTRACE_SINGLESTEP,
        Resume::Detach => libc::PTRACE_DETACH,
    };
    raw(req, pid, 0, sig as u64)
}

/// A ptrace request that answers 0 or -1 (no PEEK). For what nix cannot say: a raw signal
/// number, and PTRACE_GETFPREGS/SETFPREGS (nix has only GETREGSET, which takes the tracee's
/// register layout, not the tracer's: a 32-bit tracee's is another size).
fn raw(req: libc::c_uint, pid: u32, addr: u64, data: u64) -> Result<(), Errno> {
    // SAFETY: the requests used here take (pid, addr, data) by value, or point `data` at a
    // buffer the caller owns and sized for the request.
    Errno::result(unsafe { libc::ptrace(req, pid as libc::pid_t, addr, data) }).map(drop)
}

pub(super) fn seize(pid: u32) -> Result<(), Errno> {
    ptrace::seize(nix_pid(pid), ptrace::Options::empty())
}

pub(super) fn interrupt(pid: u32) -> Result<(), Errno> {
    ptrace::interrupt(nix_pid(pid))
}

pub(super) fn ptrace_err(pid: u32, what: &'static str, errno: Errno) -> CtlError {
    match errno {
        Errno::ESRCH => CtlError::NoProcess(pid),
        Errno::EPERM => CtlError::NotPermitted(format!("{what}: the kernel refused")),
        Errno::EIO | Errno::EFAULT => CtlError::BadAddress(0),
        errno => CtlError::Os { what, errno },
    }
}

/// process_vm_readv, one remote iovec per page: the kernel transfers whole iovecs only, so a
/// read running into an unmapped page stops at that page instead of failing altogether.
pub(super) fn read_mem(pid: u32, addr: u64, len: usize) -> Result<Vec<u8>, CtlError> {
    let page = crate::sys::page_size();
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let mut remote = Vec::new();
    let mut at = addr;
    let end = addr
        .checked_add(len as u64)
        .ok_or(CtlError::BadAddress(addr))?;
    while at < end {
        let next = ((at / page) + 1) * page;
        let n = next.min(end) - at;
        remote.push(RemoteIoVec {
            base: at as usize,
            len: n as usize,
        });
        at += n;
    }
    let mut done = 0usize;
    // IOV_MAX is 1024 per call.
    for chunk in remote.chunks(1024) {
        let want: usize = chunk.iter().map(|v| v.len).sum();
        let local = &mut buf[done..done + want];
        let n = match process_vm_readv(nix_pid(pid), &mut [IoSliceMut::new(local)], chunk) {
            Ok(n) => n,
            Err(_) if done > 0 => break,
            Err(Errno::ESRCH) => return Err(CtlError::NoProcess(pid)),
            Err(Errno::EFAULT | Errno::EIO | Errno::ENOMEM) => {
                return Err(CtlError::BadAddress(addr));
            }
            Err(errno) => {
                return Err(CtlError::Os {
                    what: "process_vm_readv",
                    errno,
                });
            }
        };
        done += n;
        if n < want {
            break;
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// PTRACE_POKEDATA word by word (it writes through read-only text mappings, which a
/// debugger's breakpoints need; process_vm_writev does not). Partial words at either end are
/// read first and merged. Returns the bytes written: short if it ran into an unmapped page.
pub(super) fn poke(pid: u32, addr: u64, data: &[u8]) -> Result<usize, CtlError> {
    const W: u64 = 8;
    let end = addr
        .checked_add(data.len() as u64)
        .ok_or(CtlError::BadAddress(addr))?;
    let mut word_at = addr & !(W - 1);
    let mut written = 0usize;
    while word_at < end {
        let lo = addr.max(word_at);
        let hi = end.min(word_at + W);
        let fail = |errno| {
            if written > 0 {
                Ok(written)
            } else if errno == Errno::ESRCH {
                Err(CtlError::NoProcess(pid))
            } else {
                Err(CtlError::BadAddress(word_at.max(addr)))
            }
        };
        let mut word = if lo == word_at && hi == word_at + W {
            [0u8; 8]
        } else {
            match ptrace::read(nix_pid(pid), word_at as ptrace::AddressType) {
                Ok(v) => v.to_ne_bytes(),
                Err(e) => return fail(e),
            }
        };
        let src = &data[(lo - addr) as usize..(hi - addr) as usize];
        word[(lo - word_at) as usize..(hi - word_at) as usize].copy_from_slice(src);
        if let Err(e) = ptrace::write(
            nix_pid(pid),
            word_at as ptrace::AddressType,
            i64::from_ne_bytes(word),
        ) {
            return fail(e);
        }
        written += src.len();
        word_at += W;
    }
    Ok(written)
}

pub(super) fn get_regs(pid: u32, set: RegSet) -> Result<Vec<u8>, CtlError> {
    // u64 storage: both structs are 8-byte aligned.
    let mut buf = vec![0u64; set.size() / 8];
    match set {
        RegSet::General => {
            let regs = ptrace::getregs(nix_pid(pid)).map_err(|e| ptrace_err(pid, "GETREGS", e))?;
            return Ok(regs_bytes(&regs));
        }
        RegSet::Float => raw(libc::PTRACE_GETFPREGS, pid, 0, buf.as_mut_ptr() as u64)
            .map_err(|e| ptrace_err(pid, "GETREGS", e))?,
        RegSet::Debug => {
            for (n, word) in buf.iter_mut().enumerate() {
                *word = peek_debugreg(pid, n)?;
            }
        }
    }
    Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// The bytes of a `user_regs_struct`, as the `regs` files show them.
fn regs_bytes(regs: &libc::user_regs_struct) -> Vec<u8> {
    // SAFETY: user_regs_struct is 27 u64s, no padding: every byte is initialised.
    unsafe {
        std::slice::from_raw_parts(
            (regs as *const libc::user_regs_struct).cast::<u8>(),
            REGS_SIZE,
        )
    }
    .to_vec()
}

/// A `user_regs_struct` from the bytes of a `regs` write (REGS_SIZE of them).
fn regs_from(data: &[u8]) -> Option<libc::user_regs_struct> {
    // SAFETY: `data` holds a whole struct, read unaligned, and any u64 is a valid register.
    (data.len() == REGS_SIZE).then(|| unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) })
}

/// Where debug register `n` is in the tracee's `struct user`, for PEEKUSER and POKEUSER.
#[cfg(target_arch = "x86_64")]
fn debugreg_offset(n: usize) -> Result<u64, CtlError> {
    Ok((std::mem::offset_of!(libc::user, u_debugreg) + 8 * n) as u64)
}

#[cfg(not(target_arch = "x86_64"))]
fn debugreg_offset(_n: usize) -> Result<u64, CtlError> {
    Err(CtlError::Unsupported(
        "the debug registers are x86-64's u_debugreg",
    ))
}

fn peek_debugreg(pid: u32, n: usize) -> Result<u64, CtlError> {
    let at = debugreg_offset(n)?;
    // PEEKUSER returns the word itself; nix tells a -1 word from an error by errno.
    ptrace::read_user(nix_pid(pid), at as ptrace::AddressType)
        .map(|w| w as u64)
        .map_err(|e| ptrace_err(pid, "PTRACE_PEEKUSER", e))
}

pub(super) fn set_regs(pid: u32, set: RegSet, data: &[u8]) -> Result<(), CtlError> {
    let rejected = |e| match e {
        Errno::EIO | Errno::EINVAL => {
            CtlError::Invalid("the kernel rejected the register set".into())
        }
        e => ptrace_err(pid, "SETREGS", e),
    };
    match set {
        RegSet::General => {
            let regs = regs_from(data).ok_or_else(|| {
                CtlError::Invalid(format!(
                    "a register set is {REGS_SIZE} bytes, got {}",
                    data.len()
                ))
            })?;
            ptrace::setregs(nix_pid(pid), regs).map_err(rejected)
        }
        RegSet::Float => {
            let buf: Vec<u64> = words(data);
            raw(libc::PTRACE_SETFPREGS, pid, 0, buf.as_ptr() as u64).map_err(rejected)
        }
        RegSet::Debug => set_debugregs(pid, &words(data)),
    }
}

fn words(data: &[u8]) -> Vec<u64> {
    data.as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_ne_bytes(*c))
        .collect()
}

/// POKEUSER dr0…dr3 (addresses), dr6 (status), then dr7 (control, which enables the
/// addresses). dr4 and dr5 do not exist: they must be 0.
fn set_debugregs(pid: u32, regs: &[u64]) -> Result<(), CtlError> {
    if regs.get(4..6).is_none_or(|r| r.iter().any(|&w| w != 0)) {
        return Err(CtlError::Invalid(
            "dr4 and dr5 do not exist and must be 0".into(),
        ));
    }
    for n in [0, 1, 2, 3, 6, 7] {
        let value = regs.get(n).copied().unwrap_or(0);
        let at = debugreg_offset(n)? as ptrace::AddressType;
        ptrace::write_user(nix_pid(pid), at, value as i64).map_err(|e| match e {
            Errno::EIO | Errno::EINVAL => CtlError::Invalid(format!(
                "the kernel rejected dr{n} = {value:#x} (a kernel address, or a bad dr7)"
            )),
            e => ptrace_err(pid, "PTRACE_POKEUSER", e),
        })?;
    }
    Ok(())
}
