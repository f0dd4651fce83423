//! Hostile HTTP input, as a property test driven by the project's OpenAPI document: every
//! path of `agent/src/http/openapi.json` with every method, its parameters replaced by odd values
//! (huge numbers, bad percent-encodings, NUL, traversal, very long strings), random queries,
//! bodies from empty to megabytes, oversized headers. Properties: every request gets an answer,
//! never a 5xx; an error with a body says what was wrong in JSON; the agent keeps serving in
//! bounded memory. Short form in the test run; `BPFPROC_STRESS=1` (`cargo xtask stress`) sends
//! 20 times more. Needs root (CI runs as root).

mod common;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use common::Agent;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

const VALUES: &[&str] = &[
    "1",
    "0",
    "-1",
    "4294967296",
    "99999999999999999999999999",
    "1e3",
    "0x10",
    "00001",
    "abc",
    "%00",
    "%ff%fe",
    "%",
    "%zz",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..",
    "é",
    "%C3%A9",
    "stat",
    "maps",
    "environ",
    "1;ls",
    "+",
    "%20",
    "\u{1F600}",
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

fn value(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "a".repeat(rng.below(20_000)),
        1 => format!("{}", rng.next()),
        _ => rng.pick(VALUES).to_string(),
    }
}

fn query(rng: &mut Rng) -> String {
    let keys = [
        "comm", "uid", "ppid", "pid", "cgroup", "colour", "", "%ff", "uid[]",
    ];
    let n = rng.below(4);
    if n == 0 {
        return String::new();
    }
    let parts: Vec<String> = (0..n)
        .map(|_| format!("{}={}", rng.pick(&keys), value(rng)))
        .collect();
    format!("?{}", parts.join("&"))
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Sends one raw request and reads the answer: the head, then the body by its length (an
/// event stream is left unread).
fn send(addr: &str, raw: &[u8]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    // The server may answer (413, 431) and close before the whole request is written.
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "connection closed without an answer after {} bytes",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let mut body = buf[head_end + 4..].to_vec();
    if content_type.starts_with("text/event-stream") {
        return Ok(Answer {
            status,
            content_type,
            body: Vec::new(),
        });
    }
    let _ = s.read_to_end(&mut body);
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn hostile_requests_get_4xx_with_a_clear_error_and_never_a_crash() {
    let long = std::env::var_os("BPFPROC_STRESS").is_some_and(|v| v != "0");
    let n = if long { 30_000 } else { 1_500 };
    let agent = Agent::start();
    let token = agent.token();
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../src/http/openapi.json")).expect("openapi.json");
    let paths: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let mut rng = Rng(0x0ddb_1ade_5eed);
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let rss_start = common::rss_kib(agent.pid());
    for i in 0..n {
        let template = &paths[rng.below(paths.len())];
        let mut path = template.clone();
        while let Some(open) = path.find('{') {
            let close = path[open..].find('}').map_or(path.len(), |c| open + c + 1);
            path.replace_range(open..close, &value(&mut rng));
        }
        path.push_str(&query(&mut rng));
        // Mostly the documented method, so requests reach the handlers, not only the router.
        let documented: Vec<String> = doc["paths"][template.as_str()]
            .as_object()
            .map(|o| o.keys().map(|m| m.to_uppercase()).collect())
            .unwrap_or_default();
        let method = match documented.get(rng.below(documented.len())) {
            Some(m) if rng.below(4) > 0 => m.clone(),
            _ => rng.pick(METHODS).to_string(),
        };
        let method = method.as_str();
        let body: Vec<u8> = match rng.below(10) {
            0 => vec![b'x'; 3 << 20],
            1 => (0..rng.below(4096)).map(|_| rng.next() as u8).collect(),
            2 => b"stop\xff\xfe".to_vec(),
            // Never a valid command: a real process could be behind a random pid.
            3 => format!("x-{}", value(&mut rng)).into_bytes(),
            _ => Vec::new(),
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        // With the token only for bodies that cannot be a command.
        if rng.below(2) == 0 && !body.starts_with(b"stop") {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        } else if rng.below(3) == 0 {
            head.push_str(&format!("Authorization: {}\r\n", value(&mut rng)));
        }
        if rng.below(40) == 0 {
            head.push_str(&format!("X-Long: {}\r\n", "h".repeat(200_000)));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&body);
        let shown = |a: &str| {
            format!(
                "request {i}: {method} {}: {a}",
                &path[..path.len().min(200)]
            )
        };
        let answer =
            send(&agent.addr, &raw).unwrap_or_else(|e| panic!("{}", shown(&e.to_string())));
        *by_status.entry(answer.status).or_default() += 1;
        assert!(
            (200..500).contains(&answer.status),
            "{}",
            shown(&format!(
                "status {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ))
        );
        if answer.status >= 400 && !answer.body.is_empty() {
            let err: Result<serde_json::Value, _> = serde_json::from_slice(&answer.body);
            assert!(
                answer.content_type.starts_with("application/json")
                    && err
                        .as_ref()
                        .is_ok_and(|e| e["error"].as_str().is_some_and(|m| !m.is_empty())),
                "{}",
                shown(&format!(
                    "status {} without a JSON error: {:?}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
                ))
            );
        }
    }
    let rss_end = common::rss_kib(agent.pid());
    eprintln!(
        "FIGURES hostile http: {n} requests from {} OpenAPI paths, statuses {by_status:?}, no 5xx; \
         agent RSS {rss_start} -> {rss_end} KiB",
        paths.len()
    );
    assert_eq!(agent.get("/healthz").0, 200);
    assert!(!agent.json("/v1/processes").as_array().unwrap().is_empty());
    assert!(
        rss_end <= rss_start * 2 + 64 * 1024,
        "{rss_start} -> {rss_end} KiB"
    );
}
