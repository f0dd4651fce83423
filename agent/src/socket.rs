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

use crate::fs::{MountOptions, Mounts};

pub const DEFAULT_SOCKET: &str = "/run/bpfproc/bpfproc.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Mount { dir: PathBuf, options: String },
    Umount { dir: PathBuf },
    List,
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

pub async fn serve(
    listener: UnixListener,
    mounts: Arc<Mounts>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.changed() => break,
        };
        let Ok((stream, _)) = conn else { continue };
        let mounts = mounts.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, mounts).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, mounts: Arc<Mounts>) -> anyhow::Result<()> {
    let creds = stream.peer_cred()?;
    let me = nix::unistd::geteuid().as_raw();
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(tokio::io::AsyncReadExt::take(rd, 64 * 1024))
        .read_line(&mut line)
        .await?;
    let resp = if creds.uid() != 0 && creds.uid() != me {
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
