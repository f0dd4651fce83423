//! The shape of a proc view: inode numbers that encode (kind, pid, tid/fd, file) reversibly,
//! and the tables of files a personality serves (Linux fs/proc/base.c `tgid_base_stuff`). A
//! row says everything about its file: name, mode, what it shows (a show function of
//! `fs/show.rs`, or the kernel's own file), who may read it and how long a rendering holds.

use super::{
    kernel_files::kernel_file,
    show::{self, Ctx, Rendered, Renderer},
};
use crate::table::Process;

/// What an inode is. Encoded into the 64-bit inode number so that no inode table is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    /// An entry of the mount's root table (its personality's `root`: `GLOBALS` for Linux).
    Global(u16),
    ProcDir(u32),
    /// `/PID/<PROC_FILES[i]>`.
    ProcFile(u32, u16),
    ThreadDir(u32, u32),
    /// `/PID/task/TID/<THREAD_FILES[i]>`.
    ThreadFile(u32, u32, u16),
    /// `/PID/fd/N`.
    Fd(u32, u32),
    /// SVR4's `/NNNNN`: a process as one file at the root (its address space, and the PFC*
    /// ioctls), where the other personalities have a directory.
    PidFile(u32),
    /// A node of a subtree served from the kernel's own (`/PID/fdinfo/…`, `/PID/net/…`,
    /// `/sys/…`): its path is in the mount's table of such nodes (fs/kernel_tree.rs).
    Kernel(u64),
}

const PID_BITS: u32 = 24;
const SUB_BITS: u32 = 24;
const IDX_BITS: u32 = 12;
const MASK_PID: u64 = (1 << PID_BITS) - 1;
const MASK_SUB: u64 = (1 << SUB_BITS) - 1;
const MASK_IDX: u64 = (1 << IDX_BITS) - 1;

impl Node {
    /// The inode number; `None` if a field does not fit (a pid or fd above 2^24).
    pub fn ino(self) -> Option<u64> {
        let pack = |tag: u64, pid: u32, sub: u32, idx: u16| -> Option<u64> {
            let (pid, sub, idx) = (u64::from(pid), u64::from(sub), u64::from(idx));
            (pid <= MASK_PID && sub <= MASK_SUB && idx <= MASK_IDX)
                .then_some((tag << 60) | (pid << (SUB_BITS + IDX_BITS)) | (sub << IDX_BITS) | idx)
        };
        match self {
            // FUSE's root is inode 1; every other tag is >= 1 << 60, so nothing else collides.
            Node::Root => Some(1),
            Node::Global(i) => pack(1, 0, 0, i),
            Node::ProcDir(p) => pack(2, p, 0, 0),
            Node::ProcFile(p, i) => pack(3, p, 0, i),
            Node::ThreadDir(p, t) => pack(4, p, t, 0),
            Node::ThreadFile(p, t, i) => pack(5, p, t, i),
            Node::Fd(p, fd) => pack(6, p, fd, 0),
            Node::PidFile(p) => pack(7, p, 0, 0),
            Node::Kernel(id) => (id < 1 << 60).then_some((8 << 60) | id),
        }
    }

    pub fn from_ino(ino: u64) -> Option<Node> {
        if ino == 1 {
            return Some(Node::Root);
        }
        let pid = ((ino >> (SUB_BITS + IDX_BITS)) & MASK_PID) as u32;
        let sub = ((ino >> IDX_BITS) & MASK_SUB) as u32;
        let idx = (ino & MASK_IDX) as u16;
        Some(match ino >> 60 {
            1 => Node::Global(idx),
            2 => Node::ProcDir(pid),
            3 => Node::ProcFile(pid, idx),
            4 => Node::ThreadDir(pid, sub),
            5 => Node::ThreadFile(pid, sub, idx),
            6 => Node::Fd(pid, sub),
            7 => Node::PidFile(pid),
            8 => Node::Kernel(ino & ((1 << 60) - 1)),
            _ => return None,
        })
    }
}

/// What a file shows and who may read it: the row's behaviour, which the FUSE operations, the
/// `cache=` ticker and the HTTP API all take from the row.
#[derive(Clone, Copy, Debug)]
pub struct Show {
    pub bytes: Bytes,
    /// procfs guards the file with a ptrace-read check on top of its mode (fs/proc/base.c:
    /// `proc_mem_open` for `maps`, `environ`, `smaps`; `io`'s `ptrace_may_access`). The agent
    /// reads as root, so the view applies the same rule to its caller.
    pub ptrace_read: bool,
    /// A rendering stays right for as long as the process's record is unchanged: rendered from
    /// it, or a kernel file only the process itself changes (it cannot while it sleeps, and
    /// running changes its record). Other kernel files (`cgroup`, `mountinfo`, …) can change
    /// under a sleeping process, so a `cache=` mount cannot keep them by the record.
    pub follows_record: bool,
}

/// Where a file's bytes come from.
#[derive(Clone, Copy, Debug)]
pub enum Bytes {
    /// A show function over the table (`fs/show.rs`).
    Render(Renderer),
    /// The kernel's own file of this name for the same process (`task/TID/NAME` for a
    /// thread's), its identity checked after the read.
    Kernel(&'static str),
}

impl Show {
    /// The file's bytes for process `p` (thread `tid` for a thread's file).
    pub fn read(&self, ctx: &Ctx, p: &Process, tid: Option<u32>) -> Rendered {
        match (self.bytes, tid) {
            (Bytes::Render(f), _) => f(ctx, p, tid),
            (Bytes::Kernel(name), None) => kernel_file(p, name),
            (Bytes::Kernel(name), Some(t)) => kernel_file(p, &format!("task/{t}/{name}")),
        }
    }
}

/// A file rendered from the table.
const fn rendered(f: Renderer) -> Show {
    Show {
        bytes: Bytes::Render(f),
        ptrace_read: false,
        follows_record: true,
    }
}

/// A file served from the kernel's, which may change without the process's record.
const fn kernel(name: &'static str) -> Show {
    Show {
        bytes: Bytes::Kernel(name),
        ptrace_read: false,
        follows_record: false,
    }
}

/// A kernel file only the process itself changes.
const fn own(s: Show) -> Show {
    Show {
        follows_record: true,
        ..s
    }
}

/// procfs's ptrace-read rule on top of the mode.
const fn ptrace(s: Show) -> Show {
    Show {
        ptrace_read: true,
        ..s
    }
}

/// A control file: its data is an operation on the live process (through `control`), not a
/// rendering of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlFile {
    /// Write a command (Plan 9 / FreeBSD ctl).
    Ctl,
    /// Write a note (a signal by Plan 9 name).
    Note,
    /// Write a note to the process group.
    NotePg,
    /// Read the note group id.
    NoteId,
    /// The address space at offset = virtual address.
    Mem,
    /// `user_regs_struct`.
    Regs,
    /// `user_fpregs_struct`.
    FpRegs,
    /// Plan 9 Waitmsg records of exited children.
    Wait,
    /// The x86-64 debug registers (FreeBSD `dbregs`).
    DbRegs,
}

/// A symlink and the rule for its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BsdLink {
    /// The executable (NetBSD's `exe` and `file`).
    Exe,
    /// FreeBSD's `file`: the executable, or `unknown` if it cannot be found.
    FreeBsdFile,
    /// NetBSD's `cwd`: relative to the caller's root, `/` if unavailable or outside it.
    Cwd,
    /// NetBSD's `root`: as `cwd`.
    Root,
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A file: what it shows, and who may read it.
    File(Show),
    Control(ControlFile),
    /// A symlink whose target is the kernel's link of that name (`exe`, `cwd`, `root`).
    KernelLink(&'static str),
    /// A FreeBSD or NetBSD symlink, with its manual's rules for what it shows (fs/bsd.rs).
    BsdLink(BsdLink),
    /// `task/`.
    TaskDir,
    /// `fd/`.
    FdDir,
    /// A directory served from the kernel's of this name for the same process (`fdinfo`,
    /// `ns`, `net`, `attr`, …), its entries `Node::Kernel`.
    KernelDir(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub name: &'static str,
    pub mode: u16,
    pub kind: Kind,
}

const fn file(name: &'static str, mode: u16, show: Show) -> Entry {
    Entry {
        name,
        mode,
        kind: Kind::File(show),
    }
}

const fn ctl_entry(name: &'static str, mode: u16, ctl: ControlFile) -> Entry {
    Entry {
        name,
        mode,
        kind: Kind::Control(ctl),
    }
}

/// `/PID/…` in the Linux personality. Modes as procfs gives them.
pub const PROC_FILES: &[Entry] = &[
    file("stat", 0o444, rendered(show::stat)),
    file("statm", 0o444, rendered(show::statm)),
    file("status", 0o444, rendered(show::status)),
    file("cmdline", 0o444, rendered(show::cmdline)),
    file("comm", 0o644, rendered(show::comm)),
    file("limits", 0o444, rendered(show::limits)),
    file("maps", 0o444, ptrace(rendered(show::maps))),
    file("environ", 0o400, ptrace(own(kernel("environ")))),
    file("cgroup", 0o444, kernel("cgroup")),
    file("io", 0o400, ptrace(own(kernel("io")))),
    file("wchan", 0o444, kernel("wchan")),
    file("mountinfo", 0o444, kernel("mountinfo")),
    file("mounts", 0o444, kernel("mounts")),
    file("oom_score", 0o444, kernel("oom_score")),
    file("loginuid", 0o644, kernel("loginuid")),
    ctl_entry("ctl", 0o200, ControlFile::Ctl),
    ctl_entry("note", 0o200, ControlFile::Note),
    ctl_entry("notepg", 0o200, ControlFile::NotePg),
    ctl_entry("noteid", 0o444, ControlFile::NoteId),
    ctl_entry("mem", 0o600, ControlFile::Mem),
    ctl_entry("regs", 0o600, ControlFile::Regs),
    ctl_entry("fpregs", 0o600, ControlFile::FpRegs),
    ctl_entry("wait", 0o400, ControlFile::Wait),
    Entry {
        name: "exe",
        mode: 0o777,
        kind: Kind::KernelLink("exe"),
    },
    Entry {
        name: "cwd",
        mode: 0o777,
        kind: Kind::KernelLink("cwd"),
    },
    Entry {
        name: "root",
        mode: 0o777,
        kind: Kind::KernelLink("root"),
    },
    Entry {
        name: "fd",
        mode: 0o500,
        kind: Kind::FdDir,
    },
    Entry {
        name: "task",
        mode: 0o555,
        kind: Kind::TaskDir,
    },
];

/// `/PID/…` in the Plan 9 personality (proc(3)); `text` is a link to the executable.
pub const PLAN9_FILES: &[Entry] = &[
    ctl_entry("ctl", 0o200, ControlFile::Ctl),
    ctl_entry("mem", 0o600, ControlFile::Mem),
    ctl_entry("note", 0o200, ControlFile::Note),
    ctl_entry("noteid", 0o444, ControlFile::NoteId),
    ctl_entry("notepg", 0o200, ControlFile::NotePg),
    file("proc", 0o400, rendered(show::plan9_proc)),
    file("segment", 0o444, ptrace(rendered(show::plan9_segment))),
    file("status", 0o444, rendered(show::plan9_status)),
    Entry {
        name: "text",
        mode: 0o777,
        kind: Kind::KernelLink("exe"),
    },
    ctl_entry("wait", 0o400, ControlFile::Wait),
];

/// `/PID/…` in the QNX personality (procnto). `as` and `ctl` start at 0666 less the mount's
/// umask, and `chmod` may only drop bits from them (view::qnx::Access keeps their modes).
pub const QNX_FILES: &[Entry] = &[
    ctl_entry("as", 0o666, ControlFile::Mem),
    file("cmdline", 0o444, rendered(show::cmdline)),
    ctl_entry("ctl", 0o666, ControlFile::Ctl),
    file("exefile", 0o444, rendered(show::qnx_exefile)),
];

const fn bsd_link(name: &'static str, link: BsdLink) -> Entry {
    Entry {
        name,
        mode: 0o777,
        kind: Kind::BsdLink(link),
    }
}

/// `/PID/…` in the FreeBSD personality (procfs(5), `cmdline` from its FILES section). `map` is
/// 0400 where FreeBSD has 0444: Linux lets only a process's own user (ptrace read access) see
/// its mappings, and the view must not show more than the kernel would.
pub const FREEBSD_FILES: &[Entry] = &[
    file("cmdline", 0o444, rendered(show::bsd_cmdline)),
    ctl_entry("ctl", 0o200, ControlFile::Ctl),
    ctl_entry("dbregs", 0o600, ControlFile::DbRegs),
    file("etype", 0o444, rendered(show::freebsd_etype)),
    bsd_link("file", BsdLink::FreeBsdFile),
    ctl_entry("fpregs", 0o600, ControlFile::FpRegs),
    file("map", 0o400, ptrace(rendered(show::freebsd_map))),
    ctl_entry("mem", 0o600, ControlFile::Mem),
    ctl_entry("note", 0o200, ControlFile::Note),
    ctl_entry("notepg", 0o200, ControlFile::NotePg),
    ctl_entry("regs", 0o600, ControlFile::Regs),
    file("rlimit", 0o444, rendered(show::freebsd_rlimit)),
    file("status", 0o444, rendered(show::freebsd_status)),
];

/// `/PID/…` in the NetBSD personality (mount_procfs(8)). The Linux-compatible rows come last
/// (`NETBSD_LINUX_FILES` of them), so `-o nolinux` is a prefix of the table and inode numbers
/// stay the same either way. `map` and `maps` are 0400, as FreeBSD's `map`.
pub const NETBSD_FILES: &[Entry] = &[
    file("cmdline", 0o444, rendered(show::bsd_cmdline)),
    bsd_link("cwd", BsdLink::Cwd),
    bsd_link("exe", BsdLink::Exe),
    Entry {
        name: "fd",
        mode: 0o500,
        kind: Kind::FdDir,
    },
    bsd_link("file", BsdLink::Exe),
    ctl_entry("fpregs", 0o600, ControlFile::FpRegs),
    file("map", 0o400, ptrace(rendered(show::netbsd_map))),
    file("maps", 0o400, ptrace(own(kernel("maps")))),
    ctl_entry("mem", 0o600, ControlFile::Mem),
    ctl_entry("note", 0o200, ControlFile::Note),
    ctl_entry("notepg", 0o200, ControlFile::NotePg),
    ctl_entry("regs", 0o600, ControlFile::Regs),
    bsd_link("root", BsdLink::Root),
    file("status", 0o444, rendered(show::netbsd_status)),
    // Linux-compatible (NETBSD_LINUX_FILES):
    file("stat", 0o444, rendered(show::stat)),
    file("statm", 0o444, rendered(show::statm)),
];
/// How many of `NETBSD_FILES`' rows, at its end, are Linux-compatible.
pub const NETBSD_LINUX_FILES: usize = 2;

/// Files procfs guards with a ptrace-read check on top of their mode (fs/proc/base.c:
/// `proc_mem_open`, `lock_trace`, `proc_pid_*` with `ptrace_may_access`), and directories whose
/// entries it guards so (`fd`, `fdinfo`, `ns`; `map_files` needs CAP_SYS_ADMIN besides).
pub const PTRACE_READ: &[&str] = &[
    "auxv",
    "environ",
    "io",
    "ksm_merging_pages",
    "ksm_stat",
    "map_files",
    "maps",
    "mem",
    "numa_maps",
    "pagemap",
    "personality",
    "smaps",
    "smaps_rollup",
    "stack",
    "syscall",
    "timers",
    "timerslack_ns",
    "fd",
    "fdinfo",
    "ns",
];

/// Rows for every entry the kernel has in `dir` (`/proc/self` or one of its threads) that
/// `known` lacks, served from the kernel's own: a file as `kernel(name)` with its mode (and
/// procfs's ptrace rule where it has one), a link as `KernelLink`, a directory as `KernelDir`.
/// Read from the running kernel, so the view has exactly its entries, whatever its version.
fn walked(dir: &str, known: &[Entry]) -> Vec<Entry> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut extra: Vec<Entry> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if known.iter().any(|k| k.name == name) {
                return None;
            }
            let meta = e.metadata().ok()?;
            let mode = (meta.permissions().mode() & 0o7777) as u16;
            let name: &'static str = Box::leak(name.into_boxed_str());
            let guarded = PTRACE_READ.contains(&name);
            let kind = if meta.file_type().is_symlink() {
                Kind::KernelLink(name)
            } else if meta.is_dir() {
                Kind::KernelDir(name)
            } else if guarded {
                Kind::File(ptrace(own(kernel(name))))
            } else {
                Kind::File(kernel(name))
            };
            Some(Entry { name, mode, kind })
        })
        .collect();
    extra.sort_by_key(|e| e.name);
    extra
}

/// The Linux personality's `/PID/…`: `PROC_FILES`, then every other entry the kernel has.
pub fn linux_files() -> &'static [Entry] {
    static ALL: std::sync::OnceLock<&'static [Entry]> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = PROC_FILES.to_vec();
        all.extend(walked("/proc/self", PROC_FILES));
        Box::leak(all.into_boxed_slice())
    })
}

/// `/PID/task/TID/…`: `THREAD_FILES`, then every other entry the kernel has for a thread.
pub fn thread_files() -> &'static [Entry] {
    static ALL: std::sync::OnceLock<&'static [Entry]> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let me = std::process::id();
        let mut all = THREAD_FILES.to_vec();
        all.extend(walked(&format!("/proc/{me}/task/{me}"), THREAD_FILES));
        Box::leak(all.into_boxed_slice())
    })
}

/// `/PID/task/TID/…`.
pub const THREAD_FILES: &[Entry] = &[
    file("stat", 0o444, rendered(show::stat)),
    file("statm", 0o444, rendered(show::statm)),
    file("status", 0o444, rendered(show::status)),
    file("cmdline", 0o444, rendered(show::cmdline)),
    file("comm", 0o644, rendered(show::comm)),
    file("wchan", 0o444, kernel("wchan")),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalKind {
    Dir,
    /// The kernel's file at this path under /proc: host-wide data with no BPF source.
    KernelFile(&'static str),
    /// `self` → the caller's pid.
    SelfLink,
    /// `thread-self` → `PID/task/TID` of the caller.
    ThreadSelfLink,
    /// A fixed link target.
    Link(&'static str),
    /// The kernel's per-process file of this name, of the calling process (a file, where
    /// Linux's `mounts` is a link through `self`).
    CallerFile(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Global {
    /// Index of the parent in `GLOBALS`, `None` for the root.
    pub parent: Option<u16>,
    pub name: &'static str,
    pub mode: u16,
    pub kind: GlobalKind,
}

const fn g(parent: Option<u16>, name: &'static str, mode: u16, kind: GlobalKind) -> Global {
    Global {
        parent,
        name,
        mode,
        kind,
    }
}

/// The host-wide nodes procps and psutil read.
pub const GLOBALS: &[Global] = &[
    g(None, "self", 0o777, GlobalKind::SelfLink),
    g(None, "thread-self", 0o777, GlobalKind::ThreadSelfLink),
    g(None, "stat", 0o444, GlobalKind::KernelFile("stat")),
    g(None, "meminfo", 0o444, GlobalKind::KernelFile("meminfo")),
    g(None, "uptime", 0o444, GlobalKind::KernelFile("uptime")),
    g(None, "loadavg", 0o444, GlobalKind::KernelFile("loadavg")),
    g(None, "cpuinfo", 0o444, GlobalKind::KernelFile("cpuinfo")),
    g(None, "version", 0o444, GlobalKind::KernelFile("version")),
    g(
        None,
        "filesystems",
        0o444,
        GlobalKind::KernelFile("filesystems"),
    ),
    g(None, "swaps", 0o444, GlobalKind::KernelFile("swaps")),
    g(None, "vmstat", 0o444, GlobalKind::KernelFile("vmstat")),
    g(None, "zoneinfo", 0o400, GlobalKind::KernelFile("zoneinfo")),
    g(
        None,
        "diskstats",
        0o444,
        GlobalKind::KernelFile("diskstats"),
    ),
    g(
        None,
        "partitions",
        0o444,
        GlobalKind::KernelFile("partitions"),
    ),
    g(None, "devices", 0o444, GlobalKind::KernelFile("devices")),
    g(None, "mounts", 0o777, GlobalKind::Link("self/mounts")),
    g(None, "sys", 0o555, GlobalKind::Dir),
    // 16: sys/kernel, 17: sys/vm
    g(Some(16), "kernel", 0o555, GlobalKind::Dir),
    g(Some(16), "vm", 0o555, GlobalKind::Dir),
    g(
        Some(17),
        "pid_max",
        0o444,
        GlobalKind::KernelFile("sys/kernel/pid_max"),
    ),
    g(
        Some(17),
        "osrelease",
        0o444,
        GlobalKind::KernelFile("sys/kernel/osrelease"),
    ),
    g(
        Some(17),
        "ostype",
        0o444,
        GlobalKind::KernelFile("sys/kernel/ostype"),
    ),
    g(
        Some(17),
        "hostname",
        0o444,
        GlobalKind::KernelFile("sys/kernel/hostname"),
    ),
    g(
        Some(17),
        "threads-max",
        0o444,
        GlobalKind::KernelFile("sys/kernel/threads-max"),
    ),
    g(
        Some(18),
        "overcommit_memory",
        0o444,
        GlobalKind::KernelFile("sys/vm/overcommit_memory"),
    ),
    g(
        Some(18),
        "min_free_kbytes",
        0o444,
        GlobalKind::KernelFile("sys/vm/min_free_kbytes"),
    ),
];

/// The FreeBSD root: `curproc` is the caller, a link to its pid directory as in FreeBSD.
pub const FREEBSD_ROOT: &[Global] = &[g(None, "curproc", 0o777, GlobalKind::SelfLink)];

/// The NetBSD root: `curproc` and `self` are the caller; then the Linux-compatible nodes
/// (`NETBSD_ROOT_LINUX` of them), the host-wide files as Linux serves them.
pub const NETBSD_ROOT: &[Global] = &[
    g(None, "curproc", 0o777, GlobalKind::SelfLink),
    g(None, "self", 0o777, GlobalKind::SelfLink),
    g(None, "cpuinfo", 0o444, GlobalKind::KernelFile("cpuinfo")),
    g(None, "devices", 0o444, GlobalKind::KernelFile("devices")),
    g(None, "meminfo", 0o444, GlobalKind::KernelFile("meminfo")),
    g(None, "mounts", 0o444, GlobalKind::CallerFile("mounts")),
    g(None, "stat", 0o444, GlobalKind::KernelFile("stat")),
    g(None, "uptime", 0o444, GlobalKind::KernelFile("uptime")),
];
pub const NETBSD_ROOT_LINUX: usize = 6;

pub fn global_child(table: &[Global], parent: Option<u16>, name: &str) -> Option<u16> {
    table
        .iter()
        .position(|gl| gl.parent == parent && gl.name == name)
        .map(|i| i as u16)
}

pub fn global_children(
    table: &'static [Global],
    parent: Option<u16>,
) -> impl Iterator<Item = (u16, &'static Global)> {
    table
        .iter()
        .enumerate()
        .filter(move |(_, gl)| gl.parent == parent)
        .map(|(i, gl)| (i as u16, gl))
}

pub fn entry_index(table: &[Entry], name: &str) -> Option<u16> {
    table.iter().position(|e| e.name == name).map(|i| i as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        for node in [
            Node::Root,
            Node::Global(0),
            Node::Global(25),
            Node::ProcDir(1),
            Node::ProcDir(4_194_304),
            Node::ProcFile(77, 3),
            Node::ThreadDir(77, 78),
            Node::ThreadFile(4_000_000, 4_000_001, 5),
            Node::Fd(9, 1023),
            Node::PidFile(1),
            Node::PidFile(4_194_304),
        ] {
            let ino = node.ino().unwrap();
            assert_eq!(Node::from_ino(ino), Some(node), "{node:?} -> {ino:#x}");
            assert!(node == Node::Root || ino != 1);
        }
        assert_eq!(
            Node::Fd(1, 1 << 24).ino(),
            None,
            "out-of-range fields are refused"
        );
        assert_eq!(Node::from_ino(0), None);
        // A process's SVR4 file and its directory elsewhere are different inodes.
        assert_ne!(Node::PidFile(77).ino(), Node::ProcDir(77).ino());
    }

    #[test]
    fn global_parents_point_at_directories() {
        for gl in GLOBALS {
            if let Some(p) = gl.parent {
                assert_eq!(GLOBALS[p as usize].kind, GlobalKind::Dir, "{}", gl.name);
            }
        }
        assert_eq!(global_child(GLOBALS, None, "sys"), Some(16));
        assert_eq!(global_child(GLOBALS, Some(16), "kernel"), Some(17));
        assert_eq!(global_child(GLOBALS, Some(17), "pid_max"), Some(19));
    }

    #[test]
    fn names_are_unique_per_directory() {
        for table in [
            PROC_FILES,
            THREAD_FILES,
            PLAN9_FILES,
            QNX_FILES,
            FREEBSD_FILES,
            NETBSD_FILES,
        ] {
            let mut names: Vec<_> = table.iter().map(|e| e.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), table.len());
        }
        for table in [GLOBALS, FREEBSD_ROOT, NETBSD_ROOT] {
            let mut names: Vec<_> = table.iter().map(|g| (g.parent, g.name)).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), table.len());
        }
    }

    #[test]
    fn nolinux_hides_exactly_the_linux_compatible_nodes() {
        use super::super::options::MountOptions;
        let names = |o: &str| -> (Vec<&str>, Vec<&str>) {
            let o = MountOptions::parse(o).unwrap();
            (
                super::super::personality::descriptor(o.personality)
                    .root_shown(&o)
                    .iter()
                    .map(|g| g.name)
                    .collect(),
                super::super::personality::descriptor(o.personality)
                    .files_shown(&o)
                    .iter()
                    .map(|e| e.name)
                    .collect(),
            )
        };
        let (root, files) = names("personality=netbsd");
        assert_eq!(
            root,
            [
                "curproc", "self", "cpuinfo", "devices", "meminfo", "mounts", "stat", "uptime"
            ]
        );
        assert!(files.ends_with(&["status", "stat", "statm"]), "{files:?}");
        let (root, files) = names("personality=netbsd,nolinux");
        assert_eq!(root, ["curproc", "self"]);
        assert!(files.ends_with(&["root", "status"]), "{files:?}");
        assert_eq!(
            names("personality=freebsd,nolinux"),
            names("personality=freebsd")
        );
        assert_eq!(names("personality=freebsd").0, ["curproc"]);
        assert!(
            names("nolinux").0.is_empty(),
            "Linux's own root is its Linux nodes"
        );
        assert_eq!(names("nolinux").1.len(), linux_files().len());
    }
}
