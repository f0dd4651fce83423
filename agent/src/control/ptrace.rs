//! The raw ptrace(2) and process_vm_readv(2) wrappers the control thread calls: the register
//! sets and their sizes, `mem` reads and writes, and the mapping of the kernel's errors to
//! `CtlError`. The ptrace calls must come from the control thread, the tracer.

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

pub(super) fn ptrace(
    req: libc::c_uint,
    pid: u32,
    addr: u64,
    data: u64,
) -> Result<libc::c_long, i32> {
    // SAFETY: errno is this thread's; PEEK requests return data in-band, so -1 is an error
    // only if errno was set by the call.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: every request used here takes (pid, addr, data) by value or points `data` at a
    // buffer the caller owns and sized for the request.
    let r = unsafe { libc::ptrace(req, pid as libc::pid_t, addr, data) };
    // SAFETY: this thread's errno, read right after the call.
    let errno = unsafe { *libc::__errno_location() };
    if r == -1 && errno != 0 {
        Err(errno)
    } else {
        Ok(r)
    }
}

pub(super) fn ptrace_err(pid: u32, what: &'static str, errno: i32) -> CtlError {
    match errno {
        libc::ESRCH => CtlError::NoProcess(pid),
        libc::EPERM => CtlError::NotPermitted(format!("{what}: the kernel refused")),
        libc::EIO | libc::EFAULT => CtlError::BadAddress(0),
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
        remote.push(libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: n as usize,
        });
        at += n;
    }
    let mut done = 0usize;
    // IOV_MAX is 1024 per call.
    for chunk in remote.chunks(1024) {
        let want: usize = chunk.iter().map(|v| v.iov_len).sum();
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: want,
        };
        // SAFETY: the local iovec points into `buf` with room for `want` bytes; the remote
        // ones are addresses in the other process, which the kernel checks.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &local,
                1,
                chunk.as_ptr(),
                chunk.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error();
            if done > 0 {
                break;
            }
            return Err(match errno {
                Some(libc::ESRCH) => CtlError::NoProcess(pid),
                Some(libc::EFAULT) | Some(libc::EIO) | Some(libc::ENOMEM) => {
                    CtlError::BadAddress(addr)
                }
                _ => CtlError::os("process_vm_readv"),
            });
        }
        done += n as usize;
        if (n as usize) < want {
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
            } else if errno == libc::ESRCH {
                Err(CtlError::NoProcess(pid))
            } else {
                Err(CtlError::BadAddress(word_at.max(addr)))
            }
        };
        let mut word = if lo == word_at && hi == word_at + W {
            [0u8; 8]
        } else {
            match ptrace(libc::PTRACE_PEEKDATA, pid, word_at, 0) {
                Ok(v) => v.to_ne_bytes(),
                Err(e) => return fail(e),
            }
        };
        let src = &data[(lo - addr) as usize..(hi - addr) as usize];
        word[(lo - word_at) as usize..(hi - word_at) as usize].copy_from_slice(src);
        if let Err(e) = ptrace(
            libc::PTRACE_POKEDATA,
            pid,
            word_at,
            u64::from_ne_bytes(word),
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
    let req = match set {
        RegSet::General => libc::PTRACE_GETREGS,
        RegSet::Float => libc::PTRACE_GETFPREGS,
        RegSet::Debug => {
            for (n, word) in buf.iter_mut().enumerate() {
                *word = peek_debugreg(pid, n)?;
            }
            return Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect());
        }
    };
    ptrace(req, pid, 0, buf.as_mut_ptr() as u64).map_err(|e| ptrace_err(pid, "GETREGS", e))?;
    Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect())
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
    // PEEKUSER returns the word itself; `ptrace` tells a -1 word from an error by errno.
    ptrace(libc::PTRACE_PEEKUSER, pid, at, 0)
        .map(|w| w as u64)
        .map_err(|e| ptrace_err(pid, "PTRACE_PEEKUSER", e))
}

pub(super) fn set_regs(pid: u32, set: RegSet, data: &[u8]) -> Result<(), CtlError> {
    let buf: Vec<u64> = data
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_ne_bytes(*c))
        .collect();
    let req = match set {
        RegSet::General => libc::PTRACE_SETREGS,
        RegSet::Float => libc::PTRACE_SETFPREGS,
        RegSet::Debug => return set_debugregs(pid, &buf),
    };
    ptrace(req, pid, 0, buf.as_ptr() as u64).map_err(|e| match e {
        libc::EIO | libc::EINVAL => {
            CtlError::Invalid("the kernel rejected the register set".into())
        }
        e => ptrace_err(pid, "SETREGS", e),
    })?;
    Ok(())
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
        ptrace(libc::PTRACE_POKEUSER, pid, debugreg_offset(n)?, value).map_err(|e| match e {
            libc::EIO | libc::EINVAL => CtlError::Invalid(format!(
                "the kernel rejected dr{n} = {value:#x} (a kernel address, or a bad dr7)"
            )),
            e => ptrace_err(pid, "PTRACE_POKEUSER", e),
        })?;
    }
    Ok(())
}
