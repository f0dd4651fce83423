//! Descriptors kept outside the agent, so that what they hold (the views' FUSE connections)
//! outlives it: systemd's file descriptor store when the agent runs under systemd
//! (`$NOTIFY_SOCKET`, `FDSTORE=1`), otherwise a keeper process of the agent's own
//! (`bpfproc keeper`, `keep`) that holds them on a unix socket and hands them to the next
//! agent. Each descriptor is kept under a name, which systemd wants printable ASCII without
//! ':' and at most 255 bytes (`name`).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
        UnixAddr, accept4, bind, listen, recvmsg, sendmsg,
    },
};

/// The most descriptors one message carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;
/// The kernel's most per message: a receive buffer this big is never truncated.
const SCM_MAX_FD: usize = 253;
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

/// Sends `data` with `fds` attached (SCM_RIGHTS) on `sock`, to `to` if it is an unbound
/// datagram socket.
pub fn send(
    sock: BorrowedFd<'_>,
    to: Option<&UnixAddr>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    // No control message at all when nothing is passed.
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let n = sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        to,
    )?;
    if n != data.len() {
        return Err(io::Error::other("short send"));
    }
    Ok(())
}

/// Receives one message into `buf` with the descriptors attached to it (close-on-exec).
/// `(0, [])` is the end of a stream.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    loop {
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            r => r?,
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        return Ok((msg.bytes, fds));
    }
}

/// The address of a unix socket at `path`, or in the abstract namespace if it begins with '@'
/// (as systemd writes `$NOTIFY_SOCKET`).
fn sockaddr(path: &[u8]) -> io::Result<UnixAddr> {
    let bad = || io::Error::other("bad unix socket path");
    // sun_path's 108 bytes, one kept for the NUL.
    if path.is_empty() || path.len() >= 108 {
        return Err(bad());
    }
    match path.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name),
        None => UnixAddr::new(OsStr::from_bytes(path)),
    }
    .map_err(|_| bad())
}

fn socket(kind: SockType) -> io::Result<OwnedFd> {
    Ok(nix::sys::socket::socket(
        AddressFamily::Unix,
        kind,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(SockType::SeqPacket)?;
    let addr = sockaddr(path.as_os_str().as_bytes())?;
    nix::sys::socket::connect(sock.as_raw_fd(), &addr)?;
    Ok(sock)
}

/// Where this agent keeps its descriptors.
pub enum Holder {
    /// systemd's file descriptor store, through `$NOTIFY_SOCKET`.
    Systemd { sock: OwnedFd, addr: UnixAddr },
    /// A keeper process (`keep`), through a connection to its socket.
    Keeper(Mutex<OwnedFd>),
}

impl Holder {
    /// systemd's store when the agent runs under systemd, with the descriptors systemd passed
    /// to this start (`$LISTEN_FDS`, named by `$LISTEN_FDNAMES`).
    pub fn systemd() -> Option<io::Result<(Self, Vec<Kept>)>> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        Some((|| {
            let sock = socket(SockType::Datagram)?;
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
            // SAFETY: systemd passed descriptors 3.. to this process; nothing else owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(3 + i) };
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            let _ = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            Kept {
                name: names
                    .get(i as usize)
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                fd,
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
    let listener = socket(SockType::SeqPacket)?;
    let addr = sockaddr(path.as_os_str().as_bytes())?;
    let _ = std::fs::remove_file(path);
    bind(listener.as_raw_fd(), &addr)?;
    listen(&listener, Backlog::new(8)?)?;
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
        let mut polled: Vec<PollFd<'_>> = std::iter::once(&listener)
            .chain(&clients)
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let wait = alone_since.map_or(PollTimeout::NONE, |t| {
            let left = grace.saturating_sub(t.elapsed()) + Duration::from_millis(1);
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut polled, wait) {
            Err(Errno::EINTR) => continue,
            Err(e) => break Err(e.into()),
            Ok(_) => {}
        }
        let ready: Vec<bool> = polled
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(polled);
        if ready[0]
            && let Ok(c) = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
        {
            // SAFETY: a new descriptor from accept4, owned by nothing else.
            clients.push(unsafe { OwnedFd::from_raw_fd(c) });
        }
        let mut gone = Vec::new();
        let mut quit = false;
        for (i, &r) in ready.iter().enumerate().skip(1) {
            if !r {
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
    fn a_notification_with_a_descriptor_reaches_an_abstract_notify_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("bpfproc-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let systemd = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        let sock = socket(SockType::Datagram).unwrap();
        let to = sockaddr(format!("@{name}").as_bytes()).unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        send(
            sock.as_fd(),
            Some(&to),
            b"FDSTORE=1\nFDNAME=a\n",
            &[file.as_fd()],
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv(systemd.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=a\n");
        assert_eq!(fds.len(), 1);
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
