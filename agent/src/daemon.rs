//! The agent as a whole: loads the BPF programs, starts the table's actor, the ring reader,
//! the control thread, the mounts and the HTTP server, and takes them down in order when
//! `shutdown` completes (mini-redis's `server::run`). `main.rs` only parses and calls this.

use std::{
    future::Future,
    io::Write as _,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    config::{self, Settings},
    control, fs, groups, http, kernel, metrics, otlp, socket, state,
    sys::{
        fdstore::{self, Holder},
        privs,
    },
    view,
};

/// Runs the agent on a new multi-threaded runtime until SIGTERM or SIGINT. Capabilities are
/// dropped first, before the runtime exists: they are per thread, and every thread started
/// from here on inherits the reduced set.
pub fn start(settings: Settings) -> anyhow::Result<()> {
    let mut keep = privs::mask(privs::KEEP);
    if settings.listen.port() < 1024 {
        keep |= privs::mask(&[privs::CAP_NET_BIND_SERVICE]);
    }
    privs::drop_to(keep, privs::mask(privs::FOR_WRITERS)).context("dropping capabilities")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            // An agent taking over binds the address once the old one has left it.
            let listener = if settings.takeover {
                None
            } else {
                Some(bind(settings.listen).await?)
            };
            // The handlers are installed before anything can answer: a SIGTERM sent as soon
            // as the API answers must shut down in order, not kill the agent.
            let signals = signalled()?;
            run(settings, listener, signals).await
        })
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// 32 random bytes, hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    // libc: nix has no getrandom.
    // SAFETY: getrandom writes at most raw.len() bytes into raw.
    let n = unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) };
    if n != raw.len() as isize {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the token readable by root only. The old file is removed first and the new one
/// created exclusively, so a planted symlink or a file with looser permissions is never
/// written through.
pub fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{token}")?;
    Ok(())
}

/// Lifts the soft limit on open files to the hard one, as servers do: every FUSE mount, open
/// handle, passthrough backing and HTTP connection takes a descriptor, and the usual soft
/// limit of 1,024 is a shell's, not a server's.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Where the views' connections are kept across restarts (`sys::fdstore`): systemd's store
/// under systemd, else our keeper at the socket's side (started if none answers), with what
/// it holds from the agent before. None when `--keep-views-secs 0`.
fn holder(
    socket: &Path,
    keep_secs: u64,
) -> anyhow::Result<Option<(Arc<Holder>, Vec<fdstore::Kept>)>> {
    if keep_secs == 0 {
        return Ok(None);
    }
    let (holder, kept) = match Holder::systemd() {
        Some(r) => r.context("systemd's file descriptor store")?,
        None => {
            let path = fdstore::keeper_path(socket);
            Holder::keeper(&path, || start_keeper(&path, keep_secs))
                .with_context(|| format!("the keeper at {}", path.display()))?
        }
    };
    Ok(Some((Arc::new(holder), kept)))
}

/// The name the process map is kept under (`fdstore::name` of `map`, `PROCS`), beside the
/// views' connections.
const KEPT_PROCS: &str = "map|PROCS";

/// Carries the hang bits of the process map the agent before this one kept (`old`: after a
/// crash, or handed over by `--takeover`) into this agent's map, then keeps this agent's map
/// in its place, so that the bits outlive this agent in turn (docs/service.md).
fn keep_procs(kernel: &Mutex<kernel::Kernel>, holder: &Holder, old: Option<OwnedFd>) {
    let mine = {
        let Ok(mut kernel) = kernel.lock() else {
            return;
        };
        if let Some(old) = old {
            match kernel.carry_hang(old) {
                Ok(pids) if pids.is_empty() => {}
                Ok(pids) => tracing::info!(?pids, "hang bits carried from the agent before"),
                Err(e) => tracing::warn!("the hang bits of the agent before are lost: {e}"),
            }
        }
        kernel.procs_fd()
    };
    // Replaces the old map there, which is freed once nothing holds it.
    if let Err(e) = mine
        .map_err(std::io::Error::other)
        .and_then(|fd| holder.store(KEPT_PROCS, fd.as_fd()))
    {
        tracing::warn!("the hang bits will not outlive this agent: {e}");
    }
}

/// Starts `bpfproc keeper` (this binary) in a session of its own, so that neither the
/// agent's death nor its terminal's signals end it.
fn start_keeper(path: &Path, grace_secs: u64) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("keeper")
        .arg("--socket")
        .arg(path)
        .arg("--grace-secs")
        .arg(grace_secs.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(drop)
}

/// The agent, serving HTTP on `listener` (bound here after a takeover when None), until
/// `shutdown` completes, or until another agent takes over (`--takeover`).
pub async fn run(
    args: Settings,
    listener: Option<tokio::net::TcpListener>,
    shutdown_when: impl Future<Output = anyhow::Result<Stop>>,
) -> anyhow::Result<()> {
    config::check(&args)?;
    crate::table::keep_shown_cpu_times();
    let grouping = match &args.metrics_groups_config {
        Some(path) => groups::Grouping::load(path)?,
        None => groups::Grouping::By(args.metrics_group_by),
    };
    let host = view::Host::detect();
    raise_nofile();
    let t0 = std::time::Instant::now();
    let max_processes = args.max_processes.unwrap_or_else(kernel::host_capacity);
    let mut kernel = kernel::Kernel::load(&kernel::KernelConfig {
        ringbuf_bytes: args.ringbuf_bytes,
        max_processes,
    })
    .context("loading BPF programs (are you root, on a kernel with BTF?)")?;
    let ring = kernel.take_ring()?;
    let parking = kernel
        .parking()
        .inspect_err(|e| tracing::warn!("the ring reader will poll even when idle: {e}"))
        .ok();
    let bpf_log = kernel.take_logger();
    let ring_fill = match kernel::RingFill::new(std::os::fd::AsFd::as_fd(&ring)) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::warn!("cannot map the ring buffer's positions; no fill metric: {e}");
            None
        }
    };
    let kernel = Arc::new(Mutex::new(kernel));
    let loaded = t0.elapsed();

    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let listing = Arc::new(http::Listing::new(host));
    let (state, queries) = state::spawn(
        kernel.clone(),
        state::Config {
            exited_cap: args.exited,
            max_age: Duration::from_millis(args.max_staleness_ms),
            loss_check: Duration::from_millis(250),
            prewarm: Some(listing.clone().prewarm()),
            groups: groups::Ledger::new(
                grouping,
                groups::Names::detect(),
                args.metrics_max_groups,
                host.page_size,
            ),
        },
        shutdown.clone(),
    )?;
    if let Some(r) = &ring_fill {
        state.watch_ring(r.clone());
    }
    tracing::info!(
        load_ms = loaded.as_millis() as u64,
        total_ms = t0.elapsed().as_millis() as u64,
        "BPF programs attached and table backfilled"
    );
    if let Some(log) = bpf_log {
        tokio::spawn(kernel::log::forward(log, shutdown.clone()));
    }
    let reader = tokio::spawn(state::reader::run(
        ring,
        parking,
        state.clone(),
        queries,
        Duration::from_millis(args.drain_ms),
        shutdown.clone(),
    ));

    // All ptrace work happens on this thread (see control/actor.rs).
    let control =
        control::Control::spawn(Some(kernel.clone())).context("starting the control thread")?;
    let touched = state.clone();
    control.on_change(Box::new(move |pid| touched.touch(pid)));
    // Only now, with the programs attached and the table backfilled, are the views taken
    // from the agent running (which then exits): no event falls in between.
    let mut handed = if args.takeover {
        let socket = args.socket.clone();
        tokio::task::spawn_blocking(move || socket::take_over(&socket)).await??
    } else {
        Vec::new()
    };
    let listener = match listener {
        Some(l) => l,
        None => bind(args.listen).await?,
    };
    // Bound before the kept views are taken: an agent that still answers keeps them.
    let local = socket::bind(&args.socket).await?;
    let mut holder = {
        let (socket, secs) = (args.socket.clone(), args.keep_views_secs);
        tokio::task::spawn_blocking(move || holder(&socket, secs)).await??
    };
    if let Some((h, from_store)) = &mut holder {
        let old = from_store
            .iter()
            .position(|k| k.name == KEPT_PROCS)
            .map(|i| from_store.remove(i).fd);
        let (k, h) = (kernel.clone(), h.clone());
        tokio::task::spawn_blocking(move || keep_procs(&k, &h, old)).await?;
    }
    let token: Arc<str> = new_token()?.into();
    write_token(&args.token_file, &token)
        .with_context(|| format!("writing the token file {}", args.token_file.display()))?;
    let mut mounts = fs::Mounts::new(
        state.clone(),
        host,
        tokio::runtime::Handle::current(),
        Some((control.clone(), control::wait::Waiter::new(state.clone()))),
    );
    let kept = holder.as_ref().map(|(h, _)| h.clone());
    if let Some((h, from_store)) = holder {
        let scratch = args.socket.parent().unwrap_or(Path::new("/run")).to_owned();
        mounts = mounts.keep_in(h, scratch);
        // After a crash the keeper (or systemd) has the views; after a handover the old
        // agent sent them, and the keeper's copies of the same views are dropped.
        for h in from_store.into_iter().filter_map(fs::Handed::from_kept) {
            if !handed.iter().any(|x| x.dir == h.dir) {
                handed.push(h);
            }
        }
    }
    let mounts = Arc::new(mounts);
    let mut adopted = Vec::new();
    for h in handed {
        let (m, dir) = (mounts.clone(), h.dir.clone());
        match tokio::task::spawn_blocking(move || m.adopt(h)).await? {
            Ok(()) => adopted.push(dir),
            Err(e) => tracing::warn!(dir = %dir.display(), "taking the view over: {e}"),
        }
    }
    let handover = Arc::new(tokio::sync::Notify::new());
    let control_task = tokio::spawn(socket::serve(
        local,
        mounts.clone(),
        handover.clone(),
        shutdown.clone(),
    ));
    for (dir, options) in args
        .mount_table
        .iter()
        .filter(|(dir, _)| !adopted.iter().any(|a| a == dir))
    {
        // A dead mount left by a killed agent fails every access (ENOTCONN): mount() recovers
        // it, so only a directory that truly cannot be made is an error here.
        if let Err(e) = std::fs::create_dir_all(dir)
            && e.kind() != std::io::ErrorKind::AlreadyExists
            && e.raw_os_error() != Some(libc::ENOTCONN)
        {
            return Err(e).with_context(|| format!("creating {}", dir.display()));
        }
        let (m, dir, o) = (
            mounts.clone(),
            dir.clone(),
            fs::MountOptions::parse(options)?,
        );
        tokio::task::spawn_blocking(move || m.mount(&dir, o)).await??;
    }
    let ctl = http::CtlHttp {
        control: control.clone(),
        waiter: control::wait::Waiter::new(state.clone()),
        token,
    };

    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    let metrics = metrics::Metrics::new(metrics::Config {
        per_pid: args.metrics_per_pid.then_some(args.metrics_per_pid_max),
        ringbuf_bytes: args.ringbuf_bytes,
        map_capacity: max_processes,
        ring: ring_fill.clone(),
    })?;
    let otlp_config = otlp::Config {
        endpoint: args.otlp_endpoint.clone(),
        protocol: args.otlp_protocol,
        exec_events: args.otlp_exec_events,
        queue: args.otlp_queue,
        group_attribute: match (&args.metrics_groups_config, args.metrics_group_by) {
            (None, groups::GroupBy::Pod) => Some("k8s.pod.uid"),
            (None, groups::GroupBy::Container) => Some("container.id"),
            _ => None,
        },
    };
    let otlp = if otlp::enabled(&otlp_config) {
        let (s, rt) = (state.clone(), tokio::runtime::Handle::current());
        // The exporters' HTTP client runs a runtime of its own: built off this one.
        let started =
            tokio::task::spawn_blocking(move || otlp::start(&otlp_config, s, host, rt)).await??;
        tracing::info!("OTLP export on");
        Some(started)
    } else {
        None
    };
    let app = http::App {
        state,
        host,
        metrics: Arc::new(metrics),
        listing,
        ctl,
    };
    let server = tokio::spawn(http::serve(listener, app, shutdown.clone()));

    // A handover, or SIGTERM under systemd (whose store keeps the views while the unit
    // restarts), leaves the kept views to the next agent; any other stop unmounts them.
    let leave = tokio::select! {
        r = shutdown_when => r? == Stop::Term && kept.as_ref().is_some_and(|h| h.is_systemd()),
        () = handover.notified() => true,
    };
    tracing::info!(leave, "shutting down");
    // A last export of both signals, while the table can still answer.
    if let Some(o) = otlp {
        tokio::task::spawn_blocking(move || o.shutdown()).await?;
    }
    if leave {
        // Before the table goes: the views must not answer from a table that is gone.
        let m = mounts.clone();
        tokio::task::spawn_blocking(move || m.leave()).await?;
    }
    let _ = shutdown_tx.send(true);
    let _ = control_task.await;
    let _ = std::fs::remove_file(&args.socket);
    if !leave {
        let m = mounts.clone();
        tokio::task::spawn_blocking(move || {
            m.unmount_all();
            if let Some(h) = kept {
                // Nor do the hang bits outlive a stop that unmounts.
                let _ = h.remove(KEPT_PROCS);
                h.quit();
            }
        })
        .await?;
    }
    let _ = server.await;
    // Every traced process is detached and left as it was before the BPF programs go.
    tokio::task::spawn_blocking(move || control.shutdown()).await?;
    let _ = std::fs::remove_file(&args.token_file);
    let _ = reader.await;
    drop(kernel);
    Ok(())
}

/// How the agent was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: under systemd, the views are left in its store for the next start.
    Term,
    /// SIGINT: everything is unmounted, wherever the views are kept.
    Int,
}

/// SIGTERM or SIGINT: installs the handlers now (inside a runtime); the future completes at
/// the first signal.
pub fn signalled() -> anyhow::Result<impl Future<Output = anyhow::Result<Stop>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        Ok(tokio::select! {
            _ = term.recv() => Stop::Term,
            _ = int.recv() => Stop::Int,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_map_is_kept_under_a_name_of_its_own() {
        assert_eq!(
            fdstore::name(&[b"map", b"PROCS"]).as_deref(),
            Some(KEPT_PROCS)
        );
        let kept = fdstore::Kept {
            name: KEPT_PROCS.into(),
            fd: std::fs::File::open("/dev/null").unwrap().into(),
        };
        assert!(
            fs::Handed::from_kept(kept).is_none(),
            "not taken for a view"
        );
    }
}
