//! Descriptors kept outside the agent, so that what they hold (the views' FUSE connections)
//! outlives it: systemd's file descriptor store when the agent runs under systemd
//! (`$NOTIFY_SOCKET`, `FDSTORE=1`), otherwise a keeper process of the agent's own
//! (`bpfproc keeper`, `keep`) that holds them on a unix socket and hands them to the next
//! agent. Each descriptor is kept under a name, which systemd wants printable ASCII without
//! ':' and at most 255 bytes (`name`).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;
/// systemd's limit on an FDNAME.
const MAX_NAME: usize = 255;

/// A descriptor and the name it is kept under.
#[derive(Debug)]
pub struct Kept {
    pub name: String,
    pub fd: OwnedFd,
}

/// A name made of `parts`, each percent-encoded so the name is printable ASCII with no ':'
/// (systemd's rule) and no '|' (the separator); `None` when it is longer than systemd allows.
pub fn name(parts: &[&[u8]]) -> Option<String> {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        for &b in *part {
            if b.is_ascii_graphic() && !matches!(b, b'%' | b':' | b'|') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    (out.len() <= MAX_NAME).then_some(out)
}

/// The parts of a `name`.
pub fn parts(name: &str) -> Option<Vec<Vec<u8>>> {
    name.split('|')
        .map(|part| {
            let b = part.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            Some(out)
        })
        .collect()
}

fn cvt(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Sends `data` with `fds` attached (SCM_RIGHTS) on `sock`, to `to` if it is an unbound
/// datagram socket.
pub fn send(
    sock: BorrowedFd<'_>,
    to: Option<&libc::sockaddr_un>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(raw.as_slice()) as u32) };
    let mut control = vec![0u8; space as usize];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(addr) = to {
        msg.msg_name = addr as *const _ as *mut _;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: the control buffer is CMSG_SPACE bytes for this many descriptors, so the
        // first header and its data fit in it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(raw.as_slice()) as u32) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
    }
    // SAFETY: every pointer in msg points into buffers that outlive the call.
    let n = cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    if n != data.len() {
        return Err(io::Error::other("short send"));
    }
    Ok(())
}

/// Receives one message into `buf` with the descriptors attached to it (close-on-exec).
/// `(0, [])` is the end of a stream.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    let mut control = vec![0u8; space as usize];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    let n = loop {
        // SAFETY: msg points into buffers that outlive the call.
        match cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg's control buffer; CMSG_* walk it within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds))
}

fn sockaddr(path: &[u8]) -> io::Result<libc::sockaddr_un> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as u16;
    if path.is_empty() || path.len() >= addr.sun_path.len() {
        return Err(io::Error::other("bad unix socket path"));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // An abstract socket: systemd writes it with a leading '@'.
    if path[0] == b'@' {
        addr.sun_path[0] = 0;
    }
    Ok(addr)
}

fn socket(kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) } as isize)?;
    // SAFETY: just created, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(libc::SOCK_SEQPACKET)?;
    let addr = sockaddr(path.as_os_str().as_bytes())?;
    // SAFETY: addr is a valid sockaddr_un of the given size.
    cvt(unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        )
    } as isize)?;
    Ok(sock)
}

/// Where this agent keeps its descriptors.
pub enum Holder {
    /// systemd's file descriptor store, through `$NOTIFY_SOCKET`.
    Systemd {
        sock: OwnedFd,
        addr: libc::sockaddr_un,
    },
    /// A keeper process (`keep`), through a connection to its socket.
    Keeper(Mutex<OwnedFd>),
}

impl Holder {
    /// systemd's store when the agent runs under systemd, with the descriptors systemd passed
    /// to this start (`$LISTEN_FDS`, named by `$LISTEN_FDNAMES`).
    pub fn systemd() -> Option<io::Result<(Self, Vec<Kept>)>> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        Some((|| {
            let sock = socket(libc::SOCK_DGRAM)?;
            let addr = sockaddr(path.as_bytes())?;
            Ok((Self::Systemd { sock, addr }, listen_fds()))
        })())
    }

    /// The keeper at `path`, started by `start` if none answers there, and what it holds.
    pub fn keeper(
        path: &Path,
        start: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<(Self, Vec<Kept>)> {
        let conn = match connect(path) {
            Ok(c) => c,
            Err(_) => {
                let _ = std::fs::remove_file(path);
                start()?;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match connect(path) {
                        Ok(c) => break c,
                        Err(e) if Instant::now() > deadline => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        };
        send(conn.as_fd(), None, b"take", &[])?;
        let mut buf = vec![0u8; 64 * 1024];
        let (n, fds) = recv(conn.as_fd(), &mut buf)?;
        let kept = named(&buf[..n], fds)?;
        Ok((Self::Keeper(Mutex::new(conn)), kept))
    }

    /// Keeps `fd` under `name`, replacing what was kept under it.
    pub fn store(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Self::Systemd { sock, addr } => {
                let msg = format!("FDSTORE=1\nFDNAME={name}\n");
                // systemd adds a descriptor under a name already used: remove first.
                self.remove(name)?;
                send(sock.as_fd(), Some(addr), msg.as_bytes(), &[fd])
            }
            Self::Keeper(conn) => self.keeper_say(conn, &format!("store {name}"), &[fd]),
        }
    }

    /// Forgets what is kept under `name` (closing it there).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match self {
            Self::Systemd { sock, addr } => {
                let msg = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
                send(sock.as_fd(), Some(addr), msg.as_bytes(), &[])
            }
            Self::Keeper(conn) => self.keeper_say(conn, &format!("remove {name}"), &[]),
        }
    }

    /// The agent is stopping for good: a keeper closes everything and exits; systemd
    /// releases its store itself when the unit stops.
    pub fn quit(&self) {
        if let Self::Keeper(conn) = self {
            let _ = self.keeper_say(conn, "quit", &[]);
        }
    }

    /// Whether systemd holds the descriptors.
    pub fn is_systemd(&self) -> bool {
        matches!(self, Self::Systemd { .. })
    }

    fn keeper_say(
        &self,
        conn: &Mutex<OwnedFd>,
        msg: &str,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let conn = conn.lock().map_err(|_| io::Error::other("keeper lock"))?;
        send(conn.as_fd(), None, msg.as_bytes(), fds)?;
        if msg == "quit" {
            return Ok(());
        }
        // Acknowledged: once this returns, an agent that takes next sees the change.
        let mut ack = [0u8; 8];
        match recv(conn.as_fd(), &mut ack)? {
            (2, _) if &ack[..2] == b"ok" => Ok(()),
            _ => Err(io::Error::other("the keeper did not acknowledge")),
        }
    }
}

/// Pairs the names of a `take` reply (one a line) with its descriptors.
pub fn named(names: &[u8], fds: Vec<OwnedFd>) -> io::Result<Vec<Kept>> {
    let names: Vec<&str> = std::str::from_utf8(names)
        .map_err(io::Error::other)?
        .lines()
        .filter(|l| !l.is_empty())
        .collect();
    if names.len() != fds.len() {
        return Err(io::Error::other("names and descriptors do not pair up"));
    }
    Ok(names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| Kept {
            name: name.to_string(),
            fd,
        })
        .collect())
}

/// The descriptors systemd passed to this process (sd_listen_fds_with_names), made
/// close-on-exec; the variables are removed so no child sees them.
fn listen_fds() -> Vec<Kept> {
    let var = |k: &str| std::env::var(k).ok();
    let mine = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = var("LISTEN_FDS")
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names = var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: the agent is single-threaded here (before its runtime starts).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !mine {
        return Vec::new();
    }
    let names: Vec<&str> = names.split(':').collect();
    (0..count)
        .map(|i| {
            let raw = 3 + i;
            // SAFETY: systemd passed descriptors 3.. to this process; nothing else owns them.
            unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
            Kept {
                name: names
                    .get(i as usize)
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                // SAFETY: as above.
                fd: unsafe { OwnedFd::from_raw_fd(raw) },
            }
        })
        .collect()
}

/// The keeper (`bpfproc keeper`): holds descriptors for the agents that connect to `path`,
/// each under a name, and hands them all to whoever asks (`take`). It exits on `quit`, or
/// once no agent has been connected for `grace` (closing what it holds: a FUSE connection
/// then ends, as if its agent had died unkept). Messages are single SOCK_SEQPACKET packets:
/// `store NAME` with one descriptor and `remove NAME` (each answered `ok`), `take` (answered
/// with the names, one a line, and the descriptors), `quit`.
pub fn keep(path: &Path, grace: Duration) -> io::Result<()> {
    let listener = socket(libc::SOCK_SEQPACKET)?;
    let addr = sockaddr(path.as_os_str().as_bytes())?;
    let _ = std::fs::remove_file(path);
    // SAFETY: addr is a valid sockaddr_un; listen has no memory arguments.
    unsafe {
        cvt(libc::bind(
            listener.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        ) as isize)?;
        cvt(libc::listen(listener.as_raw_fd(), 8) as isize)?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let mut held: BTreeMap<String, OwnedFd> = BTreeMap::new();
    let mut clients: Vec<OwnedFd> = Vec::new();
    let mut alone_since = Some(Instant::now());
    let mut buf = vec![0u8; 4096];
    let result = loop {
        if let Some(t) = alone_since
            && t.elapsed() >= grace
        {
            break Ok(());
        }
        let mut polled: Vec<libc::pollfd> = std::iter::once(&listener)
            .chain(&clients)
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait = alone_since.map_or(-1, |t| {
            grace.saturating_sub(t.elapsed()).as_millis() as i32 + 1
        });
        // SAFETY: polled is a valid array of pollfd.
        if unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as u64, wait) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(e);
        }
        if polled[0].revents != 0 {
            // SAFETY: accept4 on our listening socket; no address wanted.
            let c = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c >= 0 {
                // SAFETY: a new descriptor from accept4.
                clients.push(unsafe { OwnedFd::from_raw_fd(c) });
            }
        }
        let mut gone = Vec::new();
        let mut quit = false;
        for (i, p) in polled.iter().enumerate().skip(1) {
            if p.revents == 0 {
                continue;
            }
            let client = &clients[i - 1];
            let (n, mut fds) = match recv(client.as_fd(), &mut buf) {
                Ok((0, _)) | Err(_) => {
                    gone.push(i - 1);
                    continue;
                }
                Ok(r) => r,
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (verb, name) = msg.split_once(' ').unwrap_or((msg.as_str(), ""));
            match verb {
                "store" if fds.len() == 1 => {
                    held.insert(name.to_string(), fds.remove(0));
                    let _ = send(client.as_fd(), None, b"ok", &[]);
                }
                "remove" => {
                    held.remove(name);
                    let _ = send(client.as_fd(), None, b"ok", &[]);
                }
                "take" => {
                    let names: String = held.keys().map(|k| format!("{k}\n")).collect();
                    let fds: Vec<BorrowedFd<'_>> =
                        held.values().map(|f| f.as_fd()).take(MAX_FDS).collect();
                    let _ = send(client.as_fd(), None, names.as_bytes(), &fds);
                }
                "quit" => quit = true,
                _ => {}
            }
        }
        if quit {
            break Ok(());
        }
        for i in gone.into_iter().rev() {
            clients.remove(i);
        }
        alone_since = match (clients.is_empty(), alone_since) {
            (false, _) => None,
            (true, None) if held.is_empty() => Some(Instant::now() - grace),
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
    };
    let _ = std::fs::remove_file(path);
    result
}

/// A keeper's socket beside the agent's control socket.
pub fn keeper_path(socket: &Path) -> std::path::PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(OsStr::new(".keeper"));
    p.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_systemd_fdnames_and_come_back() {
        let n = name(&[b"/srv/my proc:1", b"personality=linux,umask=027"]).unwrap();
        assert!(n.bytes().all(|b| b.is_ascii_graphic() && b != b':'), "{n}");
        assert_eq!(
            parts(&n).unwrap(),
            vec![
                b"/srv/my proc:1".to_vec(),
                b"personality=linux,umask=027".to_vec()
            ]
        );
        assert!(name(&[&[b'x'; 300]]).is_none(), "too long for systemd");
    }

    #[test]
    fn a_keeper_hands_what_it_holds_to_the_next_agent() {
        let dir = std::env::temp_dir().join(format!("bpfproc-keeper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.sock");
        let p = path.clone();
        let keeper = std::thread::spawn(move || keep(&p, Duration::from_secs(5)));
        let (first, kept) = Holder::keeper(&path, || Ok(())).unwrap();
        assert!(kept.is_empty());
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        first.store("a", file.as_fd()).unwrap();
        first.store("b", file.as_fd()).unwrap();
        first.remove("b").unwrap();
        drop(first);
        let (second, kept) = Holder::keeper(&path, || Ok(())).unwrap();
        assert_eq!(
            kept.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        second.quit();
        keeper.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
