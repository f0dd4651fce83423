//! The view's core operations against a fixed table: names, modes, owners, what each row
//! renders, and which rows a mount's options serve, with no BPF, no root and no mount.

use std::sync::OnceLock;

use super::*;
use crate::{
    fs::tree::{PROC_FILES, linux_files},
    state::Gone,
    view::{linux, test_process},
};

const HOST: Host = Host {
    boot_epoch_ns: 1_700_000_000_000_000_000,
    clock_ticks: 100,
    page_size: 4096,
};

/// A table that never changes: one `sleep` (pid 4242, uid 1000) from `view::test_process`.
struct Fixed(Arc<Snapshot>);

impl Processes for Fixed {
    fn snapshot(&self, _bound: Duration) -> Result<Arc<Snapshot>, Gone> {
        Ok(self.0.clone())
    }

    fn process(
        &self,
        pid: u32,
        _bound: Duration,
        _share: bool,
    ) -> Result<(Arc<Snapshot>, Option<Arc<Process>>), Gone> {
        Ok((self.0.clone(), self.0.get(pid).cloned()))
    }

    fn max_age(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn of_this_host(&self) -> bool {
        false
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
}

fn view(options: &str) -> ProcFs {
    let snap = Snapshot::new(1, 0, vec![Arc::new(test_process())], Vec::new());
    ProcFs::new(
        Arc::new(Fixed(Arc::new(snap))),
        HOST,
        runtime().handle().clone(),
        MountOptions::parse(options).expect("options"),
        None,
    )
    .expect("view")
}

fn who(uid: u32) -> Asker {
    Asker {
        uid,
        gid: uid,
        pid: std::process::id(),
    }
}

fn lookup(fs: &ProcFs, parent: Node, name: &str) -> Result<Found, Errno> {
    fs.do_lookup(&who(0), parent.ino().unwrap(), OsStr::new(name))
}

fn attr_of(fs: &ProcFs, parent: Node, name: &str) -> FileAttr {
    match lookup(fs, parent, name) {
        Ok(Found::Node(a)) => a,
        Ok(Found::Never) => panic!("{name}: never there"),
        Err(e) => panic!("{name}: {e:?}"),
    }
}

fn names(fs: &ProcFs, dir: Node) -> Vec<String> {
    let fh = fs.do_opendir(&who(0), dir.ino().unwrap()).expect("opendir");
    let list = fs
        .listing(&who(0), dir.ino().unwrap(), fh)
        .expect("listing");
    fs.do_releasedir(fh);
    list.iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn open(fs: &ProcFs, uid: u32, ino: u64, flags: i32) -> Result<Opened, Errno> {
    fs.do_open(&who(uid), ino, OpenFlags(flags))
}

#[test]
fn a_process_directory_is_its_owners_and_lists_every_row() {
    let fs = view("");
    let dir = attr_of(&fs, Node::Root, "4242");
    assert_eq!(dir.kind, FileType::Directory);
    assert_eq!((dir.uid, dir.gid, dir.perm), (1000, 1000, 0o555));
    let listed = names(&fs, Node::ProcDir(4242));
    let rows: Vec<&str> = linux_files().iter().map(|e| e.name).collect();
    assert_eq!(listed[..2], [".", ".."]);
    assert_eq!(listed[2..], rows);
    // The table's rows first, then every other entry the running kernel has.
    assert_eq!(
        rows[..PROC_FILES.len()],
        *PROC_FILES.iter().map(|e| e.name).collect::<Vec<_>>()
    );
    for name in ["smaps", "fdinfo", "ns", "oom_score_adj", "auxv"] {
        assert!(rows.contains(&name), "{name}");
    }
    assert_eq!(
        names(&fs, Node::Root).last().map(String::as_str),
        Some("4242")
    );
}

#[test]
fn a_file_has_its_rows_mode_and_renders_as_its_show_function() {
    let fs = view("");
    let p = test_process();
    for (name, mode, want) in [
        ("stat", 0o444, linux::stat(&p, &HOST).unwrap()),
        ("status", 0o444, linux::status(&p, &HOST).unwrap()),
        ("statm", 0o444, linux::statm(&p, &HOST).unwrap()),
        ("cmdline", 0o444, b"sleep\x001000\x00".to_vec()),
    ] {
        let attr = attr_of(&fs, Node::ProcDir(4242), name);
        assert_eq!((attr.perm, attr.uid), (mode, 1000), "{name}");
        match open(&fs, 0, attr.ino.0, libc::O_RDONLY) {
            Ok(Opened::Rendered(bytes)) => assert_eq!(bytes, want, "{name}"),
            _ => panic!("{name} did not render"),
        }
    }
}

#[test]
fn names_that_cannot_be_are_misses_the_kernel_may_keep() {
    let fs = view("");
    assert!(matches!(lookup(&fs, Node::Root, "007"), Err(Errno::ENOENT)));
    assert!(matches!(
        lookup(&fs, Node::Root, "99999"),
        Err(Errno::ENOENT)
    ));
    assert!(matches!(
        lookup(&fs, Node::ProcDir(4242), "ctty"),
        Ok(Found::Never)
    ));
    // A process that is not there: its files are gone too.
    assert!(
        fs.do_getattr(&who(0), Node::ProcDir(4243).ino().unwrap())
            .is_err()
    );
}

#[test]
fn control_files_are_served_only_where_the_mount_can_keep_their_semantics() {
    for (options, served) in [("", true), ("cache=1000", false), ("uring", true)] {
        let fs = view(options);
        let listed = names(&fs, Node::ProcDir(4242));
        assert_eq!(listed.iter().any(|n| n == "ctl"), served, "{options:?}");
        assert_eq!(
            matches!(lookup(&fs, Node::ProcDir(4242), "ctl"), Ok(Found::Node(_))),
            served,
            "{options:?}"
        );
    }
    // Served, but this view was made without the control layer.
    let fs = view("");
    let ctl = attr_of(&fs, Node::ProcDir(4242), "ctl");
    assert!(matches!(
        open(&fs, 0, ctl.ino.0, libc::O_WRONLY),
        Err(Errno::EOPNOTSUPP)
    ));
}

#[test]
fn modes_decide_who_opens_and_only_control_files_and_kernel_twins_take_writes() {
    let fs = view("");
    let environ = attr_of(&fs, Node::ProcDir(4242), "environ").ino.0;
    let stat = attr_of(&fs, Node::ProcDir(4242), "stat").ino.0;
    // 0400 and another user's.
    assert!(matches!(
        open(&fs, 2000, environ, libc::O_RDONLY),
        Err(Errno::EACCES)
    ));
    // 0444: the mode refuses a writer before the kernel's twin is asked (root's open goes to
    // the twin: agent/tests/entries.rs).
    assert!(matches!(
        open(&fs, 2000, stat, libc::O_WRONLY),
        Err(Errno::EACCES)
    ));
    // A personality's own file has no twin to write to, whoever asks.
    let plan9 = view("personality=plan9");
    let status = attr_of(&plan9, Node::ProcDir(4242), "status").ino.0;
    assert!(matches!(
        open(&plan9, 0, status, libc::O_WRONLY),
        Err(Errno::EACCES)
    ));
    // Truncation (the shell's O_TRUNC) is nothing for whoever may write, EACCES for others;
    // modes and owners are the process's.
    assert!(fs.do_setattr(&who(0), stat, None, false).is_ok());
    assert!(matches!(
        fs.do_setattr(&who(2000), stat, None, false),
        Err(Errno::EACCES)
    ));
    assert!(matches!(
        fs.do_setattr(&who(0), stat, Some(0o600), false),
        Err(Errno::EPERM)
    ));
    assert!(matches!(
        fs.do_setattr(&who(0), stat, None, true),
        Err(Errno::EPERM)
    ));
}

#[test]
fn the_umask_option_takes_bits_from_every_node() {
    let fs = view("umask=022");
    assert_eq!(attr_of(&fs, Node::ProcDir(4242), "ctl").perm, 0o200);
    assert_eq!(attr_of(&fs, Node::ProcDir(4242), "mem").perm, 0o600);
    let fs = view("umask=077");
    assert_eq!(attr_of(&fs, Node::ProcDir(4242), "stat").perm, 0o400);
}

#[test]
fn handles_of_a_previous_agent_are_served_again_and_unknown_ones_refused() {
    let fs = view("");
    // A directory and a file opened from the agent this one took the connection over from.
    let old = fs.first_fh - 10;
    let dir = Node::ProcDir(4242).ino().unwrap();
    let list = fs.listing(&who(0), dir, old).expect("listed again");
    assert!(list.iter().any(|e| e.name == b"stat"));
    let stat = attr_of(&fs, Node::ProcDir(4242), "stat").ino.0;
    let want = linux::stat(&test_process(), &HOST).unwrap();
    assert_eq!(
        *fs.rendering(&who(0), stat, old).expect("rendered again"),
        want
    );
    // One never handed out, by this agent or one before it.
    let unknown = fs.first_fh + 1_000_000;
    assert_eq!(
        fs.rendering(&who(0), stat, unknown).unwrap_err(),
        Errno::EBADF
    );
}
