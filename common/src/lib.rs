//! Types shared by the BPF programs and the agent.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every struct is
//! `#[repr(C)]`, fixed size and padded by hand; the tests pin each size so a change on one side
//! cannot silently desynchronise the other.
#![cfg_attr(target_arch = "bpf", no_std)]

pub const TASK_COMM_LEN: usize = 16;
/// `task_struct.flags` bit of a kernel thread (include/linux/sched.h).
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// Bytes of the executable's path kept per process: the path the kernel resolves it to
/// (`pflag::EXE_RESOLVED`), or else `bprm->filename` as exec was given it.
pub const FILENAME_LEN: usize = 256;
/// Bytes of argv kept per process; longer command lines are flagged as truncated.
pub const ARGS_LEN: usize = 1024;
/// Supplementary groups kept per task.
pub const GROUPS_MAX: usize = 32;
pub const RLIM_NLIMITS: usize = 16;
/// Processes per element of the `RAN` map (one byte each).
pub const RAN_CHUNK: usize = 4096;

/// Ring-buffer record kinds (first `u32` of every record).
pub mod kind {
    pub const FORK: u32 = 1;
    pub const EXEC: u32 = 2;
    pub const EXIT: u32 = 3;
    /// The task struct was freed: the process has been reaped and its pid may be reused.
    pub const FREE: u32 = 4;
    /// comm changed (prctl(PR_SET_NAME), kthread rename).
    pub const RENAME: u32 = 5;
}

/// Indices into the per-CPU `STATS` array. Every way a program can fail to do its job has a
/// counter here, so nothing is lost silently.
pub mod stat {
    pub const FORK_SEEN: u32 = 0;
    pub const EXEC_SEEN: u32 = 1;
    pub const EXIT_SEEN: u32 = 2;
    pub const FREE_SEEN: u32 = 3;
    pub const RENAME_SEEN: u32 = 4;
    /// The ring buffer had no room for a record.
    pub const RINGBUF_FULL: u32 = 5;
    /// The process map had no room for a new process.
    pub const MAP_FULL: u32 = 6;
    /// A kernel memory read failed.
    pub const READ_ERROR: u32 = 7;
    /// A user memory read (argv at exec) failed.
    pub const ARGS_ERROR: u32 = 8;
    /// Processes stopped at exec because the hang bit was set.
    pub const HANG_STOPS: u32 = 9;
    /// The iterator could not write a record (seq buffer overflow restarts it; counted anyway).
    pub const ITER_ERROR: u32 = 10;
    pub const COUNT: u32 = 11;

    pub const NAMES: [&str; COUNT as usize] = [
        "fork_seen",
        "exec_seen",
        "exit_seen",
        "free_seen",
        "rename_seen",
        "ringbuf_full",
        "map_full",
        "read_error",
        "args_error",
        "hang_stops",
        "iter_error",
    ];
}

/// `ProcEntry::flags` bits.
pub mod pflag {
    /// Stop the process with SIGSTOP when it next execs (Plan 9 `hang`); inherited across fork.
    pub const HANG: u32 = 1;
    /// argv did not fit in `ARGS_LEN` bytes.
    pub const ARGS_TRUNCATED: u32 = 2;
    /// The entry was created by the iterator (backfill), not by a fork seen live.
    pub const BACKFILLED: u32 = 4;
    /// An exec has been seen for this process.
    pub const EXECED: u32 = 8;
    /// `filename` is the executable's absolute path as the kernel resolves it (`/proc/PID/exe`),
    /// stored leaf first: each component NUL-terminated, the root's last (user space reverses
    /// them; a component cannot hold a `/`, so the split is exact).
    pub const EXE_RESOLVED: u32 = 16;
    /// The executable had been unlinked when it was exec'd (`/proc/PID/exe` says `(deleted)`).
    pub const EXE_DELETED: u32 = 32;
}

macro_rules! offsets {
    ($($field:ident => $spec:literal,)*) => {
        /// Kernel structure offsets, read from the running kernel's BTF at load time and passed
        /// to the programs as a read-only global (Rust BPF has no CO-RE relocations).
        ///
        /// A spec is `struct.member.member`, `struct.#size`, or alternatives separated by `|`.
        /// A spec starting with `?` is optional: `u32::MAX` when the kernel lacks it.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct Offsets {
            $(pub $field: u32,)*
        }

        impl Offsets {
            pub const SPECS: &'static [(&'static str, &'static str)] = &[$((stringify!($field), $spec),)*];

            pub const fn zeroed() -> Self {
                Self { $($field: 0,)* }
            }

            /// Mutable access in `SPECS` order, for the resolver.
            pub fn fields_mut(&mut self) -> [&mut u32; Self::SPECS.len()] {
                [$(&mut self.$field,)*]
            }
        }
    };
}

offsets! {
    task_pid => "task_struct.pid",
    task_tgid => "task_struct.tgid",
    task_real_parent => "task_struct.real_parent",
    task_parent => "task_struct.parent",
    task_group_leader => "task_struct.group_leader",
    task_ptrace => "task_struct.ptrace",
    task_comm => "task_struct.comm",
    task_start_time => "task_struct.start_time",
    task_start_boottime => "task_struct.start_boottime",
    task_exit_code => "task_struct.exit_code",
    task_exit_signal => "task_struct.exit_signal",
    task_flags => "task_struct.flags",
    task_state => "task_struct.__state",
    task_exit_state => "task_struct.exit_state",
    task_real_cred => "task_struct.real_cred",
    task_cred => "task_struct.cred",
    task_signal => "task_struct.signal",
    task_sighand => "task_struct.sighand",
    task_mm => "task_struct.mm",
    task_utime => "task_struct.utime",
    task_stime => "task_struct.stime",
    task_gtime => "task_struct.gtime",
    task_min_flt => "task_struct.min_flt",
    task_maj_flt => "task_struct.maj_flt",
    task_nvcsw => "task_struct.nvcsw",
    task_nivcsw => "task_struct.nivcsw",
    task_prio => "task_struct.prio",
    task_static_prio => "task_struct.static_prio",
    task_rt_priority => "task_struct.rt_priority",
    task_policy => "task_struct.policy",
    task_cpu => "task_struct.cpu|task_struct.thread_info.cpu",
    task_blocked => "task_struct.blocked",
    task_pending_signal => "task_struct.pending.signal",
    task_cgroups => "task_struct.cgroups",
    cred_uid => "cred.uid",
    cred_gid => "cred.gid",
    cred_suid => "cred.suid",
    cred_sgid => "cred.sgid",
    cred_euid => "cred.euid",
    cred_egid => "cred.egid",
    cred_fsuid => "cred.fsuid",
    cred_fsgid => "cred.fsgid",
    signal_nr_threads => "signal_struct.nr_threads",
    signal_utime => "signal_struct.utime",
    signal_stime => "signal_struct.stime",
    signal_cutime => "signal_struct.cutime",
    signal_cstime => "signal_struct.cstime",
    signal_min_flt => "signal_struct.min_flt",
    signal_maj_flt => "signal_struct.maj_flt",
    signal_cmin_flt => "signal_struct.cmin_flt",
    signal_cmaj_flt => "signal_struct.cmaj_flt",
    signal_tty => "signal_struct.tty",
    signal_pids => "signal_struct.pids",
    signal_shared_pending => "signal_struct.shared_pending.signal",
    pid_numbers_nr => "pid.numbers",
    tty_index => "tty_struct.index",
    tty_driver => "tty_struct.driver",
    tty_driver_major => "tty_driver.major",
    tty_driver_minor_start => "tty_driver.minor_start",
    sighand_action => "sighand_struct.action",
    k_sigaction_size => "k_sigaction.#size",
    mm_total_vm => "mm_struct.total_vm",
    mm_locked_vm => "mm_struct.locked_vm",
    mm_pinned_vm => "mm_struct.pinned_vm",
    mm_data_vm => "mm_struct.data_vm",
    mm_exec_vm => "mm_struct.exec_vm",
    mm_stack_vm => "mm_struct.stack_vm",
    mm_hiwater_rss => "mm_struct.hiwater_rss",
    mm_hiwater_vm => "mm_struct.hiwater_vm",
    mm_rss_stat => "mm_struct.rss_stat",
    mm_pgtables_bytes => "?mm_struct.pgtables_bytes",
    mm_start_code => "mm_struct.start_code",
    mm_end_code => "mm_struct.end_code",
    mm_start_data => "mm_struct.start_data",
    mm_end_data => "mm_struct.end_data",
    mm_start_brk => "mm_struct.start_brk",
    mm_brk => "mm_struct.brk",
    mm_start_stack => "mm_struct.start_stack",
    mm_arg_start => "mm_struct.arg_start",
    mm_arg_end => "mm_struct.arg_end",
    mm_env_start => "mm_struct.env_start",
    mm_env_end => "mm_struct.env_end",
    percpu_counter_size => "percpu_counter.#size",
    percpu_counter_count => "percpu_counter.count",
    css_set_dfl_cgrp => "css_set.dfl_cgrp",
    cgroup_kn => "cgroup.kn",
    kernfs_node_id => "kernfs_node.id",
    bprm_filename => "linux_binprm.filename",
    bprm_file => "?linux_binprm.file",
    file_path_mnt => "?file.f_path.mnt",
    file_path_dentry => "file.f_path.dentry",
    vfsmount_root => "?vfsmount.mnt_root",
    mount_mnt => "?mount.mnt",
    mount_parent => "?mount.mnt_parent",
    mount_mountpoint => "?mount.mnt_mountpoint",
    dentry_parent => "?dentry.d_parent",
    dentry_name => "?dentry.d_name.name",
    dentry_hash_pprev => "dentry.d_hash.pprev",
    mm_exe_file => "mm_struct.exe_file",
    signal_cgtime => "signal_struct.cgtime",
    signal_rlim => "signal_struct.rlim",
    tty_pgrp => "tty_struct.ctrl.pgrp|tty_struct.pgrp",
    task_fs => "task_struct.fs",
    fs_umask => "fs_struct.umask",
    task_files => "task_struct.files",
    files_fdt => "files_struct.fdt",
    fdtable_max_fds => "fdtable.max_fds",
    cred_group_info => "cred.group_info",
    group_info_ngroups => "group_info.ngroups",
    group_info_gid => "group_info.gid",
    cred_cap_inheritable => "cred.cap_inheritable",
    cred_cap_permitted => "cred.cap_permitted",
    cred_cap_effective => "cred.cap_effective",
    cred_cap_bset => "cred.cap_bset",
    cred_cap_ambient => "cred.cap_ambient",
    task_cpus_mask => "task_struct.cpus_mask",
    task_seccomp_mode => "?task_struct.seccomp.mode",
    task_atomic_flags => "task_struct.atomic_flags",
    task_sum_exec_runtime => "task_struct.se.sum_exec_runtime",
    task_prev_utime => "task_struct.prev_cputime.utime",
    task_prev_stime => "task_struct.prev_cputime.stime",
    signal_sum_sched_runtime => "signal_struct.sum_sched_runtime",
    signal_prev_utime => "signal_struct.prev_cputime.utime",
    signal_prev_stime => "signal_struct.prev_cputime.stime",
    task_se_cfs_rq => "?task_struct.se.cfs_rq",
    cfs_rq_rq => "?cfs_rq.rq",
    rq_cpu => "?rq.cpu",
    percpu_counter_counters => "percpu_counter.counters",
    task_worker_private => "?task_struct.worker_private",
    kthread_full_name => "?kthread.full_name",
    kthread_data => "?kthread.data",
    worker_desc => "?worker.desc",
    worker_current_work => "?worker.current_work",
}

/// Identity and lifecycle of a process, as the hooks see it at an event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo {
    pub tgid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// `PF_*` flags (PF_KTHREAD marks kernel threads).
    pub pf_flags: u32,
    /// Raw wait status at exit: `code << 8` or the killing signal (| 0x80 for a core dump).
    pub exit_code: u32,
    pub nr_threads: u32,
    /// `pflag::*` bits from the process map.
    pub flags: u32,
    pub _pad: u32,
    /// `task->start_boottime`, ns since boot (including suspend).
    pub start_boottime: u64,
    /// Process CPU time in ns at exit (signal totals + the exiting thread's own).
    pub utime: u64,
    pub stime: u64,
    /// CPU time of reaped children, ns.
    pub cutime: u64,
    pub cstime: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// A fork/exit/free/rename record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub kind: u32,
    /// Kind-specific: exec's old pid, exit's group_dead.
    pub aux: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts: u64,
    /// The process's cgroup v2 id (`task->cgroups->dfl_cgrp->kn->id`) at a fork (the child's)
    /// or an exit, so a process too short-lived for any iterator pass still has its cgroup;
    /// 0 in free and rename records. Not in `TaskInfo`: that is also the process map's value,
    /// which an agent hands to the next one (`carry_hang`), so its layout stays put.
    pub cgroup_id: u64,
    pub task: TaskInfo,
}

/// The per-process value of the `PROCS` map and the body of an exec record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEntry {
    pub task: TaskInfo,
    /// Boot-clock time of the last exec, 0 if none seen.
    pub exec_ts: u64,
    pub filename_len: u32,
    pub args_len: u32,
    pub filename: [u8; FILENAME_LEN],
    /// NUL-separated argv, as in /proc/PID/cmdline.
    pub args: [u8; ARGS_LEN],
}

/// An exec record: the header and the process's map entry after the exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub kind: u32,
    pub aux: u32,
    pub ts: u64,
    /// The process's cgroup v2 id at the exec, as in `Event`.
    pub cgroup_id: u64,
    pub entry: ProcEntry,
}

/// One task as the `iter/task` program dumps it: the fast-changing numbers the agent refreshes,
/// and everything `stat`, `status` and `statm` need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskRecord {
    pub tid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub tracer_pid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub tty_nr: u32,
    /// `__state`.
    pub state: u32,
    pub exit_state: u32,
    pub pf_flags: u32,
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub fsuid: u32,
    pub gid: u32,
    pub egid: u32,
    pub sgid: u32,
    pub fsgid: u32,
    pub nr_threads: u32,
    pub prio: i32,
    pub static_prio: i32,
    pub rt_priority: u32,
    pub policy: u32,
    pub cpu: u32,
    pub exit_signal: i32,
    /// 1 if the task has an mm (user process), 0 for kernel threads.
    pub has_mm: u32,
    /// Foreground process group of the controlling tty, -1 without one.
    pub tpgid: i32,
    pub exit_code: u32,
    pub umask: u32,
    pub max_fds: u32,
    pub seccomp: u32,
    /// Bit 0: no_new_privs.
    pub atomic_flags: u32,
    pub ngroups: u32,
    /// 1 if the executable has been unlinked since exec (`mm->exe_file`'s dentry is unhashed):
    /// `/proc/PID/exe` then ends in ` (deleted)`.
    pub exe_deleted: u32,
    /// The first `GROUPS_MAX` supplementary groups.
    pub groups: [u32; GROUPS_MAX],
    pub start_boottime: u64,
    pub start_time: u64,
    /// This thread's CPU time, ns.
    pub utime: u64,
    pub stime: u64,
    pub gtime: u64,
    /// CPU time of threads that already exited and of reaped children (signal_struct), ns.
    pub sig_utime: u64,
    pub sig_stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    pub min_flt: u64,
    pub maj_flt: u64,
    pub sig_min_flt: u64,
    pub sig_maj_flt: u64,
    pub cmin_flt: u64,
    pub cmaj_flt: u64,
    pub nvcsw: u64,
    pub nivcsw: u64,
    /// Memory in pages.
    pub total_vm: u64,
    pub locked_vm: u64,
    pub pinned_vm: u64,
    pub data_vm: u64,
    pub exec_vm: u64,
    pub stack_vm: u64,
    pub hiwater_rss: u64,
    pub hiwater_vm: u64,
    pub rss_file: u64,
    pub rss_anon: u64,
    pub rss_swapents: u64,
    pub rss_shmem: u64,
    /// The same four counters (file, anon, swap entries, shmem) with every CPU's unfolded delta
    /// added, as status and statm report them; the fields above are the central counts that
    /// stat reports.
    pub rss_sum: [u64; 4],
    pub pgtables_bytes: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub sig_pending: u64,
    pub sig_shared_pending: u64,
    pub sig_blocked: u64,
    pub sig_ignored: u64,
    pub sig_caught: u64,
    pub cgroup_id: u64,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bset: u64,
    pub cap_ambient: u64,
    /// First word of `cpus_mask` (CPUs 0–63).
    pub cpus_allowed: u64,
    pub cgtime: u64,
    /// Precise CPU time (ns) and the kernel's last reported split, which `cputime_adjust`
    /// scales the tick-sampled utime/stime against.
    pub sum_exec_runtime: u64,
    pub prev_utime: u64,
    pub prev_stime: u64,
    pub sig_sum_sched_runtime: u64,
    pub sig_prev_utime: u64,
    pub sig_prev_stime: u64,
    /// `signal->rlim[i]` as (cur, max) pairs, RLIM_NLIMITS of them.
    pub rlim: [u64; 2 * RLIM_NLIMITS],
    pub comm: [u8; TASK_COMM_LEN],
    /// A kernel thread's untruncated name (`kthread->full_name`), empty otherwise.
    pub full_name: [u8; 64],
    /// A workqueue worker's description and whether it is running a work item: /proc shows
    /// `comm+desc` (busy) or `comm-desc`.
    pub wq_desc: [u8; 32],
    pub wq_busy: u32,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), contain only integers and byte arrays, and have
    // explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::ProcEntry {}
    unsafe impl aya::Pod for super::TaskInfo {}
}

/// Bytes up to the first NUL.
pub fn cstr(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn boundary_sizes_are_pinned() {
        assert_eq!(size_of::<TaskInfo>(), 104);
        assert_eq!(size_of::<Event>(), 128);
        assert_eq!(size_of::<ProcEntry>(), 104 + 16 + FILENAME_LEN + ARGS_LEN);
        assert_eq!(size_of::<ExecEvent>(), 24 + size_of::<ProcEntry>());
        assert_eq!(
            size_of::<TaskRecord>(),
            34 * 4 + GROUPS_MAX * 4 + 64 * 8 + 2 * RLIM_NLIMITS * 8 + 16 + 64 + 32 + 8
        );
        assert_eq!(size_of::<Offsets>(), Offsets::SPECS.len() * 4);
    }

    #[test]
    fn stat_names_cover_every_counter() {
        assert_eq!(stat::NAMES.len(), stat::COUNT as usize);
    }

    #[test]
    fn cstr_stops_at_nul() {
        assert_eq!(cstr(b"bash\0\0\0"), b"bash");
        assert_eq!(cstr(b"full"), b"full");
    }
}
