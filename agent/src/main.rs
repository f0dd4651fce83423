//! bpfproc: a live /proc kept by eBPF, served over HTTP (and, later, FUSE and Prometheus).

mod btf;
mod cli;
mod control;
mod http;
mod kernel;
mod procfs;
mod ring;
mod state;
mod table;
mod view;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// Write one ctl command (stop, start, hang, attach, term, …) to a process, through the
    /// running agent.
    Ctl(cli::CtlArgs),
    /// Run a program; with --stop-on-exec it is stopped before its first instruction, ready
    /// for `gdb -p PID`.
    Run(cli::RunArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// HTTP listen address.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "BPFPROC_LISTEN")]
    listen: SocketAddr,
    /// How many exited processes to retain for /v1/exited.
    #[arg(long, default_value_t = 8192)]
    exited: usize,
    /// Upper bound on the age of state, CPU and memory numbers, in milliseconds.
    #[arg(long, default_value_t = 100)]
    max_staleness_ms: u64,
    /// Kernel ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 8 << 20)]
    ringbuf_bytes: u32,
    /// Capacity of the in-kernel process map.
    #[arg(long, default_value_t = 65536)]
    max_processes: u32,
    /// How often the ring buffer is drained when no wake-up comes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    drain_ms: u64,
    /// File the control token is written to (mode 0600) at start and removed from at exit.
    #[arg(long, default_value = DEFAULT_TOKEN_FILE, env = "BPFPROC_TOKEN_FILE")]
    token_file: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(agent(args)),
        Command::Ctl(args) => cli::ctl(&args),
        Command::Run(args) => cli::run(&args),
    }
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    if !args.ringbuf_bytes.is_power_of_two() || args.ringbuf_bytes < 4096 {
        anyhow::bail!("--ringbuf-bytes must be a power of two of at least 4096");
    }
    let t0 = std::time::Instant::now();
    let mut kernel = kernel::Kernel::load(&kernel::KernelConfig {
        ringbuf_bytes: args.ringbuf_bytes,
        max_processes: args.max_processes,
    })
    .context("loading BPF programs (are you root, on a kernel with BTF?)")?;
    let ring = kernel.take_ring()?;
    let kernel = Arc::new(Mutex::new(kernel));
    let loaded = t0.elapsed();

    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let host = view::Host::detect();
    let (state, queries) = state::spawn(
        kernel.clone(),
        state::Config {
            exited_cap: args.exited,
            max_age: Duration::from_millis(args.max_staleness_ms),
            loss_check: Duration::from_millis(250),
            prewarm: Some(http::prewarm(host)),
        },
        shutdown.clone(),
    )?;
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
    let token: Arc<str> = cli::new_token()?.into();
    cli::write_token(&args.token_file, &token)
        .with_context(|| format!("writing the token file {}", args.token_file.display()))?;
    let ctl = control::http::CtlHttp {
        control: control.clone(),
        waiter: control::wait::Waiter::new(state.clone()),
        token,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    let app = http::App { state, host, ctl };
    let server = tokio::spawn(http::serve(listener, app, shutdown.clone()));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
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
