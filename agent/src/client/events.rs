//! `bpfproc events`: tails the agent's fork/exec/exit stream (`/v1/events`) as aligned lines
//! or as JSON lines for `jq`.

use super::{AgentArg, Client, Proc, Users, out};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub agent: AgentArg,
    /// Only these kinds of event (comma-separated: fork, exec, exit).
    #[arg(short = 't', long = "type", value_delimiter = ',', value_enum)]
    pub types: Vec<Kind>,
    /// Only processes with this command name (matched by the agent).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only this user's processes (a name or a uid; matched by the agent).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Only this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only children of this process.
    #[arg(long, value_name = "PID")]
    pub ppid: Option<u32>,
    /// Only exits that failed: a non-zero code, a signal, or an unknown status.
    #[arg(long)]
    pub failed: bool,
    /// Stop after this many events.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line, as the agent sent it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Fork,
    Exec,
    Exit,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fork => "fork",
            Kind::Exec => "exec",
            Kind::Exit => "exit",
        }
    }
}

pub fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.agent)?;
    let users = Users::load();
    let mut query = Vec::new();
    if let Some(c) = &args.comm {
        query.push(format!("comm={}", super::query_escape(c)));
    }
    if let Some(u) = &args.user {
        let uid = users
            .uid(u)
            .ok_or_else(|| anyhow::anyhow!("-u {u:?}: no such user on this host"))?;
        query.push(format!("uid={uid}"));
    }
    if let Some(p) = args.pid {
        query.push(format!("pid={p}"));
    }
    if let Some(p) = args.ppid {
        query.push(format!("ppid={p}"));
    }
    let path = if query.is_empty() {
        "/v1/events".to_string()
    } else {
        format!("/v1/events?{}", query.join("&"))
    };
    if !args.json {
        out(format!(
            "{:<12} {:<5} {:>7} {:>7} {:<8} WHAT",
            "TIME", "EVENT", "PID", "PPID", "USER"
        ));
    }
    let mut left = args.count;
    let mut failure = None;
    client.sse(&path, |event, data| {
        if event == "lagged" {
            // Say so on stderr: a consumer of the JSON lines must not mistake it for an event.
            eprintln!("bpfproc events: fell behind, the agent dropped events for us: {data}");
            return true;
        }
        if !args.types.is_empty() && !args.types.iter().any(|k| k.name() == event) {
            return true;
        }
        let p: Proc = match serde_json::from_str(data) {
            Ok(p) => p,
            Err(e) => {
                failure = Some(anyhow::anyhow!(
                    "the agent sent an event we cannot read: {e}"
                ));
                return false;
            }
        };
        if args.failed && !(event == "exit" && p.how_ended() != "0") {
            return true;
        }
        if args.json {
            out(data);
        } else {
            out(line(event, &p, data, &users));
        }
        match &mut left {
            Some(n) => {
                *n -= 1;
                *n > 0
            }
            None => true,
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn line(event: &str, p: &Proc, data: &str, users: &Users) -> String {
    let time = serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v["time"].as_f64())
        .unwrap_or_else(super::now);
    let what = match event {
        "fork" => p.comm.clone(),
        "exec" => p.command(),
        "exit" => format!(
            "{} {} after {}, cpu {}",
            p.comm,
            match p.how_ended().as_str() {
                "?" => "ended (status lost)".to_string(),
                s if s.starts_with("SIG") => format!("killed by {s}"),
                s => format!("exited {s}"),
            },
            super::duration(p.runtime.unwrap_or(0.0)),
            super::duration(p.cpu())
        ),
        _ => String::new(),
    };
    format!(
        "{:<12} {:<5} {:>7} {:>7} {:<8} {}",
        super::clock_ms(time),
        event,
        p.pid,
        p.ppid,
        users.name(p.uid),
        what
    )
}
