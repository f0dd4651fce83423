//! `/metrics` against the real kernel, `promtool`, and a real Prometheus scraping a real agent:
//! every dashboard query and recording rule must return data, every metric an alert names must
//! be in the scrape. Needs root (BPF) and Debian's `prometheus` package (`cargo xtask setup`).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, eventually, kill};
use serde_json::Value;

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: install Debian's `prometheus` package (cargo xtask setup does)"
    );
    path
}

fn scrape(agent: &Agent) -> String {
    let (status, body) = agent.get("/metrics");
    assert_eq!(status, 200);
    String::from_utf8(body).expect("UTF-8 exposition")
}

/// `name{labels} value` lines → value by (name, sorted labels as written).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("{series} not in the scrape"))
}

/// A copy of `bin` named `name` in a temp dir, so its processes have a comm of their own.
fn renamed(bin: &str, name: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new("bpfproc-metrics");
    let path = dir.path().join(name);
    std::fs::copy(bin, &path).expect("copy binary");
    (dir, path)
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "{prefix}-{}-{:?}",
                std::process::id(),
                std::time::Instant::now()
            ));
            let p = PathBuf::from(p.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn run(cmd: &mut Command) -> std::process::ExitStatus {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run")
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn promtool_accepts_the_exposition_without_warnings() {
    let agent = Agent::start_with(&["--metrics-per-pid"]);
    // Some exits of every kind, so the labelled families have series.
    run(&mut Command::new("false"));
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(100));
    kill(sleeper.id(), 9);
    sleeper.wait().expect("wait");
    let text = eventually(10, "the SIGKILL in the scrape", || {
        let t = scrape(&agent);
        t.contains("bpfproc_exits_signaled_total{signal=\"SIGKILL\"}")
            .then_some(t)
    });
    // The process map is sized from the host by default: one entry per thread it allows.
    let threads_max: f64 = std::fs::read_to_string("/proc/sys/kernel/threads-max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        value(&samples(&text), "bpfproc_process_map_capacity"),
        threads_max.clamp(65_536.0, 4_194_304.0)
    );
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {said}");
    assert!(said.trim().is_empty(), "promtool warnings: {said}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("bpfproc_"), "unprefixed series {line}");
    }
    for family in [
        "bpfproc_processes",
        "bpfproc_forks_total",
        "bpfproc_events_lost_total",
        "bpfproc_group_cpu_seconds_total",
        "bpfproc_pid_cpu_seconds_total",
        "bpfproc_process_resident_memory_bytes",
        "bpfproc_ringbuf_used_bytes",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP"
        );
    }
    let s = samples(&text);
    assert!(value(&s, "bpfproc_exits_nonzero_total") >= 1.0);
    // The agent itself is in its own table, in its own group.
    assert!(value(&s, "bpfproc_group_processes{group=\"bpfproc\"}") >= 1.0);
    assert!(value(&s, "bpfproc_ringbuf_size_bytes") > 0.0);
    assert!(value(&s, "bpfproc_ringbuf_used_bytes") <= value(&s, "bpfproc_ringbuf_size_bytes"));
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn group_counters_include_processes_that_lived_between_two_scrapes() {
    let agent = Agent::start();
    let (_dir, burner) = renamed("/bin/sh", "bpfmburn");
    let (_dir2, quick) = renamed("/bin/true", "bpfmquick");
    let before = samples(&scrape(&agent));
    assert!(!before.contains_key("bpfproc_group_processes{group=\"bpfmburn\"}"));
    // Neither program is alive at any scrape: only exit records can account for them.
    let status = run(Command::new(&burner).args([
        "-c",
        "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exit 3",
    ]));
    assert_eq!(status.code(), Some(3));
    for _ in 0..20 {
        assert!(run(&mut Command::new(&quick)).success());
    }
    let after = eventually(10, "the exits in the scrape", || {
        let s = samples(&scrape(&agent));
        (s.get("bpfproc_group_exits_total{group=\"bpfmquick\"}") == Some(&20.0)).then_some(s)
    });
    let cpu = value(
        &after,
        "bpfproc_group_cpu_seconds_total{group=\"bpfmburn\",mode=\"user\"}",
    ) + value(
        &after,
        "bpfproc_group_cpu_seconds_total{group=\"bpfmburn\",mode=\"system\"}",
    );
    assert!(cpu >= 0.05, "the loop's CPU time is missing: {cpu}");
    assert_eq!(
        value(&after, "bpfproc_group_exits_total{group=\"bpfmburn\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "bpfproc_group_starts_total{group=\"bpfmquick\"}"),
        20.0
    );
    assert_eq!(
        value(&after, "bpfproc_group_processes{group=\"bpfmquick\"}"),
        0.0
    );
    assert!(
        value(&after, "bpfproc_exits_nonzero_total") >= 1.0,
        "exit 3 is a non-zero exit"
    );
    assert!(value(&after, "bpfproc_short_lived_exits_total") >= 20.0);
    // Host counters and group counters never go backwards between scrapes.
    for (series, v) in &before {
        if series.contains("_total") && !series.starts_with("bpfproc_process_") {
            let now = after.get(series).copied().unwrap_or(f64::NAN);
            assert!(now >= *v, "{series} went from {v} to {now}");
        }
    }
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn per_pid_series_are_off_by_default_and_capped_when_on() {
    let plain = Agent::start();
    assert!(!scrape(&plain).contains("bpfproc_pid_cpu_seconds_total"));
    assert!(!scrape(&plain).contains("bpfproc_pid_series_dropped_total"));
    drop(plain);
    let agent = Agent::start_with(&["--metrics-per-pid", "--metrics-per-pid-max", "3"]);
    let s = samples(&scrape(&agent));
    let pids: BTreeSet<&str> = s
        .keys()
        .filter(|k| k.starts_with("bpfproc_pid_cpu_seconds_total{"))
        .filter_map(|k| k.split("pid=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let live_users = value(&s, "bpfproc_table_processes");
    assert!(live_users > 3.0);
    assert!(value(&s, "bpfproc_pid_series_dropped_total") >= 1.0);
}

#[test]
fn a_bad_group_config_is_a_clear_start_up_error() {
    let dir = tempdir::Dir::new("bpfproc-badcfg");
    let cfg = dir.path().join("groups.yaml");
    std::fs::write(&cfg, "process_names:\n  - name: x\n    cmdline: ['(']\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_bpfproc"))
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--metrics-groups-config",
        ])
        .arg(&cfg)
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("process_names[0]") && err.contains("cmdline regex"),
        "{err}"
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let dir = dashboards().join("prometheus");
    for args in [
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules_test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `expr` of the Grafana dashboard, with Grafana's variables replaced as it would.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboards().join("grafana/bpfproc.json")).expect("read");
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1m")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unhandled variable in {expr}");
            out.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
        }
    }
    out
}

#[test]
fn the_dashboard_is_importable() {
    let text = std::fs::read_to_string(dashboards().join("grafana/bpfproc.json")).expect("read");
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a datasource variable"
    );
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate id");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "gridPos.{k} of {}", p["title"]);
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty());
        }
    }
    assert!(dashboard_queries().len() >= 20);
}

/// A Prometheus server of our own on a loopback port, with its config and data in a temp dir.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempdir::Dir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        Self::start_with(&scrape_config(target, "1s", ""), &[])
    }

    /// A server with this configuration file and these extra flags.
    fn start_with(config: &str, flags: &[&str]) -> Prometheus {
        let dir = tempdir::Dir::new("bpfproc-prom");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prom = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        eventually(30, "Prometheus to be ready", || {
            get(&prom.addr, "/-/ready").ok().filter(|(s, _)| *s == 200)
        });
        prom
    }

    fn query(&self, expr: &str) -> Value {
        let (status, body) = get(
            &self.addr,
            &format!("/api/v1/query?query={}", urlencode(expr)),
        )
        .expect("query");
        let v: Value = serde_json::from_slice(&body).expect("API JSON");
        assert_eq!(status, 200, "{expr}: {v}");
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].clone()
    }
}

/// Scrapes `target` every `interval` and evaluates the project's recording rules and alerts;
/// `extra` is appended (e.g. a `remote_write:` section).
fn scrape_config(target: &str, interval: &str, extra: &str) -> String {
    let rules = dashboards().join("prometheus/rules.yml");
    format!(
        "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: bpfproc\n    static_configs:\n      - targets: ['{target}']\n{extra}",
        rules.canonicalize().expect("rules.yml").display()
    )
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// HTTP/1.0, so the answer is never chunked.
fn get(addr: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = String::from_utf8_lossy(buf.get(9..12).unwrap_or(b"0"))
        .parse()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "unexpected chunked answer"
    );
    Ok((status, buf[end + 4..].to_vec()))
}

/// Metric names in a PromQL expression (`bpfproc_…` identifiers that are not label values).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r#""[^"]*"|\b(bpfproc_[a-z0-9_]+)\b"#).expect("regex");
    re.captures_iter(expr)
        .filter_map(|c| c.get(1).map(|m| m.as_str().to_owned()))
        .collect()
}

/// Work for the panels to show: short-lived processes, a failed exit, a death by signal.
fn workload() {
    for _ in 0..5 {
        run(&mut Command::new("true"));
    }
    run(&mut Command::new("false"));
    let mut s = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(50));
    kill(s.id(), 9);
    let _ = s.wait();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn real_prometheus_gets_data_for_every_dashboard_query_and_rule() {
    let agent = Agent::start();
    let prom = Prometheus::start(&agent.addr);
    // Wait for several scrapes and rule evaluations, with work between them.
    eventually(60, "Prometheus to scrape the agent", || {
        workload();
        let up = prom.query("up{job=\"bpfproc\"} == 1");
        let n = prom.query("count_over_time(bpfproc_forks_total[1m])");
        let samples = n
            .get(0)
            .and_then(|r| r["value"][1].as_str()?.parse::<u32>().ok())
            .unwrap_or(0);
        (up.as_array().is_some_and(|a| !a.is_empty()) && samples >= 6).then_some(())
    });
    eventually(30, "the recording rules to have been evaluated", || {
        workload();
        (!prom
            .query("instance:bpfproc_forks:rate1m")
            .as_array()?
            .is_empty())
        .then_some(())
    });

    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        if prom.query(&expr).as_array().is_none_or(|a| a.is_empty()) {
            empty.push(format!("panel {panel:?}: {expr}"));
        }
    }

    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dashboards().join("prometheus/rules.yml")).expect("rules"),
    )
    .expect("rules YAML");
    let scraped = scrape(&agent);
    let exposed: BTreeSet<&str> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut missing = Vec::new();
    let mut alerts = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            if let Some(record) = rule["record"].as_str() {
                for q in [record, expr] {
                    if prom.query(q).as_array().is_none_or(|a| a.is_empty()) {
                        empty.push(format!("recording rule {record}: {q}"));
                    }
                }
            } else {
                alerts += 1;
                let names = metric_names(expr);
                assert!(!names.is_empty(), "no metric in {expr}");
                for name in names {
                    // A histogram's series carry suffixes its TYPE line does not.
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|f| exposed.contains(f))
                        .unwrap_or(&name);
                    if !exposed.contains(family) {
                        missing.push(format!("{}: {name}", rule["alert"]));
                    }
                }
            }
        }
    }
    assert!(alerts >= 4);
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    assert!(
        missing.is_empty(),
        "alerts name metrics the agent does not export:\n{}",
        missing.join("\n")
    );
    // Prometheus itself evaluated every rule without error.
    let (_, body) = get(&prom.addr, "/api/v1/rules").expect("rules API");
    let v: Value = serde_json::from_slice(&body).expect("rules JSON");
    for g in v["data"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            assert_eq!(r["health"], "ok", "{}: {}", r["name"], r["lastError"]);
        }
    }
}

#[test]
fn metric_names_skips_label_values() {
    let names = metric_names(r#"sum(bpfproc_processes{state="bpfproc_fake"}) / bpfproc_x_total"#);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["bpfproc_processes", "bpfproc_x_total"]
    );
}

/// The fleet path: the node's Prometheus scrapes the agent and remote-writes to a central one
/// (started with its remote-write receiver, scraping nothing itself); on the central one every
/// dashboard query and recording rule returns data, labelled with the node's external labels.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_central_prometheus_gets_every_dashboard_series_by_remote_write() {
    let agent = Agent::start();
    let central = Prometheus::start_with(
        "global:\n  scrape_interval: 1m\n",
        &["--web.enable-remote-write-receiver"],
    );
    // A scrape of a busy host's table can take seconds: the interval (and so the timeout)
    // leaves room for it.
    let node = Prometheus::start_with(
        &scrape_config(
            &agent.addr,
            "3s",
            &format!(
                "remote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
                central.addr
            ),
        )
        .replace("global:\n", "global:\n  external_labels:\n    cluster: node-a\n"),
        &[],
    );
    eventually(120, "the node's samples on the central server", || {
        workload();
        let n = central.query("count_over_time(bpfproc_forks_total{cluster=\"node-a\"}[1m])");
        let samples = n
            .get(0)
            .and_then(|r| r["value"][1].as_str()?.parse::<u32>().ok())
            .unwrap_or(0);
        (samples >= 4).then_some(())
    });
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dashboards().join("prometheus/rules.yml")).expect("rules"),
    )
    .expect("rules YAML");
    let records: Vec<String> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect();
    assert!(!records.is_empty());
    let mut queries: Vec<(String, String)> = dashboard_queries();
    queries.extend(
        records
            .into_iter()
            .map(|r| (format!("recording rule {r}"), r)),
    );
    queries.push((
        "group CPU".into(),
        "bpfproc_group_cpu_seconds_total{cluster=\"node-a\",mode=\"user\"}".into(),
    ));
    // Rates and recording rules need a few samples each: wait, with work going on, until
    // every query has data or the deadline passes, then name the ones that never did.
    let mut empty: Vec<String>;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        workload();
        empty = queries
            .iter()
            .filter(|(_, q)| central.query(q).as_array().is_none_or(|a| a.is_empty()))
            .map(|(what, q)| format!("{what}: {q}"))
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        empty.is_empty(),
        "central queries without data:\n{}",
        empty.join("\n")
    );
    // Nothing reached the central server except through remote write.
    let up = central.query("up");
    assert!(
        up.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|s| s["metric"]["cluster"] == "node-a")),
        "{up}"
    );
    drop(node);
}
