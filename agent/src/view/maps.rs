//! Parsing of the kernel's `/proc/PID/maps` and `smaps` text, for the personalities that show
//! memory in their own layout (Plan 9 `segment`, FreeBSD and NetBSD `map`). The text is an input
//! so the renderers stay pure; the caller reads it (with the pid's identity checked).

/// One mapping. The `smaps`-only fields are `None` when plain `maps` text was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` in the flags column (MAP_SHARED); otherwise private, copy-on-write.
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// The path column: a file, `[heap]`, `[stack]`, `[vdso]`, … or empty for anonymous memory.
    pub path: Vec<u8>,
    /// `Rss:` in KiB.
    pub rss_kb: Option<u64>,
    /// `Private_Clean:` + `Private_Dirty:` in KiB.
    pub private_kb: Option<u64>,
    /// `Anonymous:` in KiB: pages this mapping has copied (or zero-filled) for itself.
    pub anon_kb: Option<u64>,
    /// The two-letter `VmFlags:` codes (`mr`, `mw`, `me`, `lo`, `dc`, `wf`, `sr`, `rr`, …).
    pub vm_flags: Option<Vec<[u8; 2]>>,
}

impl Region {
    pub fn has_flag(&self, code: &[u8; 2]) -> bool {
        self.vm_flags.as_ref().is_some_and(|f| f.contains(code))
    }

    /// A file mapping (not anonymous memory and not one of the kernel's `[…]` areas).
    pub fn is_file(&self) -> bool {
        self.inode != 0 || self.path.first() == Some(&b'/')
    }
}

/// Parses `maps` or `smaps` text. A malformed header line is an error (EIO): the kernel's own
/// text never has one, so it means the input is not what the caller thinks it is.
pub fn parse(text: &[u8]) -> Result<Vec<Region>, std::io::Error> {
    // As a raw errno, since ViewError takes an error without one for a vanished process.
    let bad = |_line: &[u8]| std::io::Error::from_raw_os_error(libc::EIO);
    let mut out: Vec<Region> = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Some(detail) = smaps_detail(line) {
            let r = out.last_mut().ok_or_else(|| bad(line))?;
            apply_detail(r, detail);
            continue;
        }
        out.push(header(line).ok_or_else(|| bad(line))?);
    }
    Ok(out)
}

/// `Key: value…` lines of smaps: the key has no `-` (a header starts with `start-end`).
fn smaps_detail(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let key = &line[..colon];
    (!key.is_empty() && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_'))
        .then(|| (key, line[colon + 1..].trim_ascii()))
}

fn apply_detail(r: &mut Region, (key, value): (&[u8], &[u8])) {
    let kb = || {
        std::str::from_utf8(value.strip_suffix(b" kB").unwrap_or(value))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    match key {
        b"Rss" => r.rss_kb = kb(),
        b"Private_Clean" | b"Private_Dirty" => {
            if let Some(v) = kb() {
                r.private_kb = Some(r.private_kb.unwrap_or(0) + v);
            }
        }
        b"Anonymous" => r.anon_kb = kb(),
        b"VmFlags" => {
            r.vm_flags = Some(
                value
                    .split(|&b| b == b' ')
                    .filter_map(|f| <[u8; 2]>::try_from(f).ok())
                    .collect(),
            );
        }
        _ => {}
    }
}

fn header(line: &[u8]) -> Option<Region> {
    let mut fields = line.splitn(6, |&b| b == b' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    // The path is padded with spaces to a column; the padding is not part of it.
    let path = fields.next().unwrap_or(b"").trim_ascii_start();
    let hex = |f: &[u8]| u64::from_str_radix(std::str::from_utf8(f).ok()?, 16).ok();
    let dash = range.iter().position(|&b| b == b'-')?;
    if perms.len() != 4 {
        return None;
    }
    Some(Region {
        start: hex(&range[..dash])?,
        end: hex(&range[dash + 1..])?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: hex(offset)?,
        inode: std::str::from_utf8(inode).ok()?.parse().ok()?,
        path: path.to_vec(),
        rss_kb: None,
        private_kb: None,
        anon_kb: None,
        vm_flags: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small but real-shaped x86-64 `smaps` of `/usr/bin/cat` (trimmed to the fields the
    /// parser reads plus a few it must skip).
    pub(crate) const SMAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1311 /usr/bin/cat
Size:                  8 kB
Rss:                   8 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0c0a02000-55d0c0a07000 r-xp 00002000 fd:01 1311 /usr/bin/cat
Rss:                  20 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
55d0c0a09000-55d0c0a0a000 rw-p 00008000 fd:01 1311 /usr/bin/cat
Rss:                   4 kB
Private_Clean:         0 kB
Private_Dirty:         4 kB
Anonymous:             4 kB
VmFlags: rd wr mr mw me dw ac sd
55d0c0a0a000-55d0c0a0b000 rw-p 00000000 00:00 0 
Rss:                   4 kB
Private_Clean:         0 kB
Private_Dirty:         4 kB
Anonymous:             4 kB
VmFlags: rd wr mr mw me ac sd
55d0c1b3e000-55d0c1b5f000 rw-p 00000000 00:00 0                          [heap]
Rss:                   8 kB
Private_Clean:         0 kB
Private_Dirty:         8 kB
Anonymous:             8 kB
VmFlags: rd wr mr mw me ac sd
7f0a1c000000-7f0a1c021000 rw-s 00000000 00:01 2049                       /dev/zero (deleted)
Rss:                   0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd wr sh mr mw me ms dc sd
7f0a1c200000-7f0a1c228000 r--p 00000000 fd:01 2233 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 160 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd sr
7ffd4a5e0000-7ffd4a601000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
Private_Clean:         0 kB
Private_Dirty:        12 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me gd ac lo
7ffd4a7e8000-7ffd4a7ea000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr me de sd
";

    /// The same mappings as plain `maps` lines.
    pub(crate) const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1311                       /usr/bin/cat
55d0c0a02000-55d0c0a07000 r-xp 00002000 fd:01 1311                       /usr/bin/cat
55d0c0a09000-55d0c0a0a000 rw-p 00008000 fd:01 1311                       /usr/bin/cat
55d0c0a0a000-55d0c0a0b000 rw-p 00000000 00:00 0 
55d0c1b3e000-55d0c1b5f000 rw-p 00000000 00:00 0                          [heap]
7f0a1c000000-7f0a1c021000 rw-s 00000000 00:01 2049                       /dev/zero (deleted)
7f0a1c200000-7f0a1c228000 r--p 00000000 fd:01 2233                       /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd4a5e0000-7ffd4a601000 rw-p 00000000 00:00 0                          [stack]
7ffd4a7e8000-7ffd4a7ea000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn maps_and_smaps_give_the_same_regions() {
        let plain = parse(MAPS.as_bytes()).unwrap();
        let full = parse(SMAPS.as_bytes()).unwrap();
        assert_eq!(plain.len(), 9);
        assert_eq!(full.len(), 9);
        for (a, b) in plain.iter().zip(&full) {
            assert_eq!((a.start, a.end, &a.path), (b.start, b.end, &b.path));
            assert_eq!(a.rss_kb, None);
        }
        let data = &full[2];
        assert_eq!((data.start, data.end), (0x55d0c0a09000, 0x55d0c0a0a000));
        assert!(data.read && data.write && !data.exec && !data.shared);
        assert_eq!(data.offset, 0x8000);
        assert_eq!(data.path, b"/usr/bin/cat");
        assert_eq!(
            (data.rss_kb, data.private_kb, data.anon_kb),
            (Some(4), Some(4), Some(4))
        );
        assert!(data.has_flag(b"mw") && !data.has_flag(b"lo"));
        assert!(full[5].shared && full[5].is_file());
        assert!(!full[3].is_file() && full[3].path.is_empty());
        assert!(!full[8].is_file());
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_map() {
        assert!(parse(b"hello world\n").is_err());
        assert!(
            parse(b"Rss: 4 kB\n").is_err(),
            "a detail line before any header"
        );
        assert_eq!(parse(b"").unwrap(), vec![]);
    }
}
