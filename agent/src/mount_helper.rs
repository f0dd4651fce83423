//! `mount.fuse.bpfproc`: the helper mount(8) runs for `mount -t fuse.bpfproc` and for
//! `/etc/fstab` lines of that type. Install it as a symlink to the bpfproc binary; it asks the
//! running agent (through its control socket) to mount the view, exactly as `bpfproc mount`.
//!
//! mount(8) calls it as `mount.fuse.bpfproc SOURCE DIR [-sfnv] [-o OPTIONS]`. SOURCE is
//! ignored (fstab's first field; `bpfproc` by convention). OPTIONS are the view's options plus
//! `socket=PATH` for a non-default agent socket; the generic options fstab and mount(8) add
//! (`rw`, `defaults`, `nofail`, `x-systemd.*`, …) are not the view's and are dropped.

use std::{ffi::OsString, path::PathBuf};

use anyhow::{Context as _, bail};

pub const HELPER_NAME: &str = "mount.fuse.bpfproc";

pub fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == HELPER_NAME))
        .unwrap_or(false)
}

/// Options mount(8) and fstab use for every file system; none of them is a view option.
fn generic(opt: &str) -> bool {
    const WORDS: &[&str] = &[
        "rw",
        "ro",
        "defaults",
        "auto",
        "noauto",
        "nofail",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "_netdev",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "async",
        "sync",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "lazytime",
        "silent",
        "loud",
    ];
    WORDS.contains(&opt) || opt.starts_with("x-") || opt.starts_with("comment=")
}

struct Parsed {
    dir: PathBuf,
    options: String,
    socket: PathBuf,
    fake: bool,
}

fn parse(args: impl Iterator<Item = OsString>) -> anyhow::Result<Parsed> {
    let mut positional = Vec::new();
    let mut raw_opts = Vec::new();
    let mut fake = false;
    let mut args = args;
    while let Some(a) = args.next() {
        let s = a.to_string_lossy().into_owned();
        match s.as_str() {
            "-o" => raw_opts.push(
                args.next()
                    .context("-o needs a value")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            // -s sloppy, -n no mtab, -v verbose: nothing to do differently. -f: fake it.
            _ if s.starts_with('-') && s.len() > 1 && !s.starts_with("-o") => {
                fake |= s.contains('f');
                if let Some(bad) = s[1..].chars().find(|c| !"sfnvN".contains(*c)) {
                    bail!("{HELPER_NAME}: unknown flag -{bad}");
                }
            }
            _ if s.starts_with("-o") => raw_opts.push(s[2..].to_string()),
            _ => positional.push(a),
        }
    }
    let [_source, dir] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        anyhow::anyhow!(
            "usage: {HELPER_NAME} SOURCE DIR [-o OPTIONS] (got {} operands)",
            p.len()
        )
    })?;
    let mut socket = PathBuf::from(
        std::env::var_os("BPFPROC_SOCKET").unwrap_or_else(|| crate::socket::DEFAULT_SOCKET.into()),
    );
    let mut view = Vec::new();
    for opt in raw_opts
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        if let Some(path) = opt.strip_prefix("socket=") {
            socket = PathBuf::from(path);
        } else if !generic(opt) {
            view.push(opt);
        }
    }
    Ok(Parsed {
        dir: std::path::absolute(PathBuf::from(dir))?,
        options: view.join(","),
        socket,
        fake,
    })
}

pub fn run(args: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    let p = parse(args)?;
    crate::fs::MountOptions::parse(&p.options)
        .with_context(|| format!("{HELPER_NAME}: options {:?}", p.options))?;
    if p.fake {
        return Ok(());
    }
    let resp = crate::socket::call(
        &p.socket,
        &crate::socket::Request::Mount {
            dir: p.dir,
            options: p.options,
        },
    )?;
    match resp.error {
        Some(e) => bail!("{HELPER_NAME}: {e}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = OsString> {
        s.split_whitespace()
            .map(OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn fstab_options_are_sorted_out() {
        let p = parse(args(
            "bpfproc /mnt/p -n -o rw,nofail,personality=linux,x-systemd.requires=bpfproc.service,umask=027,socket=/tmp/s.sock",
        ))
        .unwrap();
        assert_eq!(p.dir, PathBuf::from("/mnt/p"));
        assert_eq!(p.options, "personality=linux,umask=027");
        assert_eq!(p.socket, PathBuf::from("/tmp/s.sock"));
        assert!(!p.fake);
        assert!(parse(args("bpfproc /mnt/p -f")).unwrap().fake);
    }

    #[test]
    fn bad_calls_are_refused() {
        assert!(parse(args("/mnt/p")).is_err());
        assert!(parse(args("a b c")).is_err());
        assert!(parse(args("a /b -z")).is_err());
        assert!(parse(args("a /b -o")).is_err());
    }
}
