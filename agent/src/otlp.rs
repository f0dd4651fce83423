//! OTLP export: the group metrics under the OpenTelemetry process semantic conventions' names,
//! and one log record per exit (and per exec, when asked), through the OpenTelemetry SDK and its
//! OTLP exporters (http/protobuf or gRPC, each signal its own). Owns the export's counters, which
//! `/metrics` reads.
//!
//! Nothing here can block the agent. Metrics are observed by the SDK's own reader thread, which
//! asks the actor for the group report as a scrape does (the same ledger, so the same cardinality
//! bound and the CPU of members that exited between two exports). Log records go from the
//! table's event broadcast through a bounded queue to an export thread of our own: a full queue,
//! a subscriber that fell behind the broadcast and a failed export each count their records as
//! dropped, and the next export tries again, so an endpoint that comes back resumes the flow.
//!
//! gRPC's client (tonic) needs a tokio runtime for its connections: it gets one of its own, with
//! one worker thread, so a slow or absent collector never takes a turn on the agent's runtime.
//! The export threads above stay plain threads; they only wait on that runtime's channel.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use opentelemetry::{
    InstrumentationScope, Key, KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
    metrics::{Meter, MeterProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord, SdkLoggerProvider},
    metrics::{PeriodicReader, SdkMeterProvider},
};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    groups::GroupReport,
    state::{AgentStats, State},
    table::{Change, Process},
    view::Host,
};

/// What `--otlp-*` and `[otlp]` say.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The collector's base URL (`http://host:4318`, or `http://host:4317` for gRPC); `None`: the
    /// standard `OTEL_EXPORTER_OTLP_*` variables say where, or export is off.
    pub endpoint: Option<String>,
    /// The transport of both signals; `None`: the standard `OTEL_EXPORTER_OTLP_*PROTOCOL`
    /// variables say, and http/protobuf when they do not.
    pub protocol: Option<Protocol>,
    /// A log record per exec as well as per exit.
    pub exec_events: bool,
    /// Log records waiting for export at most; more are dropped and counted.
    pub queue: usize,
    /// The attribute the group name goes in besides `bpfproc.group`: `k8s.pod.uid` when groups
    /// are pods, `container.id` when they are containers.
    pub group_attribute: Option<&'static str>,
}

/// Whether export is on: an endpoint given, or one of the standard variables set.
pub fn enabled(cfg: &Config) -> bool {
    cfg.endpoint.is_some()
        || [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error(
        "{var}={value}: this build exports over http/protobuf or grpc (http/json is not built in)"
    )]
    Protocol { var: &'static str, value: String },
    #[error("starting the OTLP export thread: {0}")]
    Thread(std::io::Error),
    #[error("starting the runtime of the OTLP gRPC client: {0}")]
    Runtime(std::io::Error),
}

/// How a signal travels to the collector, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Protobuf in HTTP POSTs to `/v1/metrics` and `/v1/logs` (the collector's port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// The collector's gRPC services (its port 4317).
    Grpc,
}

impl Protocol {
    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` and `--otlp-protocol` use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        [Protocol::HttpProtobuf, Protocol::Grpc]
            .into_iter()
            .find(|p| p.name() == s.trim())
    }

    /// The port an OpenTelemetry Collector's OTLP receiver listens on for this protocol.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::HttpProtobuf => 4318,
            Protocol::Grpc => 4317,
        }
    }
}

/// One signal's standard variables.
struct Signal {
    /// The URL path appended to a base endpoint over http/protobuf.
    path: &'static str,
    protocol_var: &'static str,
    endpoint_var: &'static str,
}

const METRICS: Signal = Signal {
    path: "v1/metrics",
    protocol_var: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    endpoint_var: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
};
const LOGS: Signal = Signal {
    path: "v1/logs",
    protocol_var: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    endpoint_var: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
};

/// A signal's protocol: the flag (or config file) for both signals, else the signal's own
/// variable, else the general one, else http/protobuf (the specification's default). A value
/// this build cannot speak stops the start rather than sending nothing.
fn protocol_of(
    configured: Option<Protocol>,
    signal: &Signal,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Protocol, OtlpError> {
    if let Some(p) = configured {
        return Ok(p);
    }
    for var in [signal.protocol_var, "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(value) = env(var).filter(|v| !v.trim().is_empty()) {
            return Protocol::parse(&value).ok_or(OtlpError::Protocol { var, value });
        }
    }
    Ok(Protocol::HttpProtobuf)
}

/// Why a signal's endpoint looks meant for the other protocol: a Collector answers gRPC on
/// 4317 and HTTP on 4318, and the failure the wrong one gives (a protocol error per export,
/// counted as dropped) does not say so.
fn port_mismatch(protocol: Protocol, url: &str) -> Option<String> {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    let port: u16 = authority.rsplit_once(':')?.1.parse().ok()?;
    let other = match protocol {
        Protocol::HttpProtobuf => Protocol::Grpc,
        Protocol::Grpc => Protocol::HttpProtobuf,
    };
    (port == other.default_port()).then(|| {
        format!(
            "OTLP endpoint {url} has the {} port ({port}) but the protocol is {} (port {})",
            other.name(),
            protocol.name(),
            protocol.default_port()
        )
    })
}

/// The tokio runtime tonic's channels live on: built only when a signal uses gRPC, and shut
/// down without waiting when the export is dropped (the providers have flushed by then).
struct GrpcRuntime(Option<tokio::runtime::Runtime>);

impl GrpcRuntime {
    fn start() -> Result<GrpcRuntime, OtlpError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bpfproc-otlp-grpc")
            .enable_all()
            .build()
            .map(|rt| GrpcRuntime(Some(rt)))
            .map_err(OtlpError::Runtime)
    }
}

impl Drop for GrpcRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // A plain drop waits for the worker thread, and panics where waiting is not
            // allowed: on the agent's runtime, where an error path may drop the export.
            rt.shutdown_background();
        }
    }
}

/// The export's own counters: what `/metrics` shows as `bpfproc_otlp_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub exported: u64,
    /// The queue was full.
    pub dropped_queue_full: u64,
    /// The broadcast of table changes moved on before the exporter read them.
    pub dropped_lagged: u64,
    /// The collector refused them or could not be reached.
    pub dropped_export_failed: u64,
}

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_LAGGED: AtomicU64 = AtomicU64::new(0);
static DROPPED_FAILED: AtomicU64 = AtomicU64::new(0);

/// The log-record counters since the agent started (zero while export is off).
pub fn stats() -> Stats {
    Stats {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped_queue_full: DROPPED_FULL.load(Ordering::Relaxed),
        dropped_lagged: DROPPED_LAGGED.load(Ordering::Relaxed),
        dropped_export_failed: DROPPED_FAILED.load(Ordering::Relaxed),
    }
}

/// A running export; `shutdown` flushes what is queued.
pub struct Otlp {
    meters: SdkMeterProvider,
    loggers: SdkLoggerProvider,
    events: tokio::task::JoinHandle<()>,
    /// After the providers: their last exports run on it.
    _grpc: Option<GrpcRuntime>,
}

/// A metric or log exporter builder (`MetricExporter::builder()`, …) built for `protocol`, to
/// `url` or where the variables say. The http/protobuf one is told its protocol, or the SDK
/// would read `OTEL_EXPORTER_OTLP_PROTOCOL` again and refuse a flag that overrides it.
macro_rules! exporter {
    ($builder:expr, $protocol:expr, $url:expr) => {{
        use opentelemetry_otlp::WithExportConfig as _;
        match ($protocol, $url) {
            (Protocol::HttpProtobuf, url) => {
                let b = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match url {
                    Some(u) => b.with_endpoint(u).build(),
                    None => b.build(),
                }
            }
            (Protocol::Grpc, Some(u)) => $builder.with_tonic().with_endpoint(u).build(),
            (Protocol::Grpc, None) => $builder.with_tonic().build(),
        }
    }};
}

/// Starts the export: the meter provider with its periodic reader, the logger provider with
/// the bounded queue, and the task that turns table changes into log records. Call from a
/// blocking context (the HTTP client of the exporter runs its own runtime).
pub fn start(
    cfg: &Config,
    state: State,
    host: Host,
    rt: tokio::runtime::Handle,
) -> Result<Otlp, OtlpError> {
    let env = |v: &str| std::env::var(v).ok();
    let metrics_protocol = protocol_of(cfg.protocol, &METRICS, env)?;
    let logs_protocol = protocol_of(cfg.protocol, &LOGS, env)?;
    let grpc = [metrics_protocol, logs_protocol]
        .contains(&Protocol::Grpc)
        .then(GrpcRuntime::start)
        .transpose()?;
    // A gRPC endpoint is the collector's address alone (the service names the method); an
    // http/protobuf one gets the signal's path. `None`: the SDK reads the variables, with the
    // same rule.
    let endpoint = |protocol: Protocol, signal: &Signal| {
        cfg.endpoint.as_ref().map(|base| {
            let base = base.trim_end_matches('/');
            match protocol {
                Protocol::HttpProtobuf => format!("{base}/{}", signal.path),
                Protocol::Grpc => base.to_owned(),
            }
        })
    };
    let metrics_url = endpoint(metrics_protocol, &METRICS);
    let logs_url = endpoint(logs_protocol, &LOGS);
    let mut mismatches: Vec<String> = [(metrics_protocol, &METRICS), (logs_protocol, &LOGS)]
        .into_iter()
        .filter_map(|(protocol, signal)| {
            let url = cfg
                .endpoint
                .clone()
                .or_else(|| env(signal.endpoint_var))
                .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
            port_mismatch(protocol, &url)
        })
        .collect();
    // Both signals usually share the endpoint: one warning for it.
    mismatches.dedup();
    for m in mismatches {
        tracing::warn!("{m}");
    }
    let (metrics, exporter) = {
        // tonic's lazy channel starts its connection task on the runtime current at build.
        let _in_grpc = grpc
            .as_ref()
            .and_then(|g| g.0.as_ref())
            .map(|rt| rt.enter());
        (
            exporter!(
                opentelemetry_otlp::MetricExporter::builder(),
                metrics_protocol,
                metrics_url
            )?,
            exporter!(
                opentelemetry_otlp::LogExporter::builder(),
                logs_protocol,
                logs_url
            )?,
        )
    };
    let resource = resource();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics).build())
        .with_resource(resource.clone())
        .build();
    register(
        &meters.meter("bpfproc"),
        Arc::new(Source {
            state: state.clone(),
            rt: rt.clone(),
            latest: Mutex::new(None),
        }),
        cfg.group_attribute,
    );
    let queue = Arc::new(Queue::new(cfg.queue.max(1)));
    let processor = Batcher {
        queue: queue.clone(),
        exporter: Mutex::new(Some(exporter)),
        thread: Mutex::new(None),
    };
    let loggers = SdkLoggerProvider::builder()
        .with_log_processor(processor)
        .with_resource(resource)
        .build();
    let logger = loggers.logger("bpfproc");
    let exec_events = cfg.exec_events;
    let mut rx = state.subscribe();
    let events = rt.spawn(async move {
        loop {
            match rx.recv().await {
                Ok(change) => {
                    let (name, p) = match &*change {
                        Change::Exit(p) => ("process.exit", p),
                        Change::Exec(p) if exec_events => ("process.exec", p),
                        _ => continue,
                    };
                    let mut rec = logger.create_log_record();
                    fill(&mut rec, name, p, &host);
                    logger.emit(rec);
                }
                Err(RecvError::Lagged(n)) => {
                    DROPPED_LAGGED.fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    tracing::info!(
        metrics = metrics_protocol.name(),
        logs = logs_protocol.name(),
        "OTLP protocols"
    );
    Ok(Otlp {
        meters,
        loggers,
        events,
        _grpc: grpc,
    })
}

impl Otlp {
    /// Stops the event task and flushes both providers (a last export of each). Blocking.
    pub fn shutdown(self) {
        self.events.abort();
        if let Err(e) = self.loggers.shutdown() {
            tracing::warn!("OTLP logs at shutdown: {e}");
        }
        if let Err(e) = self.meters.shutdown() {
            tracing::warn!("OTLP metrics at shutdown: {e}");
        }
    }
}

/// The SDK's resource (its detectors read `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`),
/// with `service.name`, `service.version` and `host.name` filled in where they did not say.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let has = |k: &'static str| detected.get(&Key::from_static_str(k)).is_some();
    let mut b = Resource::builder();
    let service = detected.get(&Key::from_static_str("service.name"));
    if service.is_none_or(|s| s.as_str().starts_with("unknown_service")) {
        b = b.with_service_name("bpfproc");
    }
    if !has("service.version") {
        b = b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    if !has("host.name")
        && let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname")
    {
        b = b.with_attribute(KeyValue::new("host.name", name.trim().to_owned()));
    }
    b.build()
}

/// The group report and the agent's counters, as of the last collection: every instrument's
/// callback of one collection reads the same numbers, fetched once.
struct Source {
    state: State,
    rt: tokio::runtime::Handle,
    latest: Mutex<Option<(Instant, Arc<Readings>)>>,
}

struct Readings {
    groups: GroupReport,
    stats: AgentStats,
}

impl Source {
    /// The readings of this collection, fetched anew by the first instrument's callback
    /// (`fresh`; the SDK calls them in the order they were registered) and reused by the
    /// others. A time limit alone let one collection straddle two readings: an exit counted
    /// with the CPU time of the reading before it. Called on the SDK's reader thread, never on
    /// the agent's runtime: it waits for the actor.
    fn get(&self, fresh: bool) -> Option<Arc<Readings>> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, r)) = &*latest
            && !fresh
            && at.elapsed() < Duration::from_secs(5)
        {
            return Some(r.clone());
        }
        let state = self.state.clone();
        let fetched = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                Some(Readings {
                    groups: state.groups().await.ok()?,
                    stats: state.stats().await.ok()?,
                })
            })
            .await
            .ok()
            .flatten()
        })?;
        let r = Arc::new(fetched);
        *latest = Some((Instant::now(), r.clone()));
        Some(r)
    }
}

/// Declares every instrument with its callback; the meter provider keeps them.
fn register(meter: &Meter, src: Arc<Source>, group_attribute: Option<&'static str>) {
    let attrs = move |name: &str| {
        let mut v = vec![KeyValue::new("bpfproc.group", name.to_owned())];
        if let Some(k) = group_attribute
            && name != crate::groups::OVERFLOW_GROUP
        {
            v.push(KeyValue::new(k, name.to_owned()));
        }
        v
    };
    let s = src.clone();
    meter
        .f64_observable_counter("process.cpu.time")
        .with_unit("s")
        .with_description(
            "CPU time of each group's processes, including those that exited, by cpu.mode",
        )
        .with_callback(move |o| {
            let Some(r) = s.get(true) else { return };
            for g in &r.groups.groups {
                for (mode, ns) in [("user", g.cpu.user), ("system", g.cpu.system)] {
                    let mut a = attrs(&g.name);
                    a.push(KeyValue::new("cpu.mode", mode));
                    o.observe(ns as f64 / 1e9, &a);
                }
            }
        })
        .build();
    type Field = fn(&crate::groups::GroupRow) -> u64;
    let gauges: [(&'static str, &'static str, &'static str, Field); 4] = [
        (
            "process.memory.usage",
            "By",
            "Resident memory of each group's live processes",
            |g| g.resident_bytes,
        ),
        (
            "process.memory.virtual",
            "By",
            "Virtual memory of each group's live processes",
            |g| g.virtual_bytes,
        ),
        (
            "process.thread.count",
            "{thread}",
            "Threads of each group's live processes",
            |g| g.threads,
        ),
        (
            "bpfproc.group.process.count",
            "{process}",
            "Live processes in each group (zombies excluded)",
            |g| g.processes,
        ),
    ];
    for (name, unit, help, field) in gauges {
        let s = src.clone();
        meter
            .i64_observable_up_down_counter(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |o| {
                let Some(r) = s.get(false) else { return };
                for g in &r.groups.groups {
                    o.observe(field(g) as i64, &attrs(&g.name));
                }
            })
            .build();
    }
    let counters: [(&'static str, &'static str, Field); 2] = [
        (
            "bpfproc.group.process.starts",
            "Processes that joined each group by fork or exec",
            |g| g.starts,
        ),
        (
            "bpfproc.group.process.exits",
            "Processes of each group that exited",
            |g| g.exits,
        ),
    ];
    for (name, help, field) in counters {
        let s = src.clone();
        meter
            .u64_observable_counter(name)
            .with_unit("{process}")
            .with_description(help)
            .with_callback(move |o| {
                let Some(r) = s.get(false) else { return };
                for g in &r.groups.groups {
                    o.observe(field(g), &attrs(&g.name));
                }
            })
            .build();
    }
    // Host-wide and the agent's health.
    type HostField = fn(&Readings) -> u64;
    let host: [(&'static str, &'static str, HostField); 4] = [
        (
            "bpfproc.process.forks",
            "Processes forked since the agent started",
            |r| r.stats.table.forks,
        ),
        (
            "bpfproc.process.execs",
            "Successful execs since the agent started",
            |r| r.stats.table.execs,
        ),
        (
            "bpfproc.process.exits",
            "Processes that exited since the agent started",
            |r| r.stats.table.exits,
        ),
        (
            "bpfproc.process.exits.nonzero",
            "Processes that exited with a non-zero code",
            |r| r.groups.exits.nonzero,
        ),
    ];
    for (name, help, field) in host {
        let s = src.clone();
        meter
            .u64_observable_counter(name)
            .with_unit("{process}")
            .with_description(help)
            .with_callback(move |o| {
                if let Some(r) = s.get(false) {
                    o.observe(field(&r), &[]);
                }
            })
            .build();
    }
    let s = src.clone();
    meter
        .i64_observable_up_down_counter("bpfproc.table.processes")
        .with_unit("{process}")
        .with_description("Live processes in the agent's table, kernel threads included")
        .with_callback(move |o| {
            if let Some(r) = s.get(false) {
                o.observe(r.stats.live_processes as i64, &[]);
            }
        })
        .build();
    let s = src;
    meter
        .u64_observable_counter("bpfproc.events.lost")
        .with_unit("{event}")
        .with_description(
            "Records or reads the kernel side could not deliver, by cause (a rescan follows)",
        )
        .with_callback(move |o| {
            if let Some(r) = s.get(false) {
                for (name, v) in &r.stats.kernel {
                    if crate::kernel::LOSS_CAUSES.contains(name) {
                        o.observe(*v, &[KeyValue::new("cause", *name)]);
                    }
                }
            }
        })
        .build();
    meter
        .u64_observable_counter("bpfproc.otlp.log_records.dropped")
        .with_unit("{record}")
        .with_description("Exit and exec log records not exported, by cause")
        .with_callback(|o| {
            let s = stats();
            for (cause, v) in [
                ("queue_full", s.dropped_queue_full),
                ("lagged", s.dropped_lagged),
                ("export_failed", s.dropped_export_failed),
            ] {
                o.observe(v, &[KeyValue::new("cause", cause)]);
            }
        })
        .build();
}

/// One exit or exec as an OTLP log record, with the process semantic conventions' attributes.
fn fill(rec: &mut SdkLogRecord, name: &'static str, p: &Process, host: &Host) {
    let at = |boot_ns: u64| {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(host.epoch_secs(boot_ns).max(0.0))
    };
    let ts = match name {
        "process.exit" => p.exit.map_or(p.event_ts, |e| e.ts),
        _ => p.exec_ts.unwrap_or(p.event_ts),
    };
    rec.set_event_name(name);
    rec.set_timestamp(at(ts));
    rec.set_observed_timestamp(SystemTime::now());
    rec.set_severity_number(Severity::Info);
    rec.set_severity_text("INFO");
    let comm = String::from_utf8_lossy(&p.name()).into_owned();
    let exe = p
        .exe
        .as_deref()
        .map(|e| String::from_utf8_lossy(e).into_owned());
    let exe_name = exe
        .as_deref()
        .and_then(|e| e.rsplit('/').next())
        .unwrap_or(&comm)
        .to_owned();
    let mut body = format!("{} {} {comm}", &name["process.".len()..], p.pid);
    rec.add_attribute("process.pid", i64::from(p.pid));
    rec.add_attribute("process.parent_pid", i64::from(p.ppid));
    rec.add_attribute("process.executable.name", exe_name);
    if let Some(exe) = exe {
        rec.add_attribute("process.executable.path", exe);
    }
    let args: Vec<AnyValue> = p
        .argv()
        .map(|a| AnyValue::from(String::from_utf8_lossy(a).into_owned()))
        .collect();
    if !args.is_empty() {
        rec.add_attribute("process.command_args", AnyValue::ListAny(Box::new(args)));
    }
    rec.add_attribute("process.owner", crate::sys::users::name_or_number(p.uid));
    rec.add_attribute("process.creation.time", iso8601(at(p.start_boottime)));
    if let Some(e) = p.exit {
        rec.add_attribute("process.exit.time", iso8601(at(e.ts)));
        if let Some(code) = e.exit_code() {
            rec.add_attribute("process.exit.code", i64::from(code));
            body.push_str(&format!(" code {code}"));
        }
        if let Some(sig) = e.signal() {
            rec.add_attribute("process.exit.signal", i64::from(sig));
            rec.add_attribute("process.exit.signal.name", crate::control::signal_name(sig));
            body.push_str(&format!(" signal {sig}"));
        }
        if e.core_dumped() {
            rec.add_attribute("process.exit.core_dumped", true);
        }
    }
    if let Some(c) =
        crate::sys::cgroup::path_of(p.cgroup_id()).and_then(|c| crate::sys::cgroup::container(&c))
    {
        if let Some(uid) = c.pod_uid {
            rec.add_attribute("k8s.pod.uid", uid);
        }
        if let Some(id) = c.container_id {
            rec.add_attribute("container.id", id);
        }
        if let Some(r) = c.runtime {
            rec.add_attribute("container.runtime.name", r.name());
        }
    }
    rec.set_body(AnyValue::from(body));
}

/// `2024-05-01T12:34:56.789Z`, as the semantic conventions write times in attributes.
fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The bounded queue between the event task and the export thread.
struct Queue {
    records: Mutex<VecDeque<(SdkLogRecord, InstrumentationScope)>>,
    ready: Condvar,
    cap: usize,
    stop: AtomicBool,
}

impl Queue {
    fn new(cap: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            cap,
            stop: AtomicBool::new(false),
        }
    }
}

/// The SDK's log processor for our queue: `emit` never waits (a full queue drops the record and
/// counts it), and one thread exports batches of up to `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`
/// every `OTEL_BLRP_SCHEDULE_DELAY`, or sooner when a batch is full.
#[derive(Debug)]
struct Batcher {
    queue: Arc<Queue>,
    /// Until `set_resource` starts the thread that owns it.
    exporter: Mutex<Option<opentelemetry_otlp::LogExporter>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("cap", &self.cap).finish()
    }
}

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl LogProcessor for Batcher {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let mut q = self.queue.records.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.queue.cap {
            DROPPED_FULL.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back((record.clone(), scope.clone()));
        self.queue.ready.notify_one();
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.ready.notify_one();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.queue.stop.store(true, Ordering::Release);
        self.queue.ready.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        let Some(mut exporter) = self
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        exporter.set_resource(resource);
        let queue = self.queue.clone();
        let delay = Duration::from_millis(env_number("OTEL_BLRP_SCHEDULE_DELAY", 1000));
        let batch = env_number("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize;
        match std::thread::Builder::new()
            .name("bpfproc-otlp-logs".into())
            .spawn(move || export_loop(&queue, &exporter, delay, batch))
        {
            Ok(t) => *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
            Err(e) => tracing::warn!("{}", OtlpError::Thread(e)),
        }
    }
}

fn export_loop(
    queue: &Queue,
    exporter: &opentelemetry_otlp::LogExporter,
    delay: Duration,
    batch: usize,
) {
    let mut last = Instant::now();
    loop {
        let stopping = queue.stop.load(Ordering::Acquire);
        let taken: Vec<_> = {
            let mut q = queue.records.lock().unwrap_or_else(|e| e.into_inner());
            if !stopping && q.len() < batch && last.elapsed() < delay {
                let wait = delay.saturating_sub(last.elapsed());
                q = queue
                    .ready
                    .wait_timeout(q, wait)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
                if !queue.stop.load(Ordering::Acquire) && q.len() < batch && last.elapsed() < delay
                {
                    continue;
                }
            }
            let n = q.len().min(batch);
            q.drain(..n).collect()
        };
        last = Instant::now();
        if !taken.is_empty() {
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                taken.iter().map(|(r, s)| (r, s)).collect();
            let n = taken.len() as u64;
            match futures_executor::block_on(exporter.export(LogBatch::new(&refs))) {
                Ok(()) => EXPORTED.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!("OTLP log export: {e}");
                    DROPPED_FAILED.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        if stopping
            && queue
                .records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            let _ = exporter.shutdown();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso8601_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_566_896_789);
        assert_eq!(iso8601(t), "2024-05-01T12:34:56.789Z");
        assert_eq!(iso8601(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(iso8601(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_signal_takes_the_flag_then_its_own_variable_then_the_general_one() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |v: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, x)| x.to_string())
            }
        };
        let none = env(&[]);
        assert_eq!(
            protocol_of(None, &METRICS, none).ok(),
            Some(Protocol::HttpProtobuf)
        );
        let general = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(protocol_of(None, &LOGS, general).ok(), Some(Protocol::Grpc));
        assert_eq!(
            protocol_of(Some(Protocol::HttpProtobuf), &LOGS, general).ok(),
            Some(Protocol::HttpProtobuf),
            "the flag overrides the variables"
        );
        let split = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(
            protocol_of(None, &METRICS, split).ok(),
            Some(Protocol::HttpProtobuf)
        );
        assert_eq!(protocol_of(None, &LOGS, split).ok(), Some(Protocol::Grpc));
        let json = env(&[("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/json")]);
        let e = protocol_of(None, &LOGS, json).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL=http/json")),
            "{e:?}"
        );
        assert_eq!(
            protocol_of(None, &METRICS, json).ok(),
            Some(Protocol::HttpProtobuf),
            "another signal's variable is not read"
        );
    }

    #[test]
    fn the_other_protocols_port_is_named() {
        assert!(port_mismatch(Protocol::Grpc, "http://collector:4318").is_some());
        assert!(port_mismatch(Protocol::Grpc, "http://collector:4318/").is_some());
        assert!(port_mismatch(Protocol::HttpProtobuf, "http://[::1]:4317/v1/logs").is_some());
        assert_eq!(port_mismatch(Protocol::Grpc, "http://collector:4317"), None);
        assert_eq!(port_mismatch(Protocol::HttpProtobuf, "http://c:4318"), None);
        assert_eq!(port_mismatch(Protocol::Grpc, "http://collector"), None);
        assert_eq!(port_mismatch(Protocol::Grpc, "http://[::1]"), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let queue = Arc::new(Queue::new(2));
        let b = Batcher {
            queue: queue.clone(),
            exporter: Mutex::new(None),
            thread: Mutex::new(None),
        };
        let provider = SdkLoggerProvider::builder().build();
        let logger = provider.logger("t");
        let scope = InstrumentationScope::builder("t").build();
        let before = stats().dropped_queue_full;
        for _ in 0..5 {
            let mut rec = logger.create_log_record();
            b.emit(&mut rec, &scope);
        }
        assert_eq!(queue.records.lock().unwrap().len(), 2);
        assert!(stats().dropped_queue_full >= before + 3);
    }
}
