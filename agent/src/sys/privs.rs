//! The agent's capabilities: it runs as root, but keeps only what it uses. `drop_to_agent`
//! runs before the runtime starts any thread (capabilities are per thread; every thread the
//! agent creates later inherits the reduced set) and cuts the bounding, permitted, effective,
//! inheritable and ambient sets to `KEEP` (and `FOR_WRITERS`, permitted only), so neither the
//! agent nor anything it could be made to run can load a module or reconfigure the network,
//! and only a writer's throwaway thread (`run_as`), as that writer, changes uids or writes
//! files the agent does not own.

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_KILL: u32 = 5;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_NICE: u32 = 23;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What the agent needs for its whole life, and why (docs/security.md has the same table):
/// - `CAP_BPF`, `CAP_PERFMON`: load and attach the programs; after that the maps, the ring
///   buffer and the task iterator are used through fds, but kernels before 6.5 refuse every
///   bpf(2) command without CAP_BPF when `kernel.unprivileged_bpf_disabled` is set.
/// - `CAP_SYS_ADMIN`: `bpfproc mount` mounts views on demand, a stale mount is detached
///   with umount2(2), and `-o passthrough` registers its memfds as FUSE backing files
///   (FUSE_DEV_IOC_BACKING_OPEN); before 5.8 the BPF side needs it too.
/// - `CAP_SYS_PTRACE`: the control layer's ptrace and process_vm_readv of any user's process,
///   and reading other users' `/proc/PID/{exe,maps,environ,cmdline}`.
/// - `CAP_DAC_READ_SEARCH`: `/proc/PID/environ`, `io` and `fd/` are mode 0400/0500 of the
///   process's owner; root reads them through this capability.
/// - `CAP_KILL`: the control layer's signals to any user's process.
/// - `CAP_SYS_NICE`: SVR4's PFCNICE on any user's process (setpriority(2) on another uid's
///   process needs it, whichever way the value moves).
pub const KEEP: &[u32] = &[
    CAP_DAC_READ_SEARCH,
    CAP_KILL,
    CAP_SYS_NICE,
    CAP_SYS_PTRACE,
    CAP_SYS_ADMIN,
    CAP_PERFMON,
    CAP_BPF,
];

/// Held in the permitted set only, raised by no long-lived thread: a write through the view to
/// one of the kernel's own files (`oom_score_adj`, `sys/…`) runs on a throwaway thread that
/// becomes the writer (`run_as`): `CAP_SETUID` and `CAP_SETGID` to take the writer's ids,
/// and `CAP_DAC_OVERRIDE` and `CAP_SYS_RESOURCE` so that a root writer that has them keeps
/// them there (procfs checks them: root writes any process's `oom_score_adj`, and lowers it
/// below the floor only with `CAP_SYS_RESOURCE`). That thread keeps only what the writer
/// itself has.
pub const FOR_WRITERS: &[u32] = &[CAP_DAC_OVERRIDE, CAP_SETGID, CAP_SETUID, CAP_SYS_RESOURCE];

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
}

fn os(what: &'static str) -> PrivError {
    PrivError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// The mask of `caps`.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0u64, |m, &c| m | (1u64 << c))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// _LINUX_CAPABILITY_VERSION_3: two `CapData`, for capabilities 0–31 and 32–63.
const CAP_V3: u32 = 0x2008_0522;

/// Cuts the calling thread's effective set to `effective`, and its permitted and bounding sets
/// to `effective | permitted`. Must run while the process has one thread. Capabilities the
/// process does not have are not gained; a bounding set already cut further (a systemd unit's
/// CapabilityBoundingSet) stays as it is.
pub fn drop_to(effective: u64, permitted: u64) -> Result<(), PrivError> {
    let keep = effective | permitted;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    // libc for prctl's capability calls and capget/capset: nix's prctl module has none of
    // PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_CAP_AMBIENT, and nix has no capget/capset.
    for cap in 0..=last {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let in_bset = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) } == 1;
        // Dropping needs CAP_SETPCAP, which is in the set being cut, so this happens first.
        // Without it (a systemd unit's bounding set leaves it out) the bounding set stays as
        // the service manager cut it; the permitted set below still goes.
        // SAFETY: as above.
        if in_bset && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                break;
            }
            return Err(os("dropping from the capability bounding set"));
        }
    }
    // SAFETY: prctl with integer arguments only; clears the ambient set (nothing kept there).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    let caps = get_caps().map_err(|_| os("capget"))?;
    set_caps(Caps {
        effective: caps.effective & effective,
        permitted: caps.permitted & keep,
    })
    .map_err(|_| os("capset"))
}

/// A thread's effective and permitted sets (its inheritable set is always empty here).
#[derive(Clone, Copy, Debug)]
struct Caps {
    effective: u64,
    permitted: u64,
}

fn get_caps() -> std::io::Result<Caps> {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are the layout capget(2) documents for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok(Caps {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
    })
}

/// Sets the calling thread's capabilities (capset(2) acts on the calling thread only).
fn set_caps(caps: Caps) -> std::io::Result<()> {
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let half = |v: u64, i: usize| (v >> (32 * i)) as u32;
    let data: [CapData; 2] = std::array::from_fn(|i| CapData {
        effective: half(caps.effective, i),
        permitted: half(caps.permitted, i),
        inheritable: 0,
    });
    // SAFETY: header and data are the layout capset(2) documents for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Who a write through the view acts as: the writer's file-system ids (what FUSE reports),
/// its supplementary groups and its effective capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps: u64,
}

impl Creds {
    /// The credentials of thread `tid`, which FUSE says acts as `uid`/`gid`: its groups and
    /// effective capabilities from its status file. A thread in a user namespace other than
    /// the agent's gets no capabilities: its capabilities hold in its namespace, not here.
    pub fn of_thread(tid: u32, uid: u32, gid: u32) -> std::io::Result<Creds> {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
        let mut creds = Creds::parse(&status, uid, gid);
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user"));
        if ns(&tid.to_string())? != ns("self")? {
            creds.caps = 0;
        }
        Ok(creds)
    }

    /// `uid`/`gid` with the groups and effective capabilities of a status file.
    pub fn parse(status: &str, uid: u32, gid: u32) -> Creds {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_default()
        };
        Creds {
            uid,
            gid,
            groups: field("Groups")
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect(),
            // Unreadable means none: a writer is never given more than it shows.
            caps: u64::from_str_radix(field("CapEff").trim(), 16).unwrap_or(0),
        }
    }
}

/// Runs `f` on a new thread that has become `creds`: their uid, gid and groups, and the
/// capabilities they have that the agent holds too, nothing else. The kernel then checks the
/// writer, not the agent, for whatever `f` opens or writes. The thread ends with `f`, so no
/// other work ever runs with those credentials; the ids are set with raw system calls, which
/// act on the calling thread only (glibc's wrappers would set them on every thread).
pub fn run_as<T: Send>(
    creds: &Creds,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let dumpable = nix::sys::prctl::get_dumpable().ok();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            become_creds(creds)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the writer's thread panicked")))
    });
    // A change of effective uid makes the process non-dumpable (`suid_dumpable`); the agent's
    // own dumpability is as it was before. (The thread is gone: nothing runs as the writer.)
    if let Some(was) = dumpable
        && nix::sys::prctl::get_dumpable().ok() != Some(was)
    {
        let _ = nix::sys::prctl::set_dumpable(was);
    }
    result
}

fn become_creds(c: &Creds) -> std::io::Result<()> {
    let check = |r: libc::c_long| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let held = get_caps()?;
    let ids = mask(&[CAP_SETUID, CAP_SETGID]);
    set_caps(Caps {
        effective: held.effective | (held.permitted & ids),
        ..held
    })?;
    // Keeps the permitted set across the uid change below (for this thread: securebits are
    // per thread), so the writer's capabilities can be given back to it after.
    nix::sys::prctl::set_keepcaps(true)?;
    let groups: Vec<libc::gid_t> = c.groups.clone();
    // SAFETY: a count and a pointer to that many gid_t, which outlive the call.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) })?;
    let writer = c.caps & held.permitted;
    set_caps(Caps {
        effective: writer,
        permitted: writer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_sets_one_bit_per_capability() {
        assert_eq!(mask(&[]), 0);
        assert_eq!(mask(&[CAP_KILL, CAP_BPF]), (1 << 5) | (1 << 39));
        // The documented set, as /proc/PID/status shows it in CapEff.
        assert_eq!(format!("{:016x}", mask(KEEP)), "000000c000a80024");
    }

    #[test]
    fn a_writer_has_the_groups_and_capabilities_its_status_shows_and_no_more() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000800000\n";
        let c = Creds::parse(status, 1000, 1001);
        assert_eq!(
            (c.uid, c.gid),
            (1000, 1001),
            "the ids are FUSE's, not the file's"
        );
        assert_eq!(c.groups, [4, 27, 1000]);
        assert_eq!(c.caps, 1 << CAP_SYS_NICE, "effective, not permitted");
        let bare = Creds::parse("Name:\tx\nGroups:\t\nCapEff:\tzz\n", 1, 1);
        assert!(bare.groups.is_empty());
        assert_eq!(bare.caps, 0, "unreadable capabilities are none");
    }
}
