//! `bpfproc top`: a full-screen live view of one agent — processes sorted by CPU or memory, the
//! processes that exited since the last refresh (the short-lived ones `top` never shows),
//! fork/exec/exit rate sparklines and the agent's loss counters — with keys to sort, filter,
//! and stop/start/kill a process through the agent's control route, after a confirmation.

use std::{
    collections::{HashMap, VecDeque},
    io::IsTerminal as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState},
};

use super::{AgentArg, Client, CtlError, Proc, Users};
use crate::sys::pidfd;

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub agent: AgentArg,
    /// Seconds between refreshes.
    #[arg(short = 'd', long, default_value_t = 1.0, value_parser = parse_delay)]
    pub delay: f64,
    /// The initial sort column.
    #[arg(long, value_enum, default_value = "cpu")]
    pub sort: Sort,
    /// The agent's control token (for stop/start/kill).
    #[arg(long, default_value = crate::config::DEFAULT_TOKEN_FILE, env = "BPFPROC_TOKEN_FILE")]
    pub token_file: PathBuf,
}

fn parse_delay(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.1..=3600.0).contains(&d) => Ok(d),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0.1 and 3600"
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    Cpu,
    Mem,
    Pid,
    Time,
}

impl Sort {
    fn name(self) -> &'static str {
        match self {
            Sort::Cpu => "%CPU",
            Sort::Mem => "RSS",
            Sort::Pid => "PID",
            Sort::Time => "TIME",
        }
    }
}

/// A control action waiting for its y/n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Stop,
    Start,
    Kill,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Kill => "kill",
        }
    }
}

enum Mode {
    Normal,
    Filter(String),
    Confirm {
        action: Action,
        pid: u32,
        start: f64,
        comm: String,
    },
}

/// What the screen shows; refreshed from the agent every `delay`.
struct Model {
    procs: Vec<Proc>,
    /// %CPU over the last interval, by (pid, start time): a reused pid starts from zero.
    cpu_pct: HashMap<(u32, u64), f64>,
    prev_cpu: HashMap<(u32, u64), f64>,
    prev_at: Option<Instant>,
    /// Exited since the previous refresh, newest first.
    recent_exits: Vec<Proc>,
    last_exit_seen: f64,
    rates: [VecDeque<u64>; 3],
    prev_counts: Option<[u64; 3]>,
    losses: Vec<(String, u64)>,
    threads: u64,
    error: Option<String>,
}

const HISTORY: usize = 120;

fn key(p: &Proc) -> (u32, u64) {
    (p.pid, p.start_time.to_bits())
}

impl Model {
    fn new(delay: f64) -> Self {
        Self {
            procs: Vec::new(),
            cpu_pct: HashMap::new(),
            prev_cpu: HashMap::new(),
            prev_at: None,
            recent_exits: Vec::new(),
            last_exit_seen: super::now() - delay,
            rates: Default::default(),
            prev_counts: None,
            losses: Vec::new(),
            threads: 0,
            error: None,
        }
    }

    fn refresh(&mut self, client: &Client) {
        match self.try_refresh(client) {
            Ok(()) => self.error = None,
            // Keep the last picture and say why it is not moving; the next tick retries.
            Err(e) => self.error = Some(e.to_string().replace('\n', " — ")),
        }
    }

    fn try_refresh(&mut self, client: &Client) -> Result<(), super::ClientError> {
        let procs = client.processes("")?;
        let exited = client.exited("")?;
        let stats: serde_json::Value = client.get_json("/v1/stats")?;
        let now = Instant::now();
        let dt = self.prev_at.map(|t| now.duration_since(t).as_secs_f64());

        let mut cpu = HashMap::with_capacity(procs.len());
        self.cpu_pct.clear();
        for p in &procs {
            cpu.insert(key(p), p.cpu());
            let pct = match (dt, self.prev_cpu.get(&key(p))) {
                (Some(dt), Some(prev)) if dt > 0.0 => (p.cpu() - prev).max(0.0) / dt * 100.0,
                // First sight: the lifetime average, as ps shows it.
                _ => super::ps::cpu_percent(p, super::now()),
            };
            self.cpu_pct.insert(key(p), pct);
        }
        self.prev_cpu = cpu;
        self.prev_at = Some(now);
        self.threads = procs.iter().map(|p| p.threads as u64).sum();
        self.procs = procs;

        let mut recent: Vec<Proc> = exited
            .into_iter()
            .filter(|p| p.exit_time.is_some_and(|t| t > self.last_exit_seen))
            .collect();
        recent.sort_by(|a, b| {
            b.exit_time
                .unwrap_or(0.0)
                .total_cmp(&a.exit_time.unwrap_or(0.0))
        });
        if let Some(t) = recent.first().and_then(|p| p.exit_time) {
            self.last_exit_seen = t;
        }
        self.recent_exits = recent;

        let table = &stats["table"];
        let counts = ["forks", "execs", "exits"].map(|k| table[k].as_u64().unwrap_or(0));
        if let (Some(prev), Some(dt)) = (self.prev_counts, dt) {
            for i in 0..3 {
                let rate = (counts[i].saturating_sub(prev[i]) as f64 / dt).round() as u64;
                let h = &mut self.rates[i];
                h.push_back(rate);
                if h.len() > HISTORY {
                    h.pop_front();
                }
            }
        }
        self.prev_counts = Some(counts);
        let kernel = &stats["kernel"];
        self.losses = [
            "ringbuf_full",
            "map_full",
            "read_error",
            "args_error",
            "iter_error",
        ]
        .iter()
        .map(|k| (k.to_string(), kernel[*k].as_u64().unwrap_or(0)))
        .chain([
            (
                "lost_exits".to_string(),
                table["lost_exits"].as_u64().unwrap_or(0),
            ),
            (
                "rescans".to_string(),
                stats["rescans"].as_u64().unwrap_or(0),
            ),
        ])
        .collect();
        Ok(())
    }
}

struct App {
    model: Model,
    sort: Sort,
    filter: String,
    mode: Mode,
    table: TableState,
    /// The selected process, kept across refreshes by pid.
    selected: Option<u32>,
    message: Option<String>,
    users: Users,
    base: String,
    delay: f64,
}

impl App {
    /// The rows on screen: filtered and sorted.
    fn rows(&self) -> Vec<&Proc> {
        let needle = self.filter.to_lowercase();
        let mut v: Vec<&Proc> = self
            .model
            .procs
            .iter()
            .filter(|p| {
                needle.is_empty()
                    || p.command().to_lowercase().contains(&needle)
                    || p.comm.to_lowercase().contains(&needle)
                    || p.pid.to_string() == needle
                    || self.users.name(p.uid) == needle
            })
            .collect();
        let pct = |p: &Proc| self.model.cpu_pct.get(&key(p)).copied().unwrap_or(0.0);
        match self.sort {
            Sort::Cpu => v.sort_by(|a, b| pct(b).total_cmp(&pct(a)).then(a.pid.cmp(&b.pid))),
            Sort::Mem => v.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid))),
            Sort::Pid => v.sort_by_key(|p| p.pid),
            Sort::Time => v.sort_by(|a, b| b.cpu().total_cmp(&a.cpu()).then(a.pid.cmp(&b.pid))),
        }
        v
    }

    fn sync_selection(&mut self) {
        let rows = self.rows();
        let idx = self
            .selected
            .and_then(|pid| rows.iter().position(|p| p.pid == pid))
            .or(if rows.is_empty() { None } else { Some(0) });
        self.selected = idx.map(|i| rows[i].pid);
        self.table.select(idx);
    }

    fn move_selection(&mut self, delta: isize) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let cur = self.table.selected().unwrap_or(0) as isize;
        let i = (cur + delta).clamp(0, rows.len() as isize - 1) as usize;
        self.selected = Some(rows[i].pid);
        self.table.select(Some(i));
    }
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "bpfproc top needs a terminal\nhint: use `bpfproc ps` or `bpfproc events` in scripts and pipes"
        );
    }
    let client = Client::new(&args.agent)?;
    // Fail before taking over the screen if the agent is not there.
    client.get_json::<serde_json::Value>("/v1/stats")?;
    let mut app = App {
        model: Model::new(args.delay),
        sort: args.sort,
        filter: String::new(),
        mode: Mode::Normal,
        table: TableState::default(),
        selected: None,
        message: None,
        users: Users::load(),
        base: client.base.clone(),
        delay: args.delay,
    };
    app.model.refresh(&client);
    app.sync_selection();

    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &mut app, &client, args);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    client: &Client,
    args: &TopArgs,
) -> anyhow::Result<()> {
    let delay = Duration::from_secs_f64(args.delay);
    let mut next = Instant::now() + delay;
    loop {
        terminal.draw(|f| draw(f, app))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
                && !handle_key(app, k, client, args)
            {
                return Ok(());
            }
        } else {
            app.model.refresh(client);
            app.sync_selection();
            next = Instant::now() + delay;
        }
    }
}

/// Applies one key; false means quit.
fn handle_key(app: &mut App, k: KeyEvent, client: &Client, args: &TopArgs) -> bool {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return false;
    }
    match std::mem::replace(&mut app.mode, Mode::Normal) {
        Mode::Filter(mut text) => match k.code {
            KeyCode::Enter => {
                app.filter = text;
                app.sync_selection();
            }
            KeyCode::Esc => {}
            KeyCode::Backspace => {
                text.pop();
                app.mode = Mode::Filter(text);
            }
            KeyCode::Char(c) => {
                text.push(c);
                app.mode = Mode::Filter(text);
            }
            _ => app.mode = Mode::Filter(text),
        },
        Mode::Confirm {
            action,
            pid,
            start,
            comm,
        } => {
            app.message = Some(
                if k.code == KeyCode::Char('y') || k.code == KeyCode::Char('Y') {
                    let r = control(client, action, pid, start, &args.token_file);
                    app.model.refresh(client);
                    app.sync_selection();
                    match r {
                        Ok(how) => format!("{} {pid} ({comm}): done{how}", action.word()),
                        Err(e) => format!("{} {pid} ({comm}) failed: {e}", action.word()),
                    }
                } else {
                    format!("{} {pid} cancelled", action.word())
                },
            );
        }
        Mode::Normal => match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('c') => app.sort = Sort::Cpu,
            KeyCode::Char('m') => app.sort = Sort::Mem,
            KeyCode::Char('p') => app.sort = Sort::Pid,
            KeyCode::Char('t') => app.sort = Sort::Time,
            KeyCode::Char('/') => app.mode = Mode::Filter(app.filter.clone()),
            KeyCode::Up => app.move_selection(-1),
            KeyCode::Down => app.move_selection(1),
            KeyCode::PageUp => app.move_selection(-20),
            KeyCode::PageDown => app.move_selection(20),
            KeyCode::Home => app.move_selection(isize::MIN / 2),
            KeyCode::End => app.move_selection(isize::MAX / 2),
            KeyCode::Char(c @ ('s' | 'g' | 'k')) => {
                let action = match c {
                    's' => Action::Stop,
                    'g' => Action::Start,
                    _ => Action::Kill,
                };
                let target = app.selected.and_then(|pid| {
                    app.model
                        .procs
                        .iter()
                        .find(|p| p.pid == pid)
                        .map(|p| (p.pid, p.start_time, p.comm.clone()))
                });
                match target {
                    Some((pid, start, comm)) => {
                        app.mode = Mode::Confirm {
                            action,
                            pid,
                            start,
                            comm,
                        }
                    }
                    None => app.message = Some("no process selected".into()),
                }
            }
            _ => {}
        },
    }
    if matches!(app.mode, Mode::Normal) {
        app.sync_selection();
    }
    true
}

/// Sends the action through the agent's control route. A kill falls back to kill(2) when the
/// agent has no control route or its token is not ours to read — but only for a process on
/// this host that we may signal anyway, through a pidfd taken before re-checking the pid's
/// start time, so a pid reused meanwhile is never hit.
fn control(
    client: &Client,
    action: Action,
    pid: u32,
    start: f64,
    token_file: &std::path::Path,
) -> Result<&'static str, String> {
    match client.ctl(pid, action.word(), token_file) {
        Ok(()) => Ok(""),
        Err(e @ (CtlError::Unsupported | CtlError::Token { .. }))
            if action == Action::Kill && is_local(&client.base) =>
        {
            kill_own(client, pid, start).map_err(|k| format!("{e}; kill(2) fallback: {k}"))?;
            Ok(" (SIGKILL sent with kill(2): the agent's control route is not available)")
        }
        Err(e) => Err(e.to_string().replace('\n', " — ")),
    }
}

fn is_local(base: &str) -> bool {
    let host = base.trim_start_matches("http://");
    host.starts_with("127.") || host.starts_with("localhost:") || host.starts_with("[::1]:")
}

fn kill_own(client: &Client, pid: u32, start: f64) -> Result<(), String> {
    let fd = pidfd::open(pid).map_err(|e| std::io::Error::from(e).to_string())?;
    let same = client
        .get_json::<Proc>(&format!("/v1/processes/{pid}"))
        .map(|p| p.start_time == start)
        .unwrap_or(false);
    if !same {
        return Err(format!("process {pid} is gone (its pid may be reused)"));
    }
    if let Err(e) = pidfd::send_signal(&fd, libc::SIGKILL) {
        let e = std::io::Error::from(e);
        return Err(if e.kind() == std::io::ErrorKind::PermissionDenied {
            "permission denied: not your process (run as root to use the agent's control)".into()
        } else {
            e.to_string()
        });
    }
    Ok(())
}

fn draw(f: &mut Frame, app: &mut App) {
    let [header, sparks, losses, table, exits, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(8),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let m = &app.model;
    let mut head = vec![
        Span::from("bpfproc top").bold(),
        Span::from(format!(
            "  {}  {} processes, {} threads  sort: {}  refresh: every {:.1}s",
            app.base,
            m.procs.len(),
            m.threads,
            app.sort.name(),
            app.delay,
        )),
    ];
    if !app.filter.is_empty() {
        head.push(Span::from(format!("  filter: {}", app.filter)).bold());
    }
    f.render_widget(Paragraph::new(Line::from(head)), header);

    let cols = Layout::horizontal([Constraint::Ratio(1, 3); 3]).split(sparks);
    for (i, name) in ["forks/s", "execs/s", "exits/s"].iter().enumerate() {
        let data: Vec<u64> = m.rates[i].iter().copied().collect();
        // The newest samples, as many as fit.
        let width = cols[i].width.saturating_sub(2) as usize;
        let shown = &data[data.len().saturating_sub(width)..];
        let now = data.last().copied().unwrap_or(0);
        let max = data.iter().copied().max().unwrap_or(0);
        f.render_widget(
            Sparkline::default()
                .block(Block::bordered().title(format!("{name} {now} (max {max})")))
                .data(shown),
            cols[i],
        );
    }

    let total: u64 = m.losses.iter().map(|(_, v)| v).sum();
    let loss_line = Line::from(
        std::iter::once(Span::from("losses: ").bold())
            .chain(m.losses.iter().map(|(k, v)| {
                let s = Span::from(format!("{k} {v}  "));
                if *v > 0 { s.red().bold() } else { s }
            }))
            .chain((total == 0).then(|| Span::from("(none)")))
            .collect::<Vec<_>>(),
    );
    f.render_widget(Paragraph::new(loss_line), losses);

    draw_table(f, app, table);
    draw_exits(f, app, exits);

    let footer_line = match &app.mode {
        Mode::Filter(t) => Line::from(format!(
            "filter (command, name, pid or user; Enter applies, Esc cancels): {t}_"
        ))
        .bold(),
        Mode::Confirm {
            action, pid, comm, ..
        } => Line::from(format!("{} {pid} ({comm})? y/n", action.word()))
            .bold()
            .reversed(),
        Mode::Normal => match (&app.model.error, &app.message) {
            (Some(e), _) => Line::from(format!("agent unreachable: {e}")).red().bold(),
            (None, Some(msg)) => Line::from(msg.clone()).bold(),
            (None, None) => Line::from(
                "q quit  c/m/p/t sort cpu/mem/pid/time  / filter  ↑↓ select  s stop  g start  k kill",
            ),
        },
    };
    f.render_widget(Paragraph::new(footer_line), footer);
}

fn draw_table(f: &mut Frame, app: &mut App, area: Rect) {
    let rows = app.rows();
    let now = super::now();
    let body: Vec<Row> = rows
        .iter()
        .map(|p| {
            Row::new(vec![
                Cell::from(p.pid.to_string()),
                Cell::from(app.users.name(p.uid)),
                Cell::from(p.state.clone()),
                Cell::from(format!(
                    "{:.1}",
                    app.model.cpu_pct.get(&key(p)).copied().unwrap_or(0.0)
                )),
                Cell::from(human_bytes(p.rss_bytes)),
                Cell::from(p.threads.to_string()),
                Cell::from(super::cpu_time(p.cpu())),
                Cell::from(super::start_time(p.start_time, now)),
                Cell::from(p.command()),
            ])
        })
        .collect();
    let n = body.len();
    let header = Row::new([
        "PID", "USER", "S", "%CPU", "RSS", "THR", "TIME", "START", "COMMAND",
    ])
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let t = Table::new(
        body,
        [
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(1),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .block(Block::bordered().title(format!("processes ({n})")))
    .row_highlight_style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    f.render_stateful_widget(t, area, &mut app.table);
}

fn draw_exits(f: &mut Frame, app: &App, area: Rect) {
    let exits = &app.model.recent_exits;
    let body: Vec<Row> = exits
        .iter()
        .map(|p| {
            Row::new(vec![
                Cell::from(p.pid.to_string()),
                Cell::from(p.ppid.to_string()),
                Cell::from(p.how_ended()),
                Cell::from(super::duration(p.runtime.unwrap_or(0.0))),
                Cell::from(super::duration(p.cpu())),
                Cell::from(p.command()),
            ])
        })
        .collect();
    let t = Table::new(
        body,
        [
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(["PID", "PPID", "EXIT", "RUNTIME", "CPU", "COMMAND"])
            .style(Style::new().add_modifier(Modifier::REVERSED)),
    )
    .block(Block::bordered().title(format!("exited since the last refresh ({})", exits.len())));
    f.render_widget(t, area);
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 {
        format!("{:.0}{}", v, UNITS[u])
    } else {
        format!("{:.1}{}", v, UNITS[u])
    }
}
