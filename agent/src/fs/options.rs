//! Mount options (`-o a,b=c`, as mount(8) takes them).

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personality {
    Linux,
    /// Plan 9 proc(3): one directory per pid with ctl, mem, note, noteid, notepg, proc,
    /// segment, status, text and wait; nothing else at the root.
    Plan9,
    /// SVR4 PROC(4) (RISC/os): the root holds one file per process, five-digit names, the
    /// address space read and written through it and the PFC* requests as ioctls.
    Svr4,
    /// QNX procnto: one directory per pid with as, ctl, cmdline and exefile.
    Qnx,
    /// FreeBSD procfs(5): pid directories and `curproc` at the root (fs/bsd.rs).
    FreeBsd,
    /// NetBSD mount_procfs(8), which OpenBSD's is a subset of: pid directories, `curproc`,
    /// `self` and the Linux-compatible nodes `nolinux` hides (fs/bsd.rs).
    NetBsd,
}

/// Which processes a mount shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    /// The processes in this cgroup (v2 path under /sys/fs/cgroup, or absolute) and below.
    Cgroup(PathBuf),
    /// The processes in the cgroup subtree of this process: "the view of its container".
    CgroupOf(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub personality: Personality,
    pub scope: Scope,
    /// Hide the Linux-compatible nodes of personalities that have them.
    pub nolinux: bool,
    /// Bits removed from every node's mode.
    pub umask: u16,
    /// Let users other than root use the mount (permissions still apply per file).
    pub allow_other: bool,
    /// `ro`: a read-only mount (MS_RDONLY). Nothing is written through it, neither the
    /// kernel's files nor control files: EROFS, from the kernel itself.
    pub read_only: bool,
    /// Bounded-staleness mode: contents and attributes may be up to this old, and the kernel
    /// serves repeated reads from its page cache without asking the agent. Such a mount has
    /// no control files.
    pub cache: Option<std::time::Duration>,
    /// Serve rendered files through FUSE passthrough (fuse/passthrough.rs): no READ round
    /// trips, but opens of a file that overlap share one rendering.
    pub passthrough: bool,
    /// Serve the view over FUSE-over-io_uring queues, one per CPU (fuse/uring.rs), instead
    /// of fuser's /dev/fuse threads: a request is answered on the CPU that made it. Not with
    /// `cache=`, nor for the SVR4 and QNX personalities, whose ioctls fuser's adapter serves.
    pub uring: bool,
    /// The raw text, for listings.
    pub text: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            personality: Personality::Linux,
            scope: Scope::All,
            nolinux: false,
            umask: 0,
            allow_other: true,
            read_only: false,
            cache: None,
            passthrough: false,
            uring: false,
            text: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option {0:?}")]
    Unknown(String),
    #[error("mount option {0}: {1}")]
    Bad(String, String),
    #[error("mount options pid= and cgroup= exclude each other")]
    Conflict,
}

impl MountOptions {
    pub fn parse(text: &str) -> Result<Self, OptionError> {
        let mut o = MountOptions {
            text: text.to_string(),
            ..Default::default()
        };
        let mut scoped = false;
        for opt in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let need = |what: &str| {
                value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| OptionError::Bad(key.into(), format!("needs {what}")))
            };
            match key {
                "personality" => {
                    o.personality = match need("a name")? {
                        "linux" => Personality::Linux,
                        "plan9" => Personality::Plan9,
                        "svr4" => Personality::Svr4,
                        "qnx" => Personality::Qnx,
                        "freebsd" => Personality::FreeBsd,
                        // OpenBSD's procfs was NetBSD's; its manual lists the same files.
                        "netbsd" | "openbsd" => Personality::NetBsd,
                        other => {
                            return Err(OptionError::Bad(
                                key.into(),
                                format!(
                                    "{other:?} is not a personality (linux, plan9, freebsd, \
                                     netbsd, openbsd, svr4, qnx)"
                                ),
                            ));
                        }
                    }
                }
                "cgroup" | "pid" => {
                    if scoped {
                        return Err(OptionError::Conflict);
                    }
                    scoped = true;
                    let v = need(if key == "pid" { "a pid" } else { "a path" })?;
                    o.scope = if key == "pid" {
                        Scope::CgroupOf(v.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                            OptionError::Bad(key.into(), format!("{v:?} is not a pid"))
                        })?)
                    } else {
                        if v.split('/').any(|c| c == "..") {
                            return Err(OptionError::Bad(key.into(), "must not contain ..".into()));
                        }
                        Scope::Cgroup(PathBuf::from(v))
                    };
                }
                "nolinux" => o.nolinux = flag(key, value)?,
                "cache" => {
                    let v = need("a bound in milliseconds")?;
                    let ms = v.parse::<u64>().ok().filter(|ms| (1..=60_000).contains(ms));
                    o.cache = Some(std::time::Duration::from_millis(ms.ok_or_else(|| {
                        OptionError::Bad(key.into(), format!("{v:?} is not 1..=60000 ms"))
                    })?));
                }
                "passthrough" => o.passthrough = flag(key, value)?,
                "uring" => o.uring = flag(key, value)?,
                "allow_other" => o.allow_other = flag(key, value)?,
                "noallow_other" => o.allow_other = !flag(key, value)?,
                "umask" => {
                    let v = need("an octal mask")?;
                    o.umask = u16::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| {
                            OptionError::Bad(key.into(), format!("{v:?} is not an octal mask"))
                        })?;
                }
                "ro" => o.read_only = flag(key, value)?,
                "rw" => o.read_only = !flag(key, value)?,
                // Accepted for fstab compatibility: every view is nodev, nosuid and noexec.
                "defaults" | "nodev" | "nosuid" | "noexec" | "_netdev" | "auto" | "noauto"
                | "user" | "nouser" => {}
                _ => return Err(OptionError::Unknown(opt.into())),
            }
        }
        if o.cache.is_some() && o.personality != Personality::Linux {
            // The other views are mostly address spaces and control files, which a cache
            // mount cannot serve (the kernel would answer their opens).
            return Err(OptionError::Bad(
                "cache".into(),
                "only the linux personality can be cached".into(),
            ));
        }
        if o.passthrough && o.cache.is_some() {
            // A cache mount has no opens to pass through: the kernel opens its files itself.
            return Err(OptionError::Bad(
                "passthrough".into(),
                "a cache= mount reads through the page cache instead".into(),
            ));
        }
        if o.uring {
            let clash = if o.cache.is_some() {
                Some("cache=")
            } else if matches!(o.personality, Personality::Svr4 | Personality::Qnx) {
                Some("this personality's ioctls")
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(OptionError::Bad(
                    "uring".into(),
                    format!("the io_uring transport serves never-stale views without {what}"),
                ));
            }
        }
        Ok(o)
    }
}

fn flag(key: &str, value: Option<&str>) -> Result<bool, OptionError> {
    match value {
        None => Ok(true),
        Some(v) => Err(OptionError::Bad(
            key.into(),
            format!("takes no value, got {v:?}"),
        )),
    }
}

/// The properties the option parser keeps for any input: no panic, and what it accepts is
/// within bounds and parses the same again. Run by the fuzz target (`fuzz/`, `cargo xtask
/// fuzz`) and, over a generated corpus, by the unit tests.
#[cfg(any(test, fuzzing))]
pub fn fuzz_check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // mount(8) and the socket hand over strings
    };
    match MountOptions::parse(text) {
        Ok(o) => {
            assert_eq!(o.text, text);
            assert!(o.umask <= 0o777);
            match &o.scope {
                Scope::All => {}
                Scope::Cgroup(p) => assert!(
                    !p.as_os_str().is_empty()
                        && !p.components().any(|c| c == std::path::Component::ParentDir),
                    "{p:?}"
                ),
                Scope::CgroupOf(pid) => assert!(*pid > 0),
            }
            assert_eq!(MountOptions::parse(text).as_ref(), Ok(&o));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ro_is_kept_and_the_last_of_ro_and_rw_wins() {
        assert!(!MountOptions::parse("").unwrap().read_only);
        assert!(MountOptions::parse("ro").unwrap().read_only);
        assert!(!MountOptions::parse("ro,rw").unwrap().read_only);
        assert!(MountOptions::parse("rw,ro,nodev").unwrap().read_only);
    }

    #[test]
    fn uring_is_a_plain_never_stale_option() {
        assert!(!MountOptions::parse("").unwrap().uring);
        assert!(MountOptions::parse("uring").unwrap().uring);
        assert!(
            MountOptions::parse("uring,personality=freebsd")
                .unwrap()
                .uring
        );
        assert!(
            MountOptions::parse("uring,passthrough")
                .unwrap()
                .passthrough
        );
        for clash in ["cache=100", "personality=svr4", "personality=qnx"] {
            assert!(
                MountOptions::parse(&format!("uring,{clash}")).is_err(),
                "{clash}"
            );
        }
    }

    #[test]
    fn passthrough_is_a_never_stale_option() {
        assert!(!MountOptions::parse("").unwrap().passthrough);
        assert!(MountOptions::parse("passthrough").unwrap().passthrough);
        assert!(MountOptions::parse("passthrough=1").is_err());
        assert!(MountOptions::parse("passthrough,cache=100").is_err());
    }

    #[test]
    fn defaults_and_full_set() {
        assert_eq!(
            MountOptions::parse("").unwrap().personality,
            Personality::Linux
        );
        let o = MountOptions::parse("personality=linux,cgroup=/system.slice,umask=027,nolinux")
            .unwrap();
        assert_eq!(o.scope, Scope::Cgroup("/system.slice".into()));
        assert_eq!(o.umask, 0o027);
        assert!(o.nolinux);
        assert_eq!(
            MountOptions::parse("pid=42").unwrap().scope,
            Scope::CgroupOf(42)
        );
        assert_eq!(
            MountOptions::parse("cache=250").unwrap().cache,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(MountOptions::parse("").unwrap().cache, None);
        for (name, p) in [("svr4", Personality::Svr4), ("qnx", Personality::Qnx)] {
            let o = MountOptions::parse(&format!("personality={name},umask=077")).unwrap();
            assert_eq!((o.personality, o.umask), (p, 0o077));
        }
    }

    #[test]
    fn bsd_personalities_parse() {
        for (text, want) in [
            ("personality=freebsd", Personality::FreeBsd),
            ("personality=netbsd", Personality::NetBsd),
            ("personality=openbsd", Personality::NetBsd),
        ] {
            assert_eq!(MountOptions::parse(text).unwrap().personality, want);
        }
        let o = MountOptions::parse("personality=netbsd,nolinux").unwrap();
        assert!(o.nolinux);
    }

    #[test]
    fn bad_options_are_rejected_with_a_reason() {
        for bad in [
            "personality=amiga",
            "umask=999",
            "umask=",
            "pid=0",
            "pid=x",
            "cgroup=../../etc",
            "bogus",
            "nolinux=1",
            "pid=1,cgroup=/a",
            "cache",
            "cache=0",
            "cache=60001",
            "cache=1s",
            "cache=100,personality=plan9",
        ] {
            assert!(MountOptions::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
