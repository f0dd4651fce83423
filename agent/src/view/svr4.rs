//! The SVR4 (RISC/os PROC(4)) personality's pure parts: the process file names (five digits,
//! any number of leading zeros on lookup), the file's size and owner, and the PFC* control
//! requests as ioctls — their request codes, argument structs, the `PFCGETPR` record built from
//! the table, and the argument rules the manual gives (`PFCNICE`, `PFCKILL`).
//!
//! The manual's control commands are fcntl(2) commands; FUSE cannot forward fcntl, so here they
//! are ioctl(2) requests, each encoding its argument's size and direction the Linux way
//! (`_IOR`/`_IOW`/`_IOWR`), which is what FUSE needs to copy the argument in and out.
//! `include/prfcntl.h` is the same set for C; `tests/c/prfcntl_test.c` checks the two agree.
//! `docs/personalities/svr4.md` has the table of what maps one-to-one and what differs.

use std::mem::size_of;

use super::{Host, ViewError, process_state};
use crate::table::Process;

// ---- ioctl request encoding (asm-generic/ioctl.h: x86-64, aarch64, riscv) ----

pub(crate) const IOC_NONE: u32 = 0;
/// User space writes the argument (the driver reads it).
pub(crate) const IOC_WRITE: u32 = 1;
/// User space reads the argument (the driver writes it).
pub(crate) const IOC_READ: u32 = 2;
/// The request "type" byte: SVR4's `PIOC` group letter.
pub const PFC_TYPE: u8 = b'q';

/// `_IOC(dir, ty, nr, size)`; the QNX personality's devctl requests use it too.
pub(crate) const fn ioc(dir: u32, ty: u8, nr: u32, size: usize) -> u32 {
    // 14 size bits: an argument larger than 16 KiB cannot be described.
    assert!(size < (1 << 14));
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr
}
const fn io(nr: u32) -> u32 {
    ioc(IOC_NONE, PFC_TYPE, nr, 0)
}
const fn ior<T>(nr: u32) -> u32 {
    ioc(IOC_READ, PFC_TYPE, nr, size_of::<T>())
}
const fn iow<T>(nr: u32) -> u32 {
    ioc(IOC_WRITE, PFC_TYPE, nr, size_of::<T>())
}
const fn iowr<T>(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, PFC_TYPE, nr, size_of::<T>())
}

/// The direction bits of a request (`_IOC_DIR`): what FUSE copies in (write) and out (read).
pub const fn ioc_dir(req: u32) -> u32 {
    req >> 30
}
/// The argument size of a request (`_IOC_SIZE`).
pub const fn ioc_size(req: u32) -> usize {
    ((req >> 16) & 0x3fff) as usize
}

// ---- argument structs (identical in include/prfcntl.h) ----

/// `struct prtimespec`: seconds and nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrTimespec {
    pub tv_sec: i64,
    pub tv_nsec: i64,
}

/// `struct prpsinfo`, PFCGETPR's record: SVR4's `prpsinfo_t` fields that Linux can fill, in
/// fixed sizes with explicit padding (208 bytes on every 64-bit target). SVR4's kernel
/// addresses (`pr_addr`, `pr_wchan`) and pre-SVR4 fields (`pr_oldpri`, `pr_cpu`,
/// `pr_ottydev`) are left out; `pr_euid`/`pr_egid` are added, as the file's owner is them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrPsInfo {
    /// SVR4's numeric state: 1 SSLEEP, 2 SRUN, 3 SZOMB, 4 SSTOP.
    pub pr_state: i8,
    /// Its letter: `S`, `R`, `Z`, `T`.
    pub pr_sname: u8,
    /// Non-zero once the process has exited and not been waited for.
    pub pr_zomb: i8,
    /// SVR4 nice, 0..39 with 20 the default (Linux nice + 20).
    pub pr_nice: i8,
    /// Linux `PF_*` flags.
    pub pr_flag: u32,
    pub pr_uid: u32,
    pub pr_gid: u32,
    pub pr_euid: u32,
    pub pr_egid: u32,
    pub pr_pid: i32,
    pub pr_ppid: i32,
    pub pr_pgrp: i32,
    pub pr_sid: i32,
    /// Priority, higher is more urgent: `139 - prio` (ps's `pri`).
    pub pr_pri: i32,
    pub _pad: u32,
    /// The controlling tty as a `dev_t` (`makedev`), `PRNODEV` without one.
    pub pr_lttydev: u64,
    /// Virtual memory in pages.
    pub pr_size: u64,
    /// Resident set in pages.
    pub pr_rssize: u64,
    /// Start time since the epoch.
    pub pr_start: PrTimespec,
    /// User + system CPU time.
    pub pr_time: PrTimespec,
    /// Scheduling class: `TS`, `RT`, `DL` or `SYS`.
    pub pr_clname: [u8; PRCLSZ],
    /// The command name (comm).
    pub pr_fname: [u8; PRFNSZ],
    /// The start of the argument list, space-separated, NUL-terminated.
    pub pr_psargs: [u8; PRARGSZ],
}

pub const PRCLSZ: usize = 8;
pub const PRFNSZ: usize = 16;
pub const PRARGSZ: usize = 80;
/// `pr_lttydev` of a process without a controlling terminal.
pub const PRNODEV: u64 = u64::MAX;

/// PFCOPENT's argument. A FUSE server cannot hand the caller a new descriptor, so instead of
/// returning one the request fills `path` with the text file's path (NUL-terminated) for the
/// caller to open(2); `addr` selects the region as in the manual (0: the text).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrOpenText {
    pub addr: u64,
    pub path: [u8; PRPATHSZ],
}
pub const PRPATHSZ: usize = 4096;

/// PFCGETREGS/PFCPUTREGS's argument: "an array of ints" — the general registers as ptrace's
/// `user_regs_struct` holds them, one 64-bit word each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrRegs {
    pub r: [u64; PRREGS_WORDS],
}
pub const PRREGS_WORDS: usize = size_of::<libc::user_regs_struct>() / 8;

// ---- the requests ----

/// Copy the process record (`PrPsInfo`) to the argument.
pub const PFCGETPR: u32 = ior::<PrPsInfo>(1);
/// Name the text file (`PrOpenText`).
pub const PFCOPENT: u32 = iowr::<PrOpenText>(2);
/// Mark the text, or the region holding the address in the argument, for exclusive use.
pub const PFCEXCLU: u32 = iow::<u64>(3);
/// Stop the process and wait for it to stop; the exit status if it has exited.
pub const PFCSTOP: u32 = ior::<i32>(4);
/// Wait for the process to stop; the exit status if it has exited.
pub const PFCWSTOP: u32 = ior::<i32>(5);
/// Make the process runnable.
pub const PFCRUN: u32 = io(6);
/// Set the signal trace mask (bit n-1 for signal n); non-zero starts tracing, zero ends it.
pub const PFCSMASK: u32 = iow::<u64>(7);
/// Get the signal trace mask.
pub const PFCGMASK: u32 = ior::<u64>(8);
/// Clear the current signal.
pub const PFCCSIG: u32 = io(9);
/// Send the signal in the argument.
pub const PFCKILL: u32 = iow::<i32>(10);
/// Set the stop-on-exec flag.
pub const PFCSEXEC: u32 = io(11);
/// Clear the stop-on-exec flag.
pub const PFCREXEC: u32 = io(12);
/// Set the nice priority in the argument (SVR4's 0..39).
pub const PFCNICE: u32 = iow::<i32>(13);
/// Single-step the process.
pub const PFCSSTEP: u32 = io(14);
/// Read the registers into the argument.
pub const PFCGETREGS: u32 = ior::<PrRegs>(15);
/// Write the registers from the argument.
pub const PFCPUTREGS: u32 = iow::<PrRegs>(16);

/// Every request, by name, in the header's order.
pub const REQUESTS: [(&str, u32); 16] = [
    ("PFCGETPR", PFCGETPR),
    ("PFCOPENT", PFCOPENT),
    ("PFCEXCLU", PFCEXCLU),
    ("PFCSTOP", PFCSTOP),
    ("PFCWSTOP", PFCWSTOP),
    ("PFCRUN", PFCRUN),
    ("PFCSMASK", PFCSMASK),
    ("PFCGMASK", PFCGMASK),
    ("PFCCSIG", PFCCSIG),
    ("PFCKILL", PFCKILL),
    ("PFCSEXEC", PFCSEXEC),
    ("PFCREXEC", PFCREXEC),
    ("PFCNICE", PFCNICE),
    ("PFCSSTEP", PFCSSTEP),
    ("PFCGETREGS", PFCGETREGS),
    ("PFCPUTREGS", PFCPUTREGS),
];

/// Why a PFC request is refused, with the errno the manual gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PfcError {
    /// "arg points to an invalid signal value"; a nice below zero or above 39; an argument
    /// of the wrong size. EINVAL.
    #[error("invalid argument")]
    Invalid,
    /// "Only root can reduce a process' priority" (raise its urgency). EPERM.
    #[error("only root may lower the nice value")]
    NotPermitted,
    /// A request code that is none of the PFC* requests. ENOTTY, as for any ioctl a file
    /// does not know.
    #[error("not a PFC request")]
    Unknown,
}

impl PfcError {
    pub fn errno(self) -> i32 {
        match self {
            PfcError::Invalid => libc::EINVAL,
            PfcError::NotPermitted => libc::EPERM,
            PfcError::Unknown => libc::ENOTTY,
        }
    }
}

/// A decoded PFC request: the code and its argument, checked before the process is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetPr,
    /// The region holding `addr`, or the text (0).
    OpenText(u64),
    Exclusive(u64),
    Stop,
    WaitStop,
    Run,
    SetMask(u64),
    GetMask,
    ClearSignal,
    Kill(i32),
    SetExec,
    ClearExec,
    /// The SVR4 nice value asked for (0..39); `nice_request` checks it against the process.
    Nice(i32),
    Step,
    GetRegs,
    PutRegs(Vec<u8>),
}

/// Decodes an ioctl on a process file. FUSE has copied in exactly the size the code encodes;
/// any other length is EINVAL.
pub fn request(cmd: u32, arg: &[u8]) -> Result<Request, PfcError> {
    fn word<const N: usize>(arg: &[u8]) -> Result<[u8; N], PfcError> {
        arg.get(..N)
            .filter(|_| arg.len() == N)
            .and_then(|b| b.try_into().ok())
            .ok_or(PfcError::Invalid)
    }
    let int = |arg: &[u8]| word::<4>(arg).map(i32::from_ne_bytes);
    let long = |arg: &[u8]| word::<8>(arg).map(u64::from_ne_bytes);
    Ok(match cmd {
        PFCGETPR => Request::GetPr,
        // Only the address is read; the path is the answer.
        PFCOPENT if arg.len() == size_of::<PrOpenText>() => Request::OpenText(long(&arg[..8])?),
        PFCOPENT => return Err(PfcError::Invalid),
        PFCEXCLU => Request::Exclusive(long(arg)?),
        PFCSTOP => Request::Stop,
        PFCWSTOP => Request::WaitStop,
        PFCRUN => Request::Run,
        PFCSMASK => Request::SetMask(long(arg)?),
        PFCGMASK => Request::GetMask,
        PFCCSIG => Request::ClearSignal,
        PFCKILL => Request::Kill(kill_signal(int(arg)?)?),
        PFCSEXEC => Request::SetExec,
        PFCREXEC => Request::ClearExec,
        PFCNICE => {
            let n = int(arg)?;
            if !(0..=39).contains(&n) {
                return Err(PfcError::Invalid);
            }
            Request::Nice(n)
        }
        PFCSSTEP => Request::Step,
        PFCGETREGS => Request::GetRegs,
        PFCPUTREGS if arg.len() == size_of::<PrRegs>() => Request::PutRegs(arg.to_vec()),
        PFCPUTREGS => return Err(PfcError::Invalid),
        _ => return Err(PfcError::Unknown),
    })
}

/// PFCOPENT's answer: `path` in a `PrOpenText` (the address echoed back), NUL-terminated.
/// A path that does not fit is ENAMETOOLONG's business: EINVAL here, as it cannot be named.
pub fn open_text_reply(addr: u64, path: &[u8]) -> Result<Vec<u8>, PfcError> {
    if path.len() >= PRPATHSZ || path.contains(&0) {
        return Err(PfcError::Invalid);
    }
    let mut out = Vec::with_capacity(size_of::<PrOpenText>());
    out.extend_from_slice(&addr.to_ne_bytes());
    out.extend_from_slice(path);
    out.resize(size_of::<PrOpenText>(), 0);
    Ok(out)
}

// ---- names, size, owner ----

/// The directory entry of a process: its pid in five digits, zero-padded (wider pids, which
/// Linux allows up to 4194304, are printed whole rather than cut).
pub fn file_name(pid: u32) -> String {
    format!("{pid:05}")
}

/// The pid a looked-up name means: decimal digits only, any number of leading zeros
/// (`123`, `0123` and `00123` are the same file). `None` for anything else, and for pid 0.
pub fn parse_name(name: &str) -> Option<u32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = name.trim_start_matches('0');
    if digits.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// The file's size: "the amount of virtual memory the process is currently using".
pub fn file_size(p: &Process, host: &Host) -> Result<u64, ViewError> {
    let t = p.leader().ok_or(ViewError::NoProcess)?;
    Ok(t.total_vm * host.page_size)
}

/// The file's owner and group: the effective uid and gid (the leader's latest record, as
/// a setuid exec or setresuid changes them).
pub fn owner(p: &Process) -> (u32, u32) {
    p.leader().map_or((p.euid, p.egid), |t| (t.euid, t.egid))
}

// ---- PFCGETPR ----

/// PFCGETPR's record for a process.
pub fn getpr(p: &Process, host: &Host) -> Result<PrPsInfo, ViewError> {
    let t = p.leader().ok_or(ViewError::NoProcess)?;
    let (state, sname) = match process_state(p) {
        'R' => (2, b'R'),
        'T' | 't' => (4, b'T'),
        'Z' | 'X' => (3, b'Z'),
        // S, D, I, P: asleep.
        _ => (1, b'S'),
    };
    let sum = p.totals(&t, true);
    let ts = |ns: u64| PrTimespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    };
    let [file, anon, _, shmem] = t.rss_sum;
    let clname: &[u8] = if p.kthread {
        b"SYS"
    } else {
        match t.policy {
            1 | 2 => b"RT",
            6 => b"DL",
            _ => b"TS",
        }
    };
    let mut args = Vec::new();
    for (i, a) in p.argv().enumerate() {
        if i > 0 {
            args.push(b' ');
        }
        args.extend_from_slice(a);
    }
    if args.is_empty() {
        args = p.comm.clone();
    }
    Ok(PrPsInfo {
        pr_state: state,
        pr_sname: sname,
        pr_zomb: i8::from(state == 3),
        pr_nice: (t.static_prio - 100) as i8,
        pr_flag: t.pf_flags,
        pr_uid: p.uid,
        pr_gid: p.gid,
        pr_euid: p.euid,
        pr_egid: p.egid,
        pr_pid: p.pid as i32,
        pr_ppid: t.ppid as i32,
        pr_pgrp: t.pgid as i32,
        pr_sid: t.sid as i32,
        pr_pri: 139 - t.prio,
        _pad: 0,
        pr_lttydev: if t.tty_nr == 0 {
            PRNODEV
        } else {
            let major = (t.tty_nr >> 8) & 0xfff;
            let minor = (t.tty_nr & 0xff) | ((t.tty_nr >> 12) & 0xfff00);
            nix::sys::stat::makedev(major.into(), minor.into())
        },
        pr_size: t.total_vm,
        pr_rssize: file + anon + shmem,
        pr_start: ts(host.boot_epoch_ns + p.start_boottime),
        pr_time: ts(sum.utime + sum.stime),
        pr_clname: padded(clname),
        pr_fname: padded(&p.comm),
        pr_psargs: padded(&args),
    })
}

/// `src` in a NUL-terminated fixed field, cut to leave room for the NUL.
fn padded<const N: usize>(src: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = src.len().min(N - 1);
    out[..n].copy_from_slice(&src[..n]);
    out
}

impl PrPsInfo {
    /// The bytes PFCGETPR copies out.
    pub fn as_bytes(&self) -> Vec<u8> {
        // SAFETY: repr(C), integer and byte-array fields only, padding explicit (`_pad`), so
        // every byte is initialised.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
            .to_vec()
    }
}

// ---- argument rules ----

/// PFCNICE: the SVR4 nice value asked for (0..39) as a Linux nice value (-20..19). It "cannot
/// be set less than zero" (nor above 39: EINVAL), and only root may lower it below the current
/// value `current` (SVR4 scale), which would raise the process's priority (EPERM).
pub fn nice_request(arg: i32, current: i32, privileged: bool) -> Result<i32, PfcError> {
    if !(0..=39).contains(&arg) {
        return Err(PfcError::Invalid);
    }
    if arg < current && !privileged {
        return Err(PfcError::NotPermitted);
    }
    Ok(arg - 20)
}

/// PFCKILL: a signal number the process can be sent (1..=SIGRTMAX); else EINVAL. libc's
/// SIGRTMAX(): nix's `Signal` has no real-time signals.
pub fn kill_signal(arg: i32) -> Result<i32, PfcError> {
    if (1..=libc::SIGRTMAX()).contains(&arg) {
        Ok(arg)
    } else {
        Err(PfcError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{leader_mut, test_process};

    const HOST: Host = Host {
        boot_epoch_ns: 1_700_000_000_000_000_000,
        clock_ticks: 100,
        page_size: 4096,
    };

    #[test]
    fn names_are_five_digits_and_lookups_ignore_leading_zeros() {
        assert_eq!(file_name(123), "00123");
        assert_eq!(file_name(1), "00001");
        assert_eq!(file_name(4_194_304), "4194304");
        for name in ["123", "0123", "00123", "0000000123"] {
            assert_eq!(parse_name(name), Some(123), "{name}");
        }
        for name in ["", "0", "00000", "12a", "+123", "-1", " 123", "99999999999"] {
            assert_eq!(parse_name(name), None, "{name:?}");
        }
        assert_eq!(parse_name(&file_name(4_194_304)), Some(4_194_304));
    }

    #[test]
    fn size_is_virtual_memory_and_owner_is_effective_ids() {
        let mut p = test_process();
        let mut t = leader_mut(&mut p);
        t.total_vm = 2000;
        t.euid = 0;
        t.egid = 5;
        drop(t);
        assert_eq!(file_size(&p, &HOST).unwrap(), 2000 * 4096);
        assert_eq!(owner(&p), (0, 5));
    }

    #[test]
    fn requests_encode_direction_and_size() {
        assert_eq!(ioc_dir(PFCGETPR), IOC_READ);
        assert_eq!(ioc_size(PFCGETPR), 208);
        assert_eq!(ioc_dir(PFCOPENT), IOC_READ | IOC_WRITE);
        assert_eq!(ioc_size(PFCOPENT), 8 + 4096);
        assert_eq!(ioc_dir(PFCKILL), IOC_WRITE);
        assert_eq!(ioc_size(PFCKILL), 4);
        assert_eq!(ioc_dir(PFCRUN), IOC_NONE);
        assert_eq!(ioc_size(PFCRUN), 0);
        assert_eq!(ioc_size(PFCGETREGS), size_of::<libc::user_regs_struct>());
        // _IOR('q', 1, 208 bytes), computed by hand.
        assert_eq!(PFCGETPR, 0x80d0_7101);
        let mut codes: Vec<u32> = REQUESTS.iter().map(|r| r.1).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), REQUESTS.len(), "every request is distinct");
    }

    #[test]
    fn getpr_golden() {
        let mut p = test_process();
        let mut t = leader_mut(&mut p);
        t.total_vm = 2000;
        t.rss_sum = [100, 50, 7, 3];
        t.utime = 1_000_000_000;
        t.stime = 500_000_000;
        t.sum_exec_runtime = 1_500_000_000;
        t.static_prio = 125; // nice 5
        t.prio = 125;
        t.tty_nr = (136 << 8) | 3;
        t.pf_flags = 0x0040_0100;
        drop(t);
        let got = getpr(&p, &HOST).unwrap();
        assert_eq!((got.pr_state, got.pr_sname, got.pr_zomb), (1, b'S', 0));
        assert_eq!((got.pr_nice, got.pr_pri), (25, 14));
        assert_eq!(got.pr_flag, 0x0040_0100);
        assert_eq!(
            (got.pr_pid, got.pr_ppid, got.pr_pgrp, got.pr_sid),
            (4242, 4200, 4242, 4200)
        );
        assert_eq!(got.pr_lttydev, nix::sys::stat::makedev(136, 3));
        assert_eq!((got.pr_size, got.pr_rssize), (2000, 153));
        assert_eq!(
            got.pr_start,
            PrTimespec {
                tv_sec: 1_700_000_002,
                tv_nsec: 0
            }
        );
        assert_eq!(
            got.pr_time,
            PrTimespec {
                tv_sec: 1,
                tv_nsec: 500_000_000
            }
        );
        assert_eq!(&got.pr_clname[..3], b"TS\0");
        assert_eq!(&got.pr_fname[..6], b"sleep\0");
        assert_eq!(&got.pr_psargs[..11], b"sleep 1000\0");
        assert_eq!(got.as_bytes().len(), 208);
    }

    #[test]
    fn getpr_states_class_and_long_args() {
        let mut p = test_process();
        leader_mut(&mut p).state = 0x104;
        leader_mut(&mut p).policy = 1;
        p.cmdline = [b'x'; 200].iter().copied().chain([0]).collect();
        let got = getpr(&p, &HOST).unwrap();
        assert_eq!((got.pr_state, got.pr_sname), (4, b'T'));
        assert_eq!(&got.pr_clname[..3], b"RT\0");
        assert_eq!(got.pr_psargs[78], b'x');
        assert_eq!(got.pr_psargs[79], 0, "always NUL-terminated");
        assert_eq!(got.pr_lttydev, PRNODEV);
        p.kthread = true;
        leader_mut(&mut p).state = 0;
        leader_mut(&mut p).exit_state = 32; // EXIT_ZOMBIE
        let got = getpr(&p, &HOST).unwrap();
        assert_eq!((got.pr_state, got.pr_sname, got.pr_zomb), (3, b'Z', 1));
        assert_eq!(&got.pr_clname[..4], b"SYS\0");
    }

    #[test]
    fn requests_decode_and_malformed_ones_are_refused() {
        assert_eq!(request(PFCGETPR, &[]), Ok(Request::GetPr));
        assert_eq!(request(PFCRUN, &[]), Ok(Request::Run));
        assert_eq!(
            request(PFCKILL, &15i32.to_ne_bytes()),
            Ok(Request::Kill(15))
        );
        assert_eq!(
            request(PFCKILL, &0i32.to_ne_bytes()),
            Err(PfcError::Invalid)
        );
        assert_eq!(request(PFCKILL, &[1, 0]), Err(PfcError::Invalid), "short");
        assert_eq!(
            request(PFCNICE, &25i32.to_ne_bytes()),
            Ok(Request::Nice(25))
        );
        assert_eq!(
            request(PFCNICE, &(-1i32).to_ne_bytes()),
            Err(PfcError::Invalid)
        );
        assert_eq!(
            request(PFCSMASK, &(1u64 << 9).to_ne_bytes()),
            Ok(Request::SetMask(512))
        );
        let mut opent = vec![0u8; size_of::<PrOpenText>()];
        opent[..8].copy_from_slice(&0x4000u64.to_ne_bytes());
        assert_eq!(request(PFCOPENT, &opent), Ok(Request::OpenText(0x4000)));
        assert_eq!(request(PFCOPENT, &opent[..8]), Err(PfcError::Invalid));
        let regs = vec![7u8; size_of::<PrRegs>()];
        assert_eq!(
            request(PFCPUTREGS, &regs),
            Ok(Request::PutRegs(regs.clone()))
        );
        assert_eq!(request(PFCPUTREGS, &regs[1..]), Err(PfcError::Invalid));
        // Another driver's code, or a PFC code with the wrong size or direction.
        assert_eq!(request(0x5401, &[]), Err(PfcError::Unknown));
        assert_eq!(request(PFCKILL & !(3 << 30), &[]), Err(PfcError::Unknown));
        assert_eq!(PfcError::Unknown.errno(), libc::ENOTTY);
    }

    #[test]
    fn open_text_reply_is_the_path_nul_terminated() {
        let r = open_text_reply(0, b"/usr/bin/sleep").unwrap();
        assert_eq!(r.len(), size_of::<PrOpenText>());
        assert_eq!(&r[8..23], b"/usr/bin/sleep\0");
        assert_eq!(
            open_text_reply(0, &[b'a'; PRPATHSZ]),
            Err(PfcError::Invalid)
        );
    }

    #[test]
    fn nice_and_kill_arguments_follow_the_manual() {
        assert_eq!(nice_request(25, 20, false), Ok(5));
        assert_eq!(nice_request(20, 20, false), Ok(0));
        assert_eq!(nice_request(10, 20, false), Err(PfcError::NotPermitted));
        assert_eq!(nice_request(0, 20, true), Ok(-20));
        assert_eq!(nice_request(-1, 20, true), Err(PfcError::Invalid));
        assert_eq!(nice_request(40, 20, true), Err(PfcError::Invalid));
        assert_eq!(PfcError::NotPermitted.errno(), libc::EPERM);
        assert_eq!(kill_signal(libc::SIGTERM), Ok(libc::SIGTERM));
        assert_eq!(kill_signal(0).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(kill_signal(65), Err(PfcError::Invalid));
    }

    /// The C header must agree with these definitions: compile the test program with the
    /// system's C compiler and compare what it prints. Skips (saying so) without `cc`.
    #[test]
    fn c_header_matches_rust_codes_and_sizes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let src = root.join("tests/c/prfcntl_test.c");
        let out = std::env::temp_dir().join(format!("prfcntl_test-{}", std::process::id()));
        let cc = std::process::Command::new("cc")
            .arg("-Wall")
            .arg("-Werror")
            .arg("-I")
            .arg(root.join("include"))
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .output();
        let cc = match cc {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("SKIPPED: no `cc` on PATH to compile {}", src.display());
                return;
            }
            r => r.expect("running cc"),
        };
        assert!(
            cc.status.success(),
            "cc failed:\n{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let run = std::process::Command::new(&out)
            .output()
            .expect("running it");
        let _ = std::fs::remove_file(&out);
        assert!(run.status.success());
        let mut want = String::new();
        for (name, code) in REQUESTS {
            want.push_str(&format!("{name} {code:#010x}\n"));
        }
        want.push_str(&format!(
            "sizeof prpsinfo {}\nsizeof propentext {}\nsizeof prregs {}\n",
            size_of::<PrPsInfo>(),
            size_of::<PrOpenText>(),
            size_of::<PrRegs>()
        ));
        want.push_str(&format!(
            "offsetof pr_lttydev {}\noffsetof pr_start {}\noffsetof pr_psargs {}\n",
            std::mem::offset_of!(PrPsInfo, pr_lttydev),
            std::mem::offset_of!(PrPsInfo, pr_start),
            std::mem::offset_of!(PrPsInfo, pr_psargs)
        ));
        assert_eq!(String::from_utf8_lossy(&run.stdout), want);
    }
}
