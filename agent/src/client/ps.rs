//! `bpfproc ps`: the agent's table as `ps -e` would print it, and with `--exited` the
//! processes that already ended, with how they ended.

use super::{AgentArg, Client, Proc, Users, out, split_list};

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    #[command(flatten)]
    pub agent: AgentArg,
    /// Only these users (names or uids; comma-separated or repeated).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub users: Vec<String>,
    /// Only these pids (comma-separated or repeated).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<String>,
    /// Only children of these pids.
    #[arg(long, value_name = "PID")]
    pub ppid: Vec<String>,
    /// Only processes with this command name (as /proc/PID/comm; comma-separated or repeated).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Only processes in this cgroup v2 subtree (a path under /sys/fs/cgroup, on the agent's
    /// host).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// List recently exited processes instead, with exit code or signal, runtime and CPU.
    #[arg(long)]
    pub exited: bool,
    /// Leave out kernel threads.
    #[arg(short = 'k', long)]
    pub no_kernel: bool,
    /// Sort by this column (default: pid; with --exited, the exit time).
    #[arg(long, value_enum)]
    pub sort: Option<SortKey>,
    /// Print the agent's JSON objects (an array), unchanged, instead of columns.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Pid,
    Cpu,
    Mem,
    Start,
    Exit,
}

/// The filters common to ps and tree, resolved against this host's users.
pub struct Selection {
    pub users: Vec<u32>,
    pub pids: Vec<u32>,
    pub ppids: Vec<u32>,
    pub comms: Vec<String>,
    pub no_kernel: bool,
}

fn pid_list(what: &str, values: &[String]) -> anyhow::Result<Vec<u32>> {
    split_list(values)
        .iter()
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| anyhow::anyhow!("{what} {v:?} is not a process id"))
        })
        .collect()
}

impl Selection {
    pub fn new(args: &PsArgs, users: &Users) -> anyhow::Result<Self> {
        Ok(Self {
            users: split_list(&args.users)
                .iter()
                .map(|u| {
                    users
                        .uid(u)
                        .ok_or_else(|| anyhow::anyhow!("-u {u:?}: no such user on this host"))
                })
                .collect::<anyhow::Result<_>>()?,
            pids: pid_list("-p", &args.pids)?,
            ppids: pid_list("--ppid", &args.ppid)?,
            comms: split_list(&args.comm),
            no_kernel: args.no_kernel,
        })
    }

    pub fn matches(&self, p: &Proc) -> bool {
        (self.users.is_empty() || self.users.contains(&p.uid))
            && (self.pids.is_empty() || self.pids.contains(&p.pid))
            && (self.ppids.is_empty() || self.ppids.contains(&p.ppid))
            && (self.comms.is_empty() || self.comms.contains(&p.comm))
            && !(self.no_kernel && p.kthread)
    }
}

/// The query string for what the agent filters itself (the cgroup, which only it can resolve).
pub fn server_query(cgroup: Option<&str>) -> String {
    match cgroup {
        Some(c) => format!("?cgroup={}", super::query_escape(c)),
        None => String::new(),
    }
}

pub fn run(args: &PsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.agent)?;
    let users = Users::load();
    let sel = Selection::new(args, &users)?;
    let query = server_query(args.cgroup.as_deref());
    let mut procs: Vec<Proc> = if args.exited {
        client.exited(&query)?
    } else {
        client.processes(&query)?
    };
    procs.retain(|p| sel.matches(p));
    let now = super::now();
    let key = args.sort.unwrap_or(if args.exited {
        SortKey::Exit
    } else {
        SortKey::Pid
    });
    sort(&mut procs, key);

    if args.json {
        let raw: Vec<_> = procs.iter().map(|p| &p.raw).collect();
        out(serde_json::to_string_pretty(&raw)?);
        return Ok(());
    }
    if args.exited {
        out(format!(
            "{:<8} {:>7} {:>7} {:<14} {:>12} {:>9} {:>8} CMD",
            "USER", "PID", "PPID", "EXIT", "ENDED", "RUNTIME", "TIME"
        ));
        for p in &procs {
            out(format!(
                "{:<8} {:>7} {:>7} {:<14} {:>12} {:>9} {:>8} {}",
                truncate(&users.name(p.uid), 8),
                p.pid,
                p.ppid,
                p.how_ended(),
                p.exit_time.map(super::clock_ms).unwrap_or_default(),
                p.runtime.map(super::duration).unwrap_or_default(),
                super::cpu_time(p.cpu()),
                p.command()
            ));
        }
    } else {
        out(format!(
            "{:<8} {:>7} {:>7} S {:>5} {:>8} {:>5} {:>8} CMD",
            "USER", "PID", "PPID", "%CPU", "RSS", "STIME", "TIME"
        ));
        for p in &procs {
            out(format!(
                "{:<8} {:>7} {:>7} {} {:>5.1} {:>8} {:>5} {:>8} {}",
                truncate(&users.name(p.uid), 8),
                p.pid,
                p.ppid,
                p.state,
                cpu_percent(p, now),
                p.rss_bytes / 1024,
                super::start_time(p.start_time, now),
                super::cpu_time(p.cpu()),
                p.command()
            ));
        }
    }
    Ok(())
}

/// As ps's %CPU: CPU time over the time since start.
pub fn cpu_percent(p: &Proc, now: f64) -> f64 {
    let age = now - p.start_time;
    if age <= 0.0 {
        0.0
    } else {
        p.cpu() / age * 100.0
    }
}

fn sort(procs: &mut [Proc], key: SortKey) {
    let f = |p: &Proc| -> f64 {
        match key {
            SortKey::Pid => p.pid as f64,
            SortKey::Cpu => -p.cpu(),
            SortKey::Mem => -(p.rss_bytes as f64),
            SortKey::Start => p.start_time,
            SortKey::Exit => p.exit_time.unwrap_or(0.0),
        }
    };
    procs.sort_by(|a, b| f(a).total_cmp(&f(b)).then(a.pid.cmp(&b.pid)));
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        // ps marks a cut user name with `+`.
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('+');
        t
    }
}
