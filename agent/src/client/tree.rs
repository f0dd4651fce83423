//! `bpfproc tree`: the process tree as `pstree -p` draws it, optionally with the children that
//! already exited shown under their parents.

use std::collections::{HashMap, HashSet};

use super::{AgentArg, Client, Proc, out};

#[derive(clap::Args, Debug)]
pub struct TreeArgs {
    #[command(flatten)]
    pub agent: AgentArg,
    /// Draw only the subtree of this process.
    pub pid: Option<u32>,
    /// Also show recently exited processes under their parents, with how they ended.
    #[arg(short = 'x', long)]
    pub exited: bool,
    /// Show command lines (as `pstree -a`).
    #[arg(short = 'a', long)]
    pub arguments: bool,
    /// Leave out kernel threads.
    #[arg(short = 'k', long)]
    pub no_kernel: bool,
    /// Draw with ASCII characters.
    #[arg(short = 'A', long)]
    pub ascii: bool,
}

pub fn run(args: &TreeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.agent)?;
    let live = client.processes("")?;
    let exited = if args.exited {
        client.exited("")?
    } else {
        Vec::new()
    };
    if let Some(pid) = args.pid
        && !live.iter().any(|p| p.pid == pid)
    {
        anyhow::bail!("no live process {pid}");
    }
    for line in render(&live, &exited, args) {
        out(line);
    }
    Ok(())
}

/// The tree as lines. Live processes hang under their current parent; an exited one under
/// the process that had its parent's pid when it ran (a parent started after it is a reused
/// pid, not its parent, and such orphans are left out).
pub fn render(live: &[Proc], exited: &[Proc], args: &TreeArgs) -> Vec<String> {
    // A zombie is in both lists (it has exited, and is not reaped yet): keep the live entry.
    let live_ids: HashSet<(u32, u64)> = live
        .iter()
        .map(|p| (p.pid, p.start_time.to_bits()))
        .collect();
    let all: Vec<(&Proc, bool)> = live
        .iter()
        .map(|p| (p, false))
        .chain(
            exited
                .iter()
                .filter(|p| !live_ids.contains(&(p.pid, p.start_time.to_bits())))
                .map(|p| (p, true)),
        )
        .filter(|(p, _)| !(args.no_kernel && p.kthread))
        .collect();
    // A live pid is unique; exited entries may share a pid with a live one or each other.
    let live_by_pid: HashMap<u32, usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (_, gone))| !gone)
        .map(|(i, (p, _))| (p.pid, i))
        .collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, &(p, gone)) in all.iter().enumerate() {
        let parent = live_by_pid.get(&p.ppid).copied().or_else(|| {
            // An exited child whose parent also exited: find that parent among the exited.
            all.iter().enumerate().find_map(|(j, (q, q_gone))| {
                (*q_gone && q.pid == p.ppid && q.start_time <= p.start_time).then_some(j)
            })
        });
        match parent {
            Some(j) if j != i && all[j].0.start_time <= p.start_time + 1e-3 => {
                children.entry(j).or_default().push(i)
            }
            Some(_) | None if !gone => roots.push(i),
            _ => {}
        }
    }
    for v in children.values_mut() {
        v.sort_by_key(|&i| (all[i].0.pid, all[i].1));
    }
    roots.sort_by_key(|&i| all[i].0.pid);
    if let Some(pid) = args.pid {
        roots = live_by_pid.get(&pid).copied().into_iter().collect();
    }

    let (branch, last, pipe, blank) = if args.ascii {
        ("|-", "`-", "| ", "  ")
    } else {
        ("├─", "└─", "│ ", "  ")
    };
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    // Depth-first with an explicit stack: (node, prefix for its children, its own prefix).
    let mut stack: Vec<(usize, String, String)> = roots
        .iter()
        .rev()
        .map(|&r| (r, String::new(), String::new()))
        .collect();
    while let Some((i, child_prefix, own)) = stack.pop() {
        // A pid-reuse cycle must not loop forever.
        if !seen.insert(i) {
            continue;
        }
        lines.push(format!("{own}{}", label(all[i].0, args.arguments)));
        let kids = children.get(&i).map(Vec::as_slice).unwrap_or(&[]);
        for (n, &k) in kids.iter().enumerate().rev() {
            let is_last = n + 1 == kids.len();
            stack.push((
                k,
                format!("{child_prefix}{}", if is_last { blank } else { pipe }),
                format!("{child_prefix}{}", if is_last { last } else { branch }),
            ));
        }
    }
    lines
}

fn label(p: &Proc, arguments: bool) -> String {
    let mut s = format!("{}({})", p.comm, p.pid);
    if arguments && p.cmdline.len() > 1 {
        s.push(' ');
        s.push_str(&p.cmdline[1..].join(" "));
    }
    if p.exit_time.is_some() {
        s.push_str(&format!(
            " [exited {} after {}]",
            p.how_ended(),
            super::duration(p.runtime.unwrap_or(0.0))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, comm: &str, start: f64, exit: Option<i32>) -> Proc {
        let mut v = serde_json::json!({
            "pid": pid, "ppid": ppid, "comm": comm, "state": "S", "uid": 0, "threads": 1,
            "start_time": start, "rss_bytes": 0, "utime": 0.0, "stime": 0.0,
            "cmdline": [comm, "arg"],
        });
        if let Some(code) = exit {
            v["exit_code"] = code.into();
            v["exit_time"] = (start + 1.0).into();
            v["runtime"] = 1.0.into();
        }
        serde_json::from_value(v).unwrap()
    }

    fn args(exited: bool) -> TreeArgs {
        TreeArgs {
            agent: AgentArg { agent: None },
            pid: None,
            exited,
            arguments: false,
            no_kernel: false,
            ascii: true,
        }
    }

    #[test]
    fn draws_like_pstree_with_exited_children() {
        let live = vec![
            proc(1, 0, "init", 0.0, None),
            proc(10, 1, "sh", 1.0, None),
            proc(11, 10, "sleep", 2.0, None),
            proc(20, 1, "cron", 1.0, None),
        ];
        let exited = vec![
            proc(12, 10, "true", 3.0, Some(0)),
            // Its parent pid 20 was reused by a later process: not cron's child.
            proc(30, 20, "old", 0.5, Some(1)),
        ];
        let lines = render(&live, &exited, &args(true));
        assert_eq!(
            lines,
            [
                "init(1)",
                "|-sh(10)",
                "| |-sleep(11)",
                "| `-true(12) [exited 0 after 1.00s]",
                "`-cron(20)",
            ]
        );
        assert_eq!(render(&live, &[], &args(false)).len(), 4);
    }

    #[test]
    fn a_zombie_in_both_lists_is_drawn_once() {
        let zombie = proc(12, 1, "z", 3.0, Some(0));
        let live = vec![proc(1, 0, "init", 0.0, None), zombie.clone()];
        let lines = render(&live, &[zombie], &args(true));
        assert_eq!(lines, ["init(1)", "`-z(12) [exited 0 after 1.00s]"]);
    }
}
