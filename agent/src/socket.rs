//! The agent's local control socket: how `bpfproc mount`, `umount` and `mounts` reach the
//! running agent whatever HTTP address it listens on. Root-only: the socket is mode 0600 and
//! every peer's credentials are checked.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    fs::{Handed, MountOptions, Mounts},
    sys::fdstore,
};

pub const DEFAULT_SOCKET: &str = "/run/bpfproc/bpfproc.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Mount {
        dir: PathBuf,
        options: String,
    },
    Umount {
        dir: PathBuf,
    },
    List,
    /// `bpfproc agent --takeover`: the answer carries the kept views (their mount points and
    /// options in `mounts`, their connections attached in the same order), and the agent
    /// then leaves: the connection closes when it has exited.
    Handover,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<(PathBuf, String)>,
}

/// Binds the socket, replacing one left behind by an agent that is gone; refuses if another
/// agent still answers on it.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another agent is running (its socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the socket until `shutdown`; a handover request notifies `handover`.
pub async fn serve(
    listener: UnixListener,
    mounts: Arc<Mounts>,
    handover: Arc<tokio::sync::Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.changed() => break,
        };
        let Ok((stream, _)) = conn else { continue };
        let (mounts, handover) = (mounts.clone(), handover.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, mounts, handover).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    mounts: Arc<Mounts>,
    handover: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let creds = stream.peer_cred()?;
    let me = nix::unistd::geteuid().as_raw();
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(rd, 64 * 1024));
    reader.read_line(&mut line).await?;
    let allowed = creds.uid() == 0 || creds.uid() == me;
    if allowed && matches!(serde_json::from_str(&line), Ok(Request::Handover)) {
        let stream = reader.into_inner().into_inner().reunite(wr)?.into_std()?;
        return hand_over(stream, &mounts, &handover);
    }
    let resp = if !allowed {
        Response {
            error: Some("permission denied: only root may control the agent".into()),
            ..Default::default()
        }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => tokio::task::spawn_blocking(move || execute(&mounts, req)).await?,
            Err(e) => Response {
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        }
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    Ok(())
}

fn execute(mounts: &Mounts, req: Request) -> Response {
    let result = match req {
        Request::Mount { dir, options } => MountOptions::parse(&options)
            .map_err(Into::into)
            .and_then(|o| mounts.mount(&dir, o)),
        Request::Umount { dir } => mounts.umount(&dir),
        Request::Handover => {
            return Response {
                error: Some("a handover is asked for by `bpfproc agent --takeover`".into()),
                ..Default::default()
            };
        }
        Request::List => {
            return Response {
                mounts: mounts.list(),
                ..Default::default()
            };
        }
    };
    Response {
        error: result.err().map(|e| e.to_string()),
        ..Default::default()
    }
}

/// Sends the kept views, with their connections, to the agent taking over, and has this one
/// leave. The connection is left open until this process exits, which is how the next agent
/// knows it is gone.
fn hand_over(
    stream: std::os::unix::net::UnixStream,
    mounts: &Mounts,
    handover: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    let handed = mounts.handed();
    let resp = Response {
        mounts: handed
            .iter()
            .map(|h| (h.dir.clone(), h.options.clone()))
            .collect(),
        ..Default::default()
    };
    let mut line = serde_json::to_vec(&resp)?;
    line.push(b'\n');
    let fds: Vec<_> = handed.iter().map(|h| h.fd.as_fd()).collect();
    stream.set_nonblocking(false)?;
    fdstore::send(stream.as_fd(), None, &line, &fds)?;
    tracing::info!(views = handed.len(), "handing over to the next agent");
    std::mem::forget(stream);
    handover.notify_one();
    Ok(())
}

/// `--takeover`: asks the agent at `socket` to hand its views over, and returns them once it
/// has exited.
pub fn take_over(socket: &Path) -> anyhow::Result<Vec<Handed>> {
    use std::{io::Read as _, io::Write as _, os::fd::AsFd as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!("--takeover: no agent answers at {}: {e}", socket.display())
    })?;
    let mut line = serde_json::to_vec(&Request::Handover)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut buf = vec![0u8; 1 << 20];
    let (n, fds) = fdstore::recv(s.as_fd(), &mut buf)?;
    let resp: Response = serde_json::from_slice(&buf[..n])
        .map_err(|e| anyhow::anyhow!("--takeover: the running agent answered: {e}"))?;
    if let Some(e) = resp.error {
        anyhow::bail!("--takeover: {e}");
    }
    if resp.mounts.len() != fds.len() {
        anyhow::bail!("--takeover: views and connections do not pair up");
    }
    // The old agent has gone when its end closes.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(resp
        .mounts
        .into_iter()
        .zip(fds)
        .map(|((dir, options), fd)| Handed { dir, options, fd })
        .collect())
}

/// The CLI side: one request, one response.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the agent at {}: {e}\nhint: start it with `bpfproc agent` (as root), or pass --socket",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}
