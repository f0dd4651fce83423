//! The agent's TOML config file: one key per `bpfproc agent` flag, so a service keeps its
//! settings in `/etc/bpfproc/bpfproc.toml`. Flags (and their environment variables) override
//! the file; the file overrides the built-in defaults. Every error names the file and line.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{ArgMatches, ValueEnum as _, parser::ValueSource};
use serde::Deserialize;
use toml::Spanned;

use crate::{fs::MountOptions, groups, otlp};

/// Default HTTP address: loopback only, so nothing is exposed without an explicit choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Where the agent writes the bearer token for the control routes (root-only, 0600), and
/// where the control clients read it.
pub const DEFAULT_TOKEN_FILE: &str = "/run/bpfproc/token";

/// Every setting of `bpfproc agent`: its flags (with their environment variables), filled in
/// from the config file by [`Loaded::apply`] where no flag gave them.
#[derive(clap::Args, Debug)]
pub struct Settings {
    /// A TOML config file with the same settings (see docs/config.md); flags override it.
    #[arg(long, env = "BPFPROC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only check the --config file (and the flags) and exit: 0 when valid, 1 with the
    /// file, line and reason when not.
    #[arg(long, requires = "config")]
    pub check_config: bool,
    /// HTTP listen address.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "BPFPROC_LISTEN")]
    pub listen: SocketAddr,
    /// How many exited processes to retain for /v1/exited.
    #[arg(long, default_value_t = 8192)]
    pub exited: usize,
    /// Upper bound on the age of state, CPU and memory numbers, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub max_staleness_ms: u64,
    /// Kernel ring buffer size in bytes (a power of two). The default holds ~1,100 spawns
    /// (fork, exec with argv, exit, free) between drains, which come every `--drain-ms` or at
    /// a quarter full: a 100,000-spawn storm at 1,500/s lost nothing with it.
    #[arg(long, default_value_t = 2 << 20)]
    pub ringbuf_bytes: u32,
    /// Capacity of the in-kernel process map. By default sized from the host: threads-max
    /// (every process has a thread), at least 65,536 and at most 4,194,304 (the kernel's
    /// PID_MAX_LIMIT); entries are not preallocated, the hash buckets cost 16 bytes each.
    #[arg(long)]
    pub max_processes: Option<u32>,
    /// How often the ring buffer is drained when no wake-up comes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub drain_ms: u64,
    /// Mount a proc view here at start (repeatable; created if missing).
    #[arg(long)]
    pub mount: Vec<PathBuf>,
    /// Options for the --mount views (as `bpfproc mount -o`).
    #[arg(long, default_value = "")]
    pub mount_options: String,
    /// The local control socket (`bpfproc mount` etc. connect to it).
    #[arg(long, default_value = crate::socket::DEFAULT_SOCKET, env = "BPFPROC_SOCKET")]
    pub socket: PathBuf,
    /// What /metrics groups processes by (like process-exporter's name groups).
    #[arg(long, value_enum, default_value = "comm")]
    pub metrics_group_by: groups::GroupBy,
    /// A process-exporter style YAML file of group rules (`process_names:` with `name`,
    /// `comm`, `exe`, `cmdline`); replaces --metrics-group-by. Unmatched processes are not grouped.
    #[arg(long, conflicts_with = "metrics_group_by")]
    pub metrics_groups_config: Option<std::path::PathBuf>,
    /// At most this many distinct groups; processes of further groups are counted as "other".
    #[arg(long, default_value_t = 1000)]
    pub metrics_max_groups: usize,
    /// Also export per-process series (bounded by --metrics-per-pid-max).
    #[arg(long)]
    pub metrics_per_pid: bool,
    /// The cap on per-process series: the heaviest processes by CPU are kept, the rest counted
    /// in bpfproc_pid_series_dropped_total.
    #[arg(long, default_value_t = 100, requires = "metrics_per_pid")]
    pub metrics_per_pid_max: usize,
    /// Take over from the agent answering on --socket: attach and backfill first, then take
    /// its views over (no remount: bind mounts elsewhere keep working) and let it exit.
    #[arg(long)]
    pub takeover: bool,
    /// How long, in seconds, the views' requests wait for the next agent when this one dies
    /// (a keeper process holds the views' connections meanwhile; under systemd its file
    /// descriptor store does, for as long as the unit restarts). 0: views die with the agent.
    #[arg(long, default_value_t = 30)]
    pub keep_views_secs: u64,
    /// Export metrics and exit log records over OTLP to this collector, e.g.
    /// `http://localhost:4318` (http/protobuf) or `http://localhost:4317` (grpc). Without it, the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or a signal's own variable) turns export on; the
    /// other `OTEL_*` variables are honoured too.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP transport of both signals. Without it, `OTEL_EXPORTER_OTLP_PROTOCOL` (or a
    /// signal's own `OTEL_EXPORTER_OTLP_{METRICS,LOGS}_PROTOCOL`) says, else http/protobuf.
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<otlp::Protocol>,
    /// Also export a log record per exec (exits always are, when OTLP export is on).
    #[arg(long)]
    pub otlp_exec_events: bool,
    /// Log records waiting for the collector at most; further ones are dropped and counted in
    /// bpfproc_otlp_log_records_dropped_total{cause="queue_full"}.
    #[arg(long, default_value_t = 8192)]
    pub otlp_queue: usize,
    /// File the control token is written to (mode 0600) at start and removed from at exit.
    #[arg(long, default_value = DEFAULT_TOKEN_FILE, env = "BPFPROC_TOKEN_FILE")]
    pub token_file: std::path::PathBuf,
    /// Every view to mount at start with its options: from --mount and --mount-options, or
    /// the config file's `[[mount]]` tables.
    #[arg(skip)]
    pub mount_table: Vec<(PathBuf, String)>,
}

impl Settings {
    /// The settings as the agent runs with them: `--mount` flags become the mount table, and
    /// a `--config` file fills what no flag gave (`m` tells which did).
    pub fn resolve(mut self, m: &ArgMatches) -> Result<Self, ConfigError> {
        if !self.mount.is_empty() {
            self.mount_table = self
                .mount
                .iter()
                .map(|d| (d.clone(), self.mount_options.clone()))
                .collect();
        }
        if let Some(path) = self.config.clone() {
            Loaded::read(&path)?.apply(&mut self, m);
        }
        Ok(self)
    }
}

/// What the agent checks before loading anything, also run by `--check-config`.
pub fn check(args: &Settings) -> anyhow::Result<()> {
    if !args.ringbuf_bytes.is_power_of_two() || args.ringbuf_bytes < 4096 {
        anyhow::bail!("--ringbuf-bytes must be a power of two of at least 4096");
    }
    for (dir, options) in &args.mount_table {
        MountOptions::parse(options)
            .with_context(|| format!("mount options for {}", dir.display()))?;
    }
    if let Some(path) = &args.metrics_groups_config {
        groups::Grouping::load(path)?;
    }
    if let Some(e) = &args.otlp_endpoint {
        check_endpoint(e).map_err(|m| anyhow::anyhow!("--otlp-endpoint {m}"))?;
    }
    Ok(())
}

/// The collector's base URL: plain http (this build has no TLS; a collector on the node, or a
/// local one in front of a remote endpoint, is the usual shape anyway).
fn check_endpoint(e: &str) -> Result<(), String> {
    if e.starts_with("http://") {
        Ok(())
    } else if e.starts_with("https://") {
        Err(format!(
            "{e:?}: this build exports over plain http (send to a Collector on the node)"
        ))
    } else {
        Err(format!("{e:?}: want a URL like http://localhost:4318"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    listen: Option<Spanned<String>>,
    socket: Option<PathBuf>,
    exited: Option<usize>,
    max_staleness_ms: Option<u64>,
    ringbuf_bytes: Option<Spanned<u32>>,
    max_processes: Option<u32>,
    drain_ms: Option<u64>,
    keep_views_secs: Option<u64>,
    #[serde(default)]
    mount: Vec<Spanned<Mount>>,
    metrics: Option<Metrics>,
    otlp: Option<Otlp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Otlp {
    endpoint: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    exec_events: Option<bool>,
    queue: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mount {
    dir: Spanned<PathBuf>,
    options: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metrics {
    group_by: Option<Spanned<String>>,
    groups_config: Option<Spanned<PathBuf>>,
    max_groups: Option<usize>,
    per_pid: Option<bool>,
    per_pid_max: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// toml's message already says the line and column and shows the offending text.
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

/// A parsed file with its text, for line numbers.
pub struct Loaded {
    path: String,
    text: String,
    file: File,
}

impl Loaded {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, text)
    }

    fn parse(path: &str, text: String) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let loaded = Self {
            path: path.to_string(),
            text,
            file,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: self.text[..span.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1,
            message: message.into(),
        }
    }

    /// Everything a flag's own parser or the agent's start-up would refuse, checked here so
    /// `--check-config` catches it with a line number.
    fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        if let Some(l) = &f.listen
            && l.get_ref().parse::<SocketAddr>().is_err()
        {
            return Err(self.err(
                l.span(),
                format!(
                    "listen = {:?} is not an address like 127.0.0.1:9464",
                    l.get_ref()
                ),
            ));
        }
        if let Some(r) = &f.ringbuf_bytes
            && (!r.get_ref().is_power_of_two() || *r.get_ref() < 4096)
        {
            return Err(self.err(
                r.span(),
                "ringbuf_bytes must be a power of two of at least 4096",
            ));
        }
        let mut dirs = std::collections::HashSet::new();
        for m in &f.mount {
            let mount = m.get_ref();
            if !mount.dir.get_ref().is_absolute() {
                return Err(self.err(mount.dir.span(), "a mount's dir must be an absolute path"));
            }
            if !dirs.insert(mount.dir.get_ref().clone()) {
                return Err(self.err(
                    mount.dir.span(),
                    format!("{} is mounted twice", mount.dir.get_ref().display()),
                ));
            }
            if let Some(o) = &mount.options
                && let Err(e) = MountOptions::parse(o.get_ref())
            {
                return Err(self.err(o.span(), format!("mount options: {e}")));
            }
        }
        if let Some(o) = &f.otlp
            && let Some(e) = &o.endpoint
            && let Err(m) = check_endpoint(e.get_ref())
        {
            return Err(self.err(e.span(), format!("otlp.endpoint = {m}")));
        }
        if let Some(o) = &f.otlp
            && let Some(p) = &o.protocol
            && otlp::Protocol::parse(p.get_ref()).is_none()
        {
            return Err(self.err(
                p.span(),
                format!(
                    "otlp.protocol = {:?}: want \"grpc\" or \"http/protobuf\"",
                    p.get_ref()
                ),
            ));
        }
        if let Some(m) = &f.metrics {
            if let (Some(by), Some(_)) = (&m.group_by, &m.groups_config) {
                return Err(self.err(
                    by.span(),
                    "metrics: group_by and groups_config exclude each other",
                ));
            }
            if let Some(by) = &m.group_by
                && groups::GroupBy::from_str(by.get_ref(), false).is_err()
            {
                return Err(self.err(
                    by.span(),
                    format!(
                        "metrics.group_by = {:?}: want comm, exe, user, cgroup, pod or container",
                        by.get_ref()
                    ),
                ));
            }
            if let Some(g) = &m.groups_config
                && let Err(e) = groups::Grouping::load(g.get_ref())
            {
                return Err(self.err(g.span(), format!("metrics.groups_config: {e}")));
            }
        }
        Ok(())
    }

    /// Fills every setting the command line (or its environment variable) did not give.
    pub fn apply(self, args: &mut Settings, m: &ArgMatches) {
        let from_flag = |id: &str| {
            matches!(
                m.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let f = self.file;
        macro_rules! take {
            ($field:ident, $value:expr) => {
                if let Some(v) = $value
                    && !from_flag(stringify!($field))
                {
                    args.$field = v;
                }
            };
        }
        take!(
            listen,
            f.listen
                .and_then(|l| l.into_inner().parse::<SocketAddr>().ok())
        );
        take!(socket, f.socket);
        take!(exited, f.exited);
        take!(max_staleness_ms, f.max_staleness_ms);
        take!(ringbuf_bytes, f.ringbuf_bytes.map(Spanned::into_inner));
        take!(max_processes, f.max_processes.map(Some));
        take!(drain_ms, f.drain_ms);
        take!(keep_views_secs, f.keep_views_secs);
        // Mounts given as flags replace the file's list rather than adding to it.
        if !from_flag("mount") {
            args.mount_table = f
                .mount
                .into_iter()
                .map(|m| {
                    let m = m.into_inner();
                    (
                        m.dir.into_inner(),
                        m.options.map(Spanned::into_inner).unwrap_or_default(),
                    )
                })
                .collect();
        }
        if let Some(mx) = f.metrics {
            // One of the two grouping settings on the command line overrides both in the file.
            let grouping_flag = from_flag("metrics_group_by") || from_flag("metrics_groups_config");
            if !grouping_flag {
                if let Some(by) = mx
                    .group_by
                    .and_then(|b| groups::GroupBy::from_str(b.get_ref(), false).ok())
                {
                    args.metrics_group_by = by;
                }
                if let Some(g) = mx.groups_config {
                    args.metrics_groups_config = Some(g.into_inner());
                }
            }
            take!(metrics_max_groups, mx.max_groups);
            take!(metrics_per_pid, mx.per_pid);
            take!(metrics_per_pid_max, mx.per_pid_max);
        }
        if let Some(o) = f.otlp {
            take!(otlp_endpoint, o.endpoint.map(|e| Some(e.into_inner())));
            take!(
                otlp_protocol,
                o.protocol.map(|p| otlp::Protocol::parse(p.get_ref()))
            );
            take!(otlp_exec_events, o.exec_events);
            take!(otlp_queue, o.queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Loaded, String> {
        Loaded::parse("t.toml", text.to_string()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let l = check(
            "listen = \"0.0.0.0:9464\"\nexited = 100\nringbuf_bytes = 65536\n\n\
             [[mount]]\ndir = \"/run/bpfproc/proc\"\noptions = \"umask=022\"\n\n\
             [metrics]\ngroup_by = \"exe\"\nper_pid = true\n\n\
             [otlp]\nendpoint = \"http://collector:4317\"\nprotocol = \"grpc\"\n\
             exec_events = true\nqueue = 100\n",
        )
        .unwrap();
        assert_eq!(l.file.mount.len(), 1);
        assert_eq!(l.file.exited, Some(100));
        let protocol = l
            .file
            .otlp
            .and_then(|o| o.protocol)
            .map(Spanned::into_inner);
        assert_eq!(protocol.as_deref(), Some("grpc"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("exited = 1\nlisten = \"nowhere\"\n", "t.toml:2: listen"),
            ("\n\nringbuf_bytes = 5000\n", "t.toml:3: ringbuf_bytes"),
            (
                "[[mount]]\ndir = \"/a\"\n[[mount]]\ndir = \"/b\"\noptions = \"bogus=1\"\n",
                "t.toml:5: mount options",
            ),
            ("[[mount]]\ndir = \"rel\"\n", "t.toml:2: a mount's dir"),
            (
                "[metrics]\n\ngroup_by = \"pid\"\n",
                "t.toml:3: metrics.group_by",
            ),
            (
                "[metrics]\ngroups_config = \"/nonexistent/groups.yml\"\n",
                "t.toml:2: metrics.groups_config",
            ),
            (
                "[otlp]\nexec_events = true\nendpoint = \"localhost:4318\"\n",
                "t.toml:3: otlp.endpoint",
            ),
            (
                "[otlp]\nprotocol = \"http/json\"\n",
                "t.toml:2: otlp.protocol",
            ),
        ];
        for (text, want) in cases {
            let e = check(text).err().unwrap_or_default();
            assert!(e.starts_with(want), "{text:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn syntax_and_unknown_keys_say_where() {
        let e = check("exited = 1\nlisten_addr = \"x\"\n").err().unwrap();
        assert!(e.contains("line 2") && e.contains("unknown field"), "{e}");
        let e = check("exited = \"many\"\n").err().unwrap();
        assert!(e.contains("line 1"), "{e}");
        let e = check("[metrics\n").err().unwrap();
        assert!(e.contains("line 1"), "{e}");
    }
}
