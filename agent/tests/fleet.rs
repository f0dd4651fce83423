//! Past one machine: a process in a Kubernetes pod's cgroup carries the pod and the container
//! in JSON, on its exit record (also when it lived too briefly for any iterator pass) and in
//! the pod's metrics group; the OTLP export reaches a
//! receiver that decodes it with the OpenTelemetry project's generated types: over
//! http/protobuf the `opentelemetry-proto` package from PyPI (installed by `cargo xtask setup`),
//! over gRPC the `opentelemetry-proto` crate's tonic services. Needs root (BPF, cgroups).

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use common::{Agent, cgroup2_root, eventually, free_port, kill};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
};
use serde_json::Value;

/// A synthetic pod's container cgroup, as the kubelet's systemd driver and containerd name
/// them, under the cgroup v2 root; removed (with whatever is left in it moved out) on drop.
struct PodCgroup {
    uid: String,
    container_id: String,
    /// The directories made, outermost first.
    made: Vec<PathBuf>,
    scope: PathBuf,
}

impl PodCgroup {
    fn new() -> PodCgroup {
        let seed = (std::process::id() as u64 * 1_000_003)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64;
        let hex = format!("{seed:016x}");
        // 8-4-4-4-12 hex digits, as the API server writes a pod's uid.
        let uid = format!(
            "{}-{}-{}-4000-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[4..16]
        );
        let container_id = hex.repeat(4);
        let root = cgroup2_root();
        let mut dir = root.clone();
        let mut made = Vec::new();
        for part in [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        PodCgroup {
            uid,
            container_id,
            made,
            scope: dir,
        }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.scope.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let root = cgroup2_root();
        if let Ok(left) = std::fs::read_to_string(self.scope.join("cgroup.procs")) {
            for pid in left.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().expect("sleep")
}

fn pids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs, makes cgroups"]
fn a_process_in_a_pod_cgroup_carries_its_pod_and_container() {
    let pod = PodCgroup::new();
    let port = free_port();
    let receiver = GrpcReceiver::start(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = Agent::start_with_env(
        &[
            "--metrics-group-by",
            "pod",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
        ],
        &[("OTEL_BLRP_SCHEDULE_DELAY", "100")],
    );
    let mut outside = sleeper();
    let mut inside = sleeper();
    let pid = inside.id();
    pod.enter(pid);
    let me = eventually(10, "the pod uid in the process's JSON", || {
        let v = agent.json(&format!("/v1/processes/{pid}"));
        (v["pod_uid"] == pod.uid.as_str()).then_some(v)
    });
    assert_eq!(me["container_id"], pod.container_id.as_str());
    assert_eq!(me["container_runtime"], "containerd");
    assert!(
        me["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("cri-containerd-{}.scope", pod.container_id))),
        "{me}"
    );
    let there = agent.json(&format!("/v1/processes/{}", outside.id()));
    assert_eq!(there["pod_uid"], Value::Null);
    assert_eq!(there["container_id"], Value::Null);

    // The filters find it and only it (once the listing's snapshot, up to the staleness bound
    // old, has the move).
    for filter in [
        format!("pod_uid={}", pod.uid),
        format!("container_id={}", &pod.container_id[..12]),
        format!("container_id={}", pod.container_id),
    ] {
        eventually(10, &filter, || {
            let found = pids(&agent.json(&format!("/v1/processes?{filter}")));
            (!found.is_empty()).then(|| assert_eq!(found, [u64::from(pid)], "{filter}"))
        });
    }
    let (status, _) = agent.get("/v1/processes?container_id=abc");
    assert_eq!(status, 400, "a too-short id prefix is refused");

    // Grouped by pod: the pod's group has the one process; processes outside pods are not
    // grouped at all.
    let metrics = String::from_utf8(agent.get("/metrics").1).expect("UTF-8");
    let series = format!("bpfproc_group_processes{{group=\"{}\"}} 1", pod.uid);
    assert!(
        metrics.lines().any(|l| l == series),
        "no {series} in\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("bpfproc_group_processes"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!metrics.contains("bpfproc_group_processes{group=\"sleep\"}"));

    // Its exit record keeps the pod and the container.
    kill(pid, 15);
    inside.wait().expect("wait");
    let gone = eventually(10, "the exit in /v1/exited", || {
        agent
            .json(&format!("/v1/exited?pod_uid={}", pod.uid))
            .as_array()?
            .iter()
            .find(|p| p["pid"] == pid)
            .cloned()
    });
    assert_eq!(gone["signal"], 15);
    assert_eq!(gone["container_id"], pod.container_id.as_str());
    kill(outside.id(), 9);
    outside.wait().expect("wait");

    // Processes forked inside the pod that exit at once (subshells: a fork and an exit, no
    // exec), gone long before an iterator pass could read their cgroup: their exit records
    // carry the pod and the container all the same, in JSON and over OTLP.
    let mut forker = Command::new("sh")
        .args([
            "-c",
            "read go; for i in 1 2 3 4 5 6 7 8; do (exit 3); done; read done",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh");
    let parent = forker.id();
    pod.enter(parent);
    let mut stdin = forker.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    let children = eventually(10, "the subshells' exits in /v1/exited", || {
        let mine: Vec<Value> = agent
            .json("/v1/exited")
            .as_array()?
            .iter()
            .filter(|p| p["ppid"] == parent && p["exit_code"] == 3)
            .cloned()
            .collect();
        (mine.len() == 8).then_some(mine)
    });
    for c in &children {
        assert_eq!(c["pod_uid"], pod.uid.as_str(), "{c}");
        assert_eq!(c["container_id"], pod.container_id.as_str(), "{c}");
        assert_eq!(c["container_runtime"], "containerd", "{c}");
    }
    let records = eventually(10, "the subshells' exit log records", || {
        let mine: Vec<_> = log_records(&receiver)
            .into_iter()
            .map(|(_, r)| attributes(&r["attributes"]))
            .filter(|a| {
                a.get("process.parent_pid") == Some(&parent.into())
                    && a.get("process.exit.code") == Some(&3.into())
            })
            .collect();
        (mine.len() == 8).then_some(mine)
    });
    for a in &records {
        assert_eq!(a["k8s.pod.uid"], pod.uid.as_str(), "{a:?}");
        assert_eq!(a["container.id"], pod.container_id.as_str(), "{a:?}");
    }
    stdin.write_all(b"done\n").expect("done");
    assert!(forker.wait().expect("wait").success());
}

/// An OTLP/HTTP receiver: every request to /v1/metrics or /v1/logs is decoded with the
/// generated protobuf classes and appended to a file as one JSON line
/// (`{"path": …, "request": MessageToDict(…)}`); anything it cannot decode is a 400.
const RECEIVER: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest, ExportMetricsServiceResponse

KINDS = {
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
}

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = KINDS.get(self.path)
        if kind is None or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        req = kind[0]()
        try:
            req.ParseFromString(body)
        except Exception as e:
            self.send_response(400)
            self.end_headers()
            return
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps({"path": self.path, "request": MessageToDict(req)}) + "\n")
        out = kind[1]().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// An OTLP receiver: what it was sent, whatever the transport.
trait Collector {
    /// Every request received so far, as (`/v1/metrics` or `/v1/logs`, the request as OTLP/JSON).
    fn requests(&self) -> Vec<(String, Value)>;
}

struct HttpReceiver {
    child: Child,
    file: PathBuf,
}

impl HttpReceiver {
    fn start(port: u16, dir: &Path) -> HttpReceiver {
        let file = dir.join(format!("otlp-{port}.jsonl"));
        let _ = std::fs::remove_file(&file);
        let child = Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .arg(&file)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 (and opentelemetry-proto: cargo xtask setup)");
        eventually(30, "the OTLP receiver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        HttpReceiver { child, file }
    }
}

impl Collector for HttpReceiver {
    fn requests(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                (
                    v["path"].as_str().unwrap_or("").to_owned(),
                    v["request"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OTLP/gRPC receiver: the collector's MetricsService and LogsService on a tonic server of
/// the test's own, each request kept as the generated type's OTLP/JSON.
struct GrpcReceiver {
    got: Sink,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's; dropped after the stop is sent.
    _rt: tokio::runtime::Runtime,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<(String, Value)>>>);

impl Sink {
    fn keep(&self, path: &str, request: &impl serde::Serialize) -> Result<(), tonic::Status> {
        let v =
            serde_json::to_value(request).map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.to_owned(), v));
        Ok(())
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.keep("/v1/metrics", request.get_ref())?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.keep("/v1/logs", request.get_ref())?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl GrpcReceiver {
    fn start(port: u16) -> GrpcReceiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let got = Sink::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(got.clone()))
            .add_service(LogsServiceServer::new(got.clone()))
            .serve_with_shutdown(([127, 0, 0, 1], port).into(), async {
                let _ = stopped.await;
            });
        rt.spawn(async move {
            if let Err(e) = server.await {
                eprintln!("gRPC receiver: {e}");
            }
        });
        eventually(30, "the OTLP gRPC receiver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        GrpcReceiver {
            got,
            stop: Some(stop),
            _rt: rt,
        }
    }
}

impl Collector for GrpcReceiver {
    fn requests(&self) -> Vec<(String, Value)> {
        self.got.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// OTLP attributes (`[{key, value: {stringValue|intValue|…}}]`) as a map of JSON values, ints
/// as numbers.
fn attributes(list: &Value) -> serde_json::Map<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let v = &kv["value"];
            let value = if let Some(i) = v["intValue"].as_str() {
                Value::from(i.parse::<i64>().ok()?)
            } else if let Some(list) = v["arrayValue"]["values"].as_array() {
                Value::from(
                    list.iter()
                        .map(|x| x["stringValue"].clone())
                        .collect::<Vec<_>>(),
                )
            } else {
                v.as_object()?.values().next()?.clone()
            };
            Some((kv["key"].as_str()?.to_owned(), value))
        })
        .collect()
}

/// Every log record received: (resource attributes, record).
fn log_records(r: &dyn Collector) -> Vec<(serde_json::Map<String, Value>, Value)> {
    let mut out = Vec::new();
    for (path, req) in r.requests() {
        if path != "/v1/logs" {
            continue;
        }
        for rl in req["resourceLogs"].as_array().into_iter().flatten() {
            let res = attributes(&rl["resource"]["attributes"]);
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for rec in sl["logRecords"].as_array().into_iter().flatten() {
                    out.push((res.clone(), rec.clone()));
                }
            }
        }
    }
    out
}

/// The data points of metric `name` in the latest metrics request that has it, with the
/// request's resource attributes.
fn latest_points(
    r: &dyn Collector,
    name: &str,
) -> Option<(serde_json::Map<String, Value>, Vec<Value>)> {
    r.requests().into_iter().rev().find_map(|(path, req)| {
        if path != "/v1/metrics" {
            return None;
        }
        for rm in req["resourceMetrics"].as_array().into_iter().flatten() {
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    if m["name"] == name {
                        let data = m["sum"]
                            .get("dataPoints")
                            .or(m["gauge"].get("dataPoints"))?;
                        return Some((
                            attributes(&rm["resource"]["attributes"]),
                            data.as_array()?.clone(),
                        ));
                    }
                }
            }
        }
        None
    })
}

fn point_value(p: &Value) -> f64 {
    p["asDouble"]
        .as_f64()
        .or_else(|| p["asInt"].as_str()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn scrape_value(agent: &Agent, series: &str) -> f64 {
    let text = String::from_utf8(agent.get("/metrics").1).expect("UTF-8");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in the scrape"))
}

/// A copy of /bin/sh under a name of its own, so its processes make a group of their own.
fn renamed_sh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/sh", &path).expect("copy sh");
    path
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn otlp_export_delivers_group_metrics_and_exit_records_and_resumes_after_an_outage() {
    // The flag overrides the standard variable, which alone would have chosen gRPC.
    exports_metrics_and_exits_and_resumes(
        "bpfotlp7http",
        &["--otlp-protocol", "http/protobuf"],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
        |port, dir| Box::new(HttpReceiver::start(port, dir)),
    );
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn otlp_grpc_export_delivers_group_metrics_and_exit_records_and_resumes_after_an_outage() {
    exports_metrics_and_exits_and_resumes(
        "bpfotlp7grpc",
        &[],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
        |port, _| Box::new(GrpcReceiver::start(port)),
    );
}

/// The agent exports to a collector on `port` that is not there yet; the failed export is
/// counted, then `collector` comes up there and gets the metrics and the exit record of a
/// process named `name` (its own group: the tests run side by side, and each agent sees the
/// other's processes) that exited with code 7.
fn exports_metrics_and_exits_and_resumes(
    name: &str,
    flags: &[&str],
    env: &[(&str, &str)],
    collector: impl FnOnce(u16, &Path) -> Box<dyn Collector>,
) {
    let dir = std::env::temp_dir().join(format!("bpfproc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut args = vec!["--otlp-endpoint", &endpoint];
    args.extend_from_slice(flags);
    let mut vars = vec![
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
    ];
    vars.extend_from_slice(env);
    let agent = Agent::start_with_env(&args, &vars);
    // Nothing listens yet: the exit's record is dropped and counted, and the agent goes on.
    let early = Command::new("sh")
        .args(["-c", "exit 3"])
        .status()
        .expect("sh");
    assert_eq!(early.code(), Some(3));
    eventually(30, "a failed export to be counted", || {
        (scrape_value(
            &agent,
            "bpfproc_otlp_log_records_dropped_total{cause=\"export_failed\"}",
        ) >= 1.0)
            .then_some(())
    });
    assert_eq!(agent.get("/healthz").0, 200);

    // The collector comes up: export resumes.
    let receiver = collector(port, &dir);
    let receiver = &*receiver;
    let burner = renamed_sh(&dir, name);
    let mut child = Command::new(&burner)
        .args([
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exit 7",
        ])
        .spawn()
        .expect("burner");
    let pid = child.id();
    assert_eq!(child.wait().expect("wait").code(), Some(7));

    let (resource, rec) = eventually(30, "the exit's log record", || {
        log_records(receiver)
            .into_iter()
            .find(|(_, r)| attributes(&r["attributes"]).get("process.pid") == Some(&pid.into()))
    });
    assert_eq!(rec["eventName"], "process.exit");
    let a = attributes(&rec["attributes"]);
    assert_eq!(a["process.exit.code"], 7, "{rec}");
    assert_eq!(a["process.parent_pid"], std::process::id(), "{rec}");
    assert_eq!(a["process.executable.name"], name);
    assert_eq!(
        a["process.executable.path"],
        burner.to_str().expect("utf-8")
    );
    assert_eq!(a["process.command_args"][1], "-c", "{rec}");
    assert_eq!(a["process.owner"], "root");
    for t in ["process.creation.time", "process.exit.time"] {
        assert!(
            a[t].as_str()
                .is_some_and(|s| s.len() == 24 && s.ends_with('Z')),
            "{t}: {rec}"
        );
    }
    assert!(a["process.creation.time"].as_str() <= a["process.exit.time"].as_str());
    assert!(!a.contains_key("process.exit.signal"));
    assert!(!a.contains_key("k8s.pod.uid"), "not in a pod: {rec}");
    assert!(rec["timeUnixNano"].as_str().is_some_and(|t| t != "0"));
    assert_eq!(resource["service.name"], "bpfproc");
    assert_eq!(resource["deployment.environment.name"], "test");
    assert!(resource["service.version"].is_string());
    assert!(
        resource["host.name"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    // The group's metrics include the CPU of a member that exited between two exports.
    let mine = |points: Vec<Value>| -> Vec<Value> {
        points
            .into_iter()
            .filter(|p| attributes(&p["attributes"]).get("bpfproc.group") == Some(&name.into()))
            .collect()
    };
    // Exports keep arriving while the test reads them: the exit and the CPU are looked for
    // in the newest export each time round.
    let (res, cpu) = eventually(30, "the group's exit and its CPU time in an export", || {
        let (_, exits) = latest_points(receiver, "bpfproc.group.process.exits")?;
        (mine(exits).iter().map(point_value).sum::<f64>() == 1.0).then_some(())?;
        let (res, points) = latest_points(receiver, "process.cpu.time")?;
        let cpu = mine(points);
        (!cpu.is_empty()).then_some((res, cpu))
    });
    assert_eq!(res["service.name"], "bpfproc");
    let mut modes: Vec<String> = cpu
        .iter()
        .map(|p| attributes(&p["attributes"])["cpu.mode"].to_string())
        .collect();
    modes.sort();
    assert_eq!(modes, ["\"system\"", "\"user\""], "{cpu:?}");
    let total: f64 = cpu.iter().map(point_value).sum();
    assert!(total > 0.0, "the loop's CPU time is missing: {cpu:?}");
    for name in [
        "process.memory.usage",
        "process.memory.virtual",
        "process.thread.count",
        "bpfproc.group.process.count",
        "bpfproc.group.process.starts",
        "bpfproc.process.exits",
        "bpfproc.otlp.log_records.dropped",
    ] {
        assert!(
            latest_points(receiver, name).is_some(),
            "{name} not exported"
        );
    }
    // The agent's own group has a live process with memory.
    let (_, mem) = latest_points(receiver, "process.memory.usage").expect("memory");
    assert!(mem.iter().any(|p| {
        attributes(&p["attributes"]).get("bpfproc.group") == Some(&"bpfproc".into())
            && point_value(p) > 0.0
    }));
    assert!(scrape_value(&agent, "bpfproc_otlp_log_records_exported_total") >= 1.0);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
