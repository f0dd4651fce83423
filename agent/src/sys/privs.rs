//! The agent's capabilities: it runs as root, but keeps only what it uses. `drop_to_agent`
//! runs before the runtime starts any thread (capabilities are per thread; every thread the
//! agent creates later inherits the reduced set) and cuts the bounding, permitted, effective,
//! inheritable and ambient sets to `KEEP`, so neither the agent nor anything it could be made
//! to run can load a module, change uids, reconfigure the network or write files it does not
//! own.

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_KILL: u32 = 5;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_NICE: u32 = 23;
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

/// Cuts every capability set of the calling thread to `keep`. Must run while the process has
/// one thread. Capabilities the process does not have are not gained; a bounding set already
/// cut further (a systemd unit's CapabilityBoundingSet) stays as it is.
pub fn drop_to(keep: u64) -> Result<(), PrivError> {
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
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are the layout capget(2) documents for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(os("capget"));
    }
    for (i, d) in data.iter_mut().enumerate() {
        let k = (keep >> (32 * i)) as u32;
        d.effective &= k;
        d.permitted &= k;
        d.inheritable = 0;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(os("capset"));
    }
    Ok(())
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
}
