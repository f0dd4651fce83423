//! `bpfproc`: the command line. Parses the arguments and calls the library (`bpfproc::daemon`
//! for the agent, `bpfproc::client` and `bpfproc::cli` for the clients); nothing else lives here.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bpfproc::{client, config, daemon, fs, mount_helper, socket, sys};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bpfproc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the BPF programs and serve the process table.
    Agent(config::Settings),
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
    Ctl(client::ctl::CtlArgs),
    /// Run a program; with --stop-on-exec it is stopped before its first instruction, ready
    /// for `gdb -p PID`.
    Run(client::ctl::RunArgs),
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
    /// Hold the views' connections between two agents (started by the agent itself).
    #[command(hide = true)]
    Keeper {
        #[arg(long)]
        socket: PathBuf,
        /// Exit, letting the views go, when no agent has been connected for this long.
        #[arg(long)]
        grace_secs: u64,
    },
}

fn main() -> std::process::ExitCode {
    // glibc gives each thread that allocates its own arena (up to 8 per core), and every
    // arena keeps its high-water mark: with the tokio workers, blocking threads and FUSE
    // threads that was ~30 MB of the agent's RSS. Two arenas serve this allocation pattern
    // (one actor, short renders) without contention worth measuring.
    // A fixed mmap threshold: glibc otherwise raises it after the first large free, and the
    // multi-megabyte buffers of each iterator pass and listing then come from the heap, whose
    // freed middle is never returned.
    // libc: glibc's allocator tuning, which nix does not wrap.
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
        Command::Agent(args) => {
            let sub = matches
                .subcommand_matches("agent")
                .context("agent arguments")?;
            let args = args.resolve(sub)?;
            if args.check_config {
                config::check(&args)?;
                println!(
                    "{}: ok",
                    args.config.as_deref().unwrap_or(Path::new("")).display()
                );
                return Ok(());
            }
            daemon::start(args)
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
        Command::Ctl(args) => client::ctl::ctl(&args),
        Command::Run(args) => client::ctl::run(&args),
        Command::Keeper { socket, grace_secs } => {
            // The keeper only holds descriptors and hands them over: it needs no capability,
            // and nothing it could be made to run gains any.
            sys::privs::drop_to(0, 0)?;
            nix::sys::prctl::set_no_new_privs()?;
            Ok(sys::fdstore::keep(
                &socket,
                std::time::Duration::from_secs(grace_secs),
            )?)
        }
    }
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
