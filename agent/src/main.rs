//! bpfproc: a live /proc kept by eBPF, served over HTTP (JSON, Prometheus) and, later, FUSE.

mod btf;
mod cli;
mod client;
mod config;
mod control;
mod fs;
#[cfg(test)]
mod fuzz_corpus;
mod groups;
mod http;
mod kernel;
mod metrics;
mod mount_helper;
mod privs;
mod procfs;
mod ring;
mod socket;
mod state;
mod table;
mod view;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// Default HTTP address: loopback only, so nothing is exposed without an explicit choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Where the agent writes the bearer token for the control routes (root-only, 0600).
pub const DEFAULT_TOKEN_FILE: &str = "/run/bpfproc/token";

#[derive(Parser)]
#[command(name = "bpfproc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the BPF programs and serve the process table.
    Agent(AgentArgs),
    /// Mount a proc view at DIR (through the running agent); returns once it is live.
    Mount {
        /// Comma-separated options: personality=linux|plan9|freebsd|netbsd|openbsd|svr4|qnx,
        /// cgroup=PATH or pid=PID (show one cgroup subtree), umask=OCTAL, noallow_other,
        /// nolinux, cache=MS (bounded staleness), passthrough (the kernel reads renderings
        /// from memfds), uring (FUSE-over-io_uring queues; no control files).
        #[arg(short = 'o', default_value = "")]
        options: String,
        dir: PathBuf,
        #[arg(long, default_value = socket::DEFAULT_SOCKET, env = "BPFPROC_SOCKET")]
        socket: PathBuf,
    },
    /// Unmount a proc view the agent mounted.
    Umount {
        dir: PathBuf,
        #[arg(long, default_value = socket::DEFAULT_SOCKET, env = "BPFPROC_SOCKET")]
        socket: PathBuf,
    },
    /// List the agent's mounts.
    Mounts {
        #[arg(long, default_value = socket::DEFAULT_SOCKET, env = "BPFPROC_SOCKET")]
        socket: PathBuf,
    },
    /// Write one ctl command (stop, start, hang, attach, term, …) to a process, through the
    /// running agent.
    Ctl(cli::CtlArgs),
    /// Run a program; with --stop-on-exec it is stopped before its first instruction, ready
    /// for `gdb -p PID`.
    Run(cli::RunArgs),
    /// List processes from the agent, like `ps -e`; `--exited` lists the ones that ended.
    Ps(client::ps::PsArgs),
    /// Draw the process tree, like `pstree -p`; `-x` adds children that already exited.
    Tree(client::tree::TreeArgs),
    /// Tail fork, exec and exit events live (lines, or JSON lines with --json).
    Events(client::events::EventsArgs),
    /// A full-screen live view: processes, short-lived ones, event rates, losses.
    Top(client::top::TopArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (bpfproc.1 and bpfproc-COMMAND.1) to DIR, or bpfproc.1 to stdout.
    Manpage { dir: Option<PathBuf> },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// A TOML config file with the same settings (see docs/config.md); flags override it.
    #[arg(long, env = "BPFPROC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only check the --config file (and the flags) and exit: 0 when valid, 1 with the
    /// file, line and reason when not.
    #[arg(long, requires = "config")]
    check_config: bool,
    /// HTTP listen address.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "BPFPROC_LISTEN")]
    listen: SocketAddr,
    /// How many exited processes to retain for /v1/exited.
    #[arg(long, default_value_t = 8192)]
    exited: usize,
    /// Upper bound on the age of state, CPU and memory numbers, in milliseconds.
    #[arg(long, default_value_t = 100)]
    max_staleness_ms: u64,
    /// Kernel ring buffer size in bytes (a power of two). The default holds ~1,100 spawns
    /// (fork, exec with argv, exit, free) between drains, which come every `--drain-ms` or at
    /// a quarter full: a 100,000-spawn storm at 1,500/s lost nothing with it.
    #[arg(long, default_value_t = 2 << 20)]
    ringbuf_bytes: u32,
    /// Capacity of the in-kernel process map.
    #[arg(long, default_value_t = 65536)]
    max_processes: u32,
    /// How often the ring buffer is drained when no wake-up comes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    drain_ms: u64,
    /// Mount a proc view here at start (repeatable; created if missing).
    #[arg(long)]
    mount: Vec<PathBuf>,
    /// Options for the --mount views (as `bpfproc mount -o`).
    #[arg(long, default_value = "")]
    mount_options: String,
    /// The local control socket (`bpfproc mount` etc. connect to it).
    #[arg(long, default_value = socket::DEFAULT_SOCKET, env = "BPFPROC_SOCKET")]
    socket: PathBuf,
    /// What /metrics groups processes by (like process-exporter's name groups).
    #[arg(long, value_enum, default_value = "comm")]
    metrics_group_by: groups::GroupBy,
    /// A process-exporter style YAML file of group rules (`process_names:` with `name`,
    /// `comm`, `exe`, `cmdline`); replaces --metrics-group-by. Unmatched processes are not grouped.
    #[arg(long, conflicts_with = "metrics_group_by")]
    metrics_groups_config: Option<std::path::PathBuf>,
    /// At most this many distinct groups; processes of further groups are counted as "other".
    #[arg(long, default_value_t = 1000)]
    metrics_max_groups: usize,
    /// Also export per-process series (bounded by --metrics-per-pid-max).
    #[arg(long)]
    metrics_per_pid: bool,
    /// The cap on per-process series: the heaviest processes by CPU are kept, the rest counted
    /// in bpfproc_pid_series_dropped_total.
    #[arg(long, default_value_t = 100, requires = "metrics_per_pid")]
    metrics_per_pid_max: usize,
    /// File the control token is written to (mode 0600) at start and removed from at exit.
    #[arg(long, default_value = DEFAULT_TOKEN_FILE, env = "BPFPROC_TOKEN_FILE")]
    token_file: std::path::PathBuf,
    /// Every view to mount at start with its options: from --mount and --mount-options, or
    /// the config file's `[[mount]]` tables.
    #[arg(skip)]
    mount_table: Vec<(PathBuf, String)>,
}

fn main() -> std::process::ExitCode {
    // glibc gives each thread that allocates its own arena (up to 8 per core), and every
    // arena keeps its high-water mark: with the tokio workers, blocking threads and FUSE
    // threads that was ~30 MB of the agent's RSS. Two arenas serve this allocation pattern
    // (one actor, short renders) without contention worth measuring.
    // A fixed mmap threshold: glibc otherwise raises it after the first large free, and the
    // multi-megabyte buffers of each iterator pass and listing then come from the heap, whose
    // freed middle is never returned.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes, without the backtrace a set RUST_BACKTRACE would
            // add: these errors are for the person at the terminal, and carry their own hints.
            eprintln!("bpfproc: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // mount(8) runs /sbin/mount.fuse.bpfproc for `mount -t fuse.bpfproc` and fstab lines.
    if mount_helper::invoked_as_helper() {
        return mount_helper::run(std::env::args_os().skip(1));
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Command::Agent(mut args) => {
            if !args.mount.is_empty() {
                args.mount_table = args
                    .mount
                    .iter()
                    .map(|d| (d.clone(), args.mount_options.clone()))
                    .collect();
            }
            if let Some(path) = args.config.clone() {
                let sub = matches
                    .subcommand_matches("agent")
                    .context("agent arguments")?;
                config::Loaded::read(&path)?.apply(&mut args, sub);
            }
            if args.check_config {
                check_args(&args)?;
                println!(
                    "{}: ok",
                    args.config.as_deref().unwrap_or(Path::new("")).display()
                );
                return Ok(());
            }
            // Before the runtime exists: capabilities are per thread, and every thread
            // started from here on inherits the reduced set.
            let mut keep = privs::mask(privs::KEEP);
            if args.listen.port() < 1024 {
                keep |= privs::mask(&[privs::CAP_NET_BIND_SERVICE]);
            }
            privs::drop_to(keep).context("dropping capabilities")?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(agent(args))
        }
        Command::Ps(args) => client::ps::run(&args),
        Command::Tree(args) => client::tree::run(&args),
        Command::Events(args) => client::events::run(&args),
        Command::Top(args) => client::top::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bpfproc",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpage { dir } => manpages(dir.as_deref()),
        Command::Mount {
            options,
            dir,
            socket,
        } => {
            // Validate locally first, for a clear error without a round trip.
            fs::MountOptions::parse(&options)?;
            let dir = std::path::absolute(&dir)?;
            answer(socket::call(
                &socket,
                &socket::Request::Mount { dir, options },
            )?)
        }
        Command::Umount { dir, socket } => {
            let dir = std::path::absolute(&dir)?;
            answer(socket::call(&socket, &socket::Request::Umount { dir })?)
        }
        Command::Mounts { socket } => {
            let resp = socket::call(&socket, &socket::Request::List)?;
            for (dir, opts) in &resp.mounts {
                println!(
                    "{} {}",
                    dir.display(),
                    if opts.is_empty() { "defaults" } else { opts }
                );
            }
            answer(resp)
        }
        Command::Ctl(args) => cli::ctl(&args),
        Command::Run(args) => cli::run(&args),
    }
}

/// What the agent checks before loading anything, also run by `--check-config`.
fn check_args(args: &AgentArgs) -> anyhow::Result<()> {
    if !args.ringbuf_bytes.is_power_of_two() || args.ringbuf_bytes < 4096 {
        anyhow::bail!("--ringbuf-bytes must be a power of two of at least 4096");
    }
    for (dir, options) in &args.mount_table {
        fs::MountOptions::parse(options)
            .with_context(|| format!("mount options for {}", dir.display()))?;
    }
    if let Some(path) = &args.metrics_groups_config {
        groups::Grouping::load(path)?;
    }
    Ok(())
}

fn manpages(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, cmd: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_mangen::Man::new(cmd).render(&mut f)?;
        Ok(())
    };
    for sub in cmd.get_subcommands() {
        let name = format!("bpfproc-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("bpfproc", cmd)
}

fn answer(resp: socket::Response) -> anyhow::Result<()> {
    match resp.error {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(()),
    }
}

/// Lifts the soft limit on open files to the hard one, as servers do: every FUSE mount, open
/// handle, passthrough backing and HTTP connection takes a descriptor, and the usual soft
/// limit of 1,024 is a shell's, not a server's.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to a plain struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let grouping = match &args.metrics_groups_config {
        Some(path) => groups::Grouping::load(path)?,
        None => groups::Grouping::By(args.metrics_group_by),
    };
    let host = view::Host::detect();
    raise_nofile();
    let t0 = std::time::Instant::now();
    let mut kernel = kernel::Kernel::load(&kernel::KernelConfig {
        ringbuf_bytes: args.ringbuf_bytes,
        max_processes: args.max_processes,
    })
    .context("loading BPF programs (are you root, on a kernel with BTF?)")?;
    let ring = kernel.take_ring()?;
    let ring_fill = match ring::RingFill::new(std::os::fd::AsFd::as_fd(&ring)) {
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
    let reader = tokio::spawn(ring::run(
        ring,
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
    let token: Arc<str> = cli::new_token()?.into();
    cli::write_token(&args.token_file, &token)
        .with_context(|| format!("writing the token file {}", args.token_file.display()))?;
    let mounts = Arc::new(fs::Mounts::new(
        state.clone(),
        host,
        tokio::runtime::Handle::current(),
        Some((control.clone(), control::wait::Waiter::new(state.clone()))),
    ));
    let local = socket::bind(&args.socket).await?;
    let control_task = tokio::spawn(socket::serve(local, mounts.clone(), shutdown.clone()));
    for (dir, options) in &args.mount_table {
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
    let ctl = control::http::CtlHttp {
        control: control.clone(),
        waiter: control::wait::Waiter::new(state.clone()),
        token,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    let metrics = metrics::Metrics::new(metrics::Config {
        per_pid: args.metrics_per_pid.then_some(args.metrics_per_pid_max),
        ringbuf_bytes: args.ringbuf_bytes,
        map_capacity: args.max_processes,
        ring: ring_fill.clone(),
    })?;
    let app = http::App {
        state,
        host,
        metrics: Arc::new(metrics),
        listing,
        ctl,
    };
    let server = tokio::spawn(http::serve(listener, app, shutdown.clone()));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = control_task.await;
    let _ = std::fs::remove_file(&args.socket);
    {
        let m = mounts.clone();
        tokio::task::spawn_blocking(move || m.unmount_all()).await?;
    }
    let _ = server.await;
    // Every traced process is detached and left as it was before the BPF programs go.
    tokio::task::spawn_blocking(move || control.shutdown()).await?;
    let _ = std::fs::remove_file(&args.token_file);
    let _ = reader.await;
    drop(kernel);
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
