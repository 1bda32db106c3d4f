//! `lifelong serve` end to end on loopback: its answers against the `Scorer`'s, every refusal
//! with its status and counted in `/metrics`, load shedding (503) and deadlines (504), load from
//! 2 and 8 clients with reloads, twice its capacity offered, SIGTERM under load, and malformed,
//! huge, deeply nested and slow bodies. Every loop is bounded in count and time.

use crate::cli::s;
use crate::encode::fixture;
use lifelong::data::{Dataset, RawId};
use lifelong::serving::{Candidate, Precision, Scorer, Shard, StoreOptions, User};
use std::path::Path;

/// A `lifelong serve` process on loopback; killed however the test ends.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `lifelong serve` for `kind` with `args`, and waits until it is ready.
    fn start(kind: &str, args: &[&str]) -> Server {
        use std::io::BufRead;
        let f = fixture();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lifelong"))
            .args([
                "serve",
                "--checkpoint",
                s(&f.run(kind)),
                "--encodings",
                s(&f.enc(kind)),
            ])
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        let server = Server { child, addr };
        let t0 = std::time::Instant::now();
        while !server.get("/ready").starts_with("HTTP/1.1 200") {
            assert!(t0.elapsed().as_secs() < 60, "not ready within 60 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }

    fn get(&self, path: &str) -> String {
        http_get(&self.addr, path)
    }
    /// Waits (at most `secs`) for the process to end, and asserts it exited 0.
    fn exits_0_within(&mut self, secs: u64) {
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed().as_secs() < secs,
                "still running {secs} s after SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
    /// Sends the process SIGTERM.
    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }
    fn post(&self, path: &str, body: &str) -> String {
        http_post(&self.addr, path, body)
    }
}

/// `lifelong serve --shard 1/2 --bucket-precision f16` loads exactly the users whose raw id's
/// CRC-32 is odd (counted here from the vocabulary), answers them as a `Scorer` with the same
/// options does, sends a user of shard 0 away with 421 naming its shard, says its shard in
/// `/metrics`; a shard outside `0..N` stops the process with the flag's error.
#[test]
fn lifelong_serve_one_shard_in_f16_serves_its_users_and_sends_others_away() {
    let f = fixture();
    let server = Server::start("sdim", &["--shard", "1/2", "--bucket-precision", "f16"]);
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let raw: Vec<RawId> = (2..users.len() as u32)
        .filter_map(|i| users.raw(i))
        .collect();
    let home = |id: &RawId| match id {
        RawId::Int(x) => crc32fast::hash(&x.to_le_bytes()) % 2,
        RawId::Str(s) => crc32fast::hash(s.as_bytes()) % 2,
    };
    let mine = raw.iter().filter(|id| home(id) == 1).count();
    assert!(mine > 0 && mine < raw.len(), "{mine} of {}", raw.len());
    let ready = server.get("/ready");
    assert!(ready.contains(&format!("\"users\":{mine}")), "{ready}");
    let options = StoreOptions {
        shard: Shard { index: 1, count: 2 },
        buckets: Precision::F16,
        mapped: None,
        device: Default::default(),
    };
    let scorer = Scorer::open_with(&f.run("sdim"), &f.enc("sdim"), options).unwrap();
    let cands: Vec<RawId> = (2..6).map(|i| items.raw(i).unwrap()).collect();
    let cs: Vec<Candidate> = cands.iter().cloned().map(Candidate::item).collect();
    let list: Vec<String> = cands.iter().map(|c| c.to_string()).collect();
    let ours = raw.iter().find(|id| home(id) == 1).unwrap();
    let resp = server.post(
        "/score",
        &format!(r#"{{"user": {ours}, "candidates": [{}]}}"#, list.join(", ")),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let want = scorer.score(&User::Id(ours.clone()), &cs).unwrap();
    assert!(
        close(&scores_in(body_of(&resp)), &want),
        "{resp} vs {want:?}"
    );
    let theirs = raw.iter().find(|id| home(id) == 0).unwrap();
    let away = server.post(
        "/score",
        &format!(r#"{{"user": {theirs}, "candidates": [{}]}}"#, list[0]),
    );
    assert!(
        away.starts_with("HTTP/1.1 421")
            && away.contains(&format!("user {theirs} belongs to shard 0/2")),
        "{away}"
    );
    assert!(server.get("/metrics").contains("shard=\"1/2\""));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_lifelong"))
        .args(["serve", "--checkpoint", s(&f.run("sdim")), "--encodings"])
        .args([s(&f.enc("sdim")), "--addr", "127.0.0.1:0", "--shard", "2/2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("shard `2/2`"), "{err}");
}

/// Asserts that `resp` (a raw HTTP/1.1 answer) has status `code`, showing its head if not.
fn assert_status(resp: &str, code: u16) {
    assert!(
        resp.starts_with(&format!("HTTP/1.1 {code}")),
        "expected {code}, got {}",
        &resp[..resp.len().min(300)]
    );
}

/// One HTTP/1.1 exchange on a fresh connection (the server closes it after the answer).
fn http(addr: &str, raw: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn http_get(addr: &str, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

fn http_post(addr: &str, path: &str, body: &str) -> String {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The body of an HTTP response.
fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `lifelong serve` answers /score exactly as the `Scorer` does, refuses bad requests with their
/// status, reloads, counts everything in /metrics, survives a load test with 0 errors, and on
/// SIGTERM finishes what is in flight and exits 0.
#[test]
fn lifelong_serve_scores_as_the_scorer_reloads_counts_and_stops_cleanly() {
    let f = fixture();
    let server = Server::start("sdim", &["--max-body", "4096"]);
    assert_status(&server.get("/health"), 200);
    let ready = server.get("/ready");
    assert!(ready.contains("\"users\":120"), "{ready}");
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let uid = users.raw(2).unwrap();
    let cands: Vec<RawId> = (2..9).map(|i| items.raw(i).unwrap()).collect();
    let ids: Vec<String> = cands.iter().map(|c| c.to_string()).collect();
    let resp = server.post(
        "/score",
        &format!(r#"{{"user": {uid}, "candidates": [{}]}}"#, ids.join(", ")),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let got: Vec<f32> = serde_json::from_str::<serde_json::Value>(body_of(&resp)).unwrap()
        ["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let scorer = Scorer::open(&f.run("sdim"), &f.enc("sdim")).unwrap();
    let cs: Vec<Candidate> = cands.iter().cloned().map(Candidate::item).collect();
    let want = scorer.score(&User::Id(uid.clone()), &cs).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // Refusals, each with its status; the server keeps serving.
    assert_status(
        &server.post("/score", r#"{"user": -5, "candidates": [1]}"#),
        404,
    );
    assert_status(&server.post("/score", "not json"), 400);
    assert_status(&server.post("/score", &"x".repeat(5000)), 413);
    assert_status(&server.get("/nope"), 404);
    // Reload: the same directory, then one that is not an encodings directory (refused; the old
    // encodings stay).
    let ok = server.post(
        "/reload",
        &format!(r#"{{"encodings": "{}"}}"#, s(&f.enc("sdim"))),
    );
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("\"users\":120"),
        "{ok}"
    );
    let bad = server.post("/reload", &format!(r#"{{"encodings": "{}"}}"#, s(&f.data)));
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let again = server.post(
        "/score",
        &format!(r#"{{"user": {uid}, "candidates": [{}]}}"#, ids[0]),
    );
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    let metrics = server.get("/metrics");
    for line in [
        "lifelong_requests_total{endpoint=\"score\",status=\"200\"} 2",
        "lifelong_requests_total{endpoint=\"score\",status=\"404\"} 1",
        "lifelong_requests_total{endpoint=\"score\",status=\"400\"} 1",
        "lifelong_requests_total{endpoint=\"score\",status=\"413\"} 1",
        "lifelong_requests_total{endpoint=\"reload\",status=\"200\"} 1",
        "lifelong_requests_total{endpoint=\"reload\",status=\"400\"} 1",
        "lifelong_reloads_total{outcome=\"ok\"} 1",
        "lifelong_reloads_total{outcome=\"error\"} 1",
        // 7 candidates, then 1.
        "lifelong_candidates_scored_total 8",
        "lifelong_users_loaded 120",
        "lifelong_requests_in_flight 0",
        "lifelong_request_duration_seconds_count{endpoint=\"score\"} 5",
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!("fingerprint=\"{}\"", scorer.fingerprint())),
        "{metrics}"
    );
    // Load: 0 errors.
    let load = Path::new(env!("CARGO_BIN_EXE_lifelong"))
        .parent()
        .unwrap()
        .join("examples")
        .join("load_test");
    assert!(
        load.is_file(),
        "build the examples first (cargo test builds them)"
    );
    let out = std::process::Command::new(&load)
        .args(["--url", &format!("http://{}", server.addr)])
        .args([
            "--encodings",
            s(&f.enc("sdim")),
            "--candidates",
            "50",
            "--seconds",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "load test failed:\n{text}");
    let row = text.lines().last().unwrap();
    assert!(
        row.trim_end().ends_with("| 0 |"),
        "errors under load: {row}"
    );
    // SIGTERM while a request is in flight: it is answered, then the process exits 0.
    drop(server);
    let mut server = Server::start("sdim", &["--deadline-ms", "60000"]);
    let many: Vec<String> = (0..60_000).map(|i| (2 + i % 300).to_string()).collect();
    let big = format!(r#"{{"user": {uid}, "candidates": [{}]}}"#, many.join(","));
    let addr = server.addr.clone();
    let inflight = std::thread::spawn(move || http_post(&addr, "/score", &big));
    std::thread::sleep(std::time::Duration::from_millis(50));
    server.sigterm();
    let answer = inflight.join().unwrap();
    eprintln!("in flight at SIGTERM: {:?}", answer.lines().next());
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.is_empty(),
        "the request in flight: {}",
        &answer[..answer.len().min(200)]
    );
    server.exits_0_within(30);
}

/// Beyond `--max-in-flight` requests, 503 with `Retry-After` (never a queue that grows); past
/// `--deadline-ms`, 504.
#[test]
fn lifelong_serve_sheds_load_with_503_and_answers_late_requests_with_504() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let uid = ds.vocab("user").unwrap().raw(2).unwrap();
    let many: Vec<String> = (0..50_000).map(|i| (2 + i % 300).to_string()).collect();
    let big = format!(r#"{{"user": {uid}, "candidates": [{}]}}"#, many.join(","));
    let server = Server::start(
        "sdim",
        &[
            "--threads",
            "1",
            "--max-in-flight",
            "1",
            "--deadline-ms",
            "60000",
        ],
    );
    let barrier = std::sync::Barrier::new(6);
    let answers: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                sc.spawn(|| {
                    barrier.wait();
                    server.post("/score", &big)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let status = |a: &String| a.get(9..12).unwrap_or("").to_string();
    let (ok, shed): (Vec<_>, Vec<_>) = answers.iter().partition(|a| status(a) == "200");
    eprintln!(
        "6 at once, 1 permit: {} scored, {} shed",
        ok.len(),
        shed.len()
    );
    assert!(!ok.is_empty(), "no request was scored");
    assert!(
        !shed.is_empty(),
        "6 requests at once with one permit: none was refused"
    );
    for a in &shed {
        assert_eq!(status(a), "503", "{}", &a[..a.len().min(300)]);
        assert!(a.to_ascii_lowercase().contains("retry-after: 1"), "{a}");
    }
    let metrics = server.get("/metrics");
    assert!(
        metrics.contains(&format!(
            "lifelong_requests_total{{endpoint=\"score\",status=\"503\"}} {}",
            shed.len()
        )),
        "{metrics}"
    );
    drop(server);
    let late = Server::start("sdim", &["--deadline-ms", "1"]);
    let a = late.post("/score", &big);
    assert!(
        a.starts_with("HTTP/1.1 504") && a.contains("deadline"),
        "{}",
        &a[..a.len().min(300)]
    );
    // The server stays up.
    assert_status(&late.get("/health"), 200);
}

/// A keep-alive HTTP client that reports statuses instead of failing on them.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// `(status, body)` of a POST, or `None` when no response came (the connection was refused or
/// closed: a request the server never accepted).
fn post_with(agent: &ureq::Agent, url: &str, body: &str) -> Option<(u16, String)> {
    let mut r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .ok()?;
    let text = r.body_mut().read_to_string().ok()?;
    Some((r.status().as_u16(), text))
}

fn scores_in(body: &str) -> Vec<f32> {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["scores"]
        .as_array()
        .unwrap_or_else(|| panic!("no scores in {body}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

/// Ten users, each with ten candidates: their request bodies and raw ids.
fn requests() -> Vec<(RawId, Vec<RawId>, String)> {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    (2..12u32)
        .map(|u| {
            let id = users.raw(u).unwrap();
            let cands: Vec<RawId> = (0..10u32)
                .map(|k| items.raw(2 + (u * 7 + k * 13) % 300).unwrap())
                .collect();
            let list: Vec<String> = cands.iter().map(|c| c.to_string()).collect();
            let body = format!(r#"{{"user": {id}, "candidates": [{}]}}"#, list.join(","));
            (id, cands, body)
        })
        .collect()
}

/// 2 and then 8 clients send 10^4 requests each time over keep-alive connections while the
/// encodings are reloaded, old and new in turn, every 250 ms: 0 errors, and every answer is the
/// old encodings' scores or the new ones', never a mixture.
#[test]
fn under_load_from_2_and_8_clients_with_reloads_every_answer_is_old_or_new() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // New encodings: every user of the requests gets three new behaviors.
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let cate_of = ds.item_cates().unwrap();
    let cates = ds.vocab("cate").unwrap();
    let t_max = *ds.histories.ts.iter().max().unwrap();
    let int = |r: RawId| match r {
        RawId::Int(x) => x,
        RawId::Str(_) => unreachable!("the fixture's ids are integers"),
    };
    let (mut eu, mut ei, mut ec, mut et) = (vec![], vec![], vec![], vec![]);
    for u in 2..12u32 {
        for k in 0..3u32 {
            let i = 2 + (u * 11 + k * 5) % 300;
            eu.push(int(users.raw(u).unwrap()));
            ei.push(int(items.raw(i).unwrap()));
            ec.push(int(cates.raw(cate_of[i as usize]).unwrap()));
            et.push(t_max + 1 + k as i64);
        }
    }
    let log = tmp.path().join("new.parquet");
    crate::cli::write_events(&log, (eu, ei, ec, et));
    let (old_dir, new_dir) = (f.enc("sdim"), tmp.path().join("enc_new"));
    let mf =
        lifelong::checkpoint::ModelFile::open(&f.run("sdim"), &candle_core::Device::Cpu).unwrap();
    lifelong::serving::update(
        &mf,
        &old_dir,
        &log,
        &lifelong::data::PrepareConfig::default(),
        &new_dir,
    )
    .unwrap();
    let reqs = requests();
    let expect = |dir: &Path| -> Vec<Vec<f32>> {
        let sc = Scorer::open(&f.run("sdim"), dir).unwrap();
        reqs.iter()
            .map(|(id, c, _)| {
                let cs: Vec<Candidate> = c.iter().cloned().map(Candidate::item).collect();
                sc.score(&User::Id(id.clone()), &cs).unwrap()
            })
            .collect()
    };
    let (old, new) = (expect(&old_dir), expect(&new_dir));
    assert!(
        old.iter().zip(&new).all(|(a, b)| !close(a, b)),
        "the update changed nothing"
    );
    let server = Server::start("sdim", &["--threads", "2"]);
    let url = format!("http://{}/score", server.addr);
    let t0 = std::time::Instant::now();
    for clients in [2usize, 8] {
        let done = std::sync::atomic::AtomicBool::new(false);
        let (answers, reloads) = std::thread::scope(|sc| {
            let reloader = sc.spawn(|| {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    let dir = if n % 2 == 0 { &new_dir } else { &old_dir };
                    let r = server.post("/reload", &format!(r#"{{"encodings": "{}"}}"#, s(dir)));
                    assert!(r.starts_with("HTTP/1.1 200"), "reload: {r}");
                    n += 1;
                }
                n
            });
            let per = 10_000 / clients;
            let hs: Vec<_> = (0..clients)
                .map(|c| {
                    let (reqs, url) = (&reqs, &url);
                    sc.spawn(move || {
                        let agent = agent();
                        let mut out = Vec::with_capacity(per);
                        for i in 0..per {
                            let r = (c * 7 + i) % reqs.len();
                            out.push((r, post_with(&agent, url, &reqs[r].2)));
                        }
                        out
                    })
                })
                .collect();
            let answers: Vec<_> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (answers, reloader.join().unwrap())
        });
        assert_eq!(answers.len(), 10_000);
        let (mut from_old, mut from_new) = (0, 0);
        for (r, a) in &answers {
            let (status, body) = a.as_ref().expect("no response");
            assert_eq!(*status, 200, "{body}");
            let got = scores_in(body);
            if close(&got, &old[*r]) {
                from_old += 1;
            } else if close(&got, &new[*r]) {
                from_new += 1;
            } else {
                panic!(
                    "request {r}: {got:?} is neither {:?} nor {:?}",
                    old[*r], new[*r]
                );
            }
        }
        eprintln!("{clients} clients: {from_old} old, {from_new} new answers, {reloads} reloads");
        assert!(reloads >= 1, "no reload happened during the load");
        assert!(t0.elapsed().as_secs() < 300, "the load took over 5 minutes");
    }
}

/// Twice the capacity offered (and more): 24 clients back to back against one scoring thread and
/// two permits. Only 200 and 503 come back, the requests in flight never exceed the bound (no
/// queue grows), and the accepted requests' p99 stays within a small multiple of one request's
/// time.
#[test]
fn at_twice_its_capacity_only_200_and_503_and_the_queue_stays_bounded() {
    let server = Server::start("sdim", &["--threads", "1", "--max-in-flight", "2"]);
    let url = format!("http://{}/score", server.addr);
    let reqs = requests();
    let big: Vec<String> = (0..2_000).map(|i| (2 + i % 300).to_string()).collect();
    let id = &reqs[0].0;
    let body = format!(r#"{{"user": {id}, "candidates": [{}]}}"#, big.join(","));
    // One request alone, 20 times: its median time.
    let a = agent();
    let mut alone: Vec<f64> = (0..20)
        .map(|_| {
            let t = std::time::Instant::now();
            assert_eq!(post_with(&a, &url, &body).unwrap().0, 200);
            t.elapsed().as_secs_f64()
        })
        .collect();
    alone.sort_by(f64::total_cmp);
    let t1 = alone[10];
    let stop = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (results, peak) = std::thread::scope(|sc| {
        let watcher = sc.spawn(|| {
            let mut peak = 0i64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let m = server.get("/metrics");
                if let Some(v) = m
                    .lines()
                    .find_map(|l| l.strip_prefix("lifelong_requests_in_flight "))
                {
                    peak = peak.max(v.trim().parse().unwrap());
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        });
        let hs: Vec<_> = (0..24)
            .map(|_| {
                let (url, body) = (&url, &body);
                sc.spawn(move || {
                    let a = agent();
                    let mut out = Vec::new();
                    while std::time::Instant::now() < stop {
                        let t = std::time::Instant::now();
                        let r = post_with(&a, url, body).map(|(st, _)| st);
                        out.push((r, t.elapsed().as_secs_f64()));
                    }
                    out
                })
            })
            .collect();
        let all: Vec<_> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (all, watcher.join().unwrap())
    });
    let mut accepted: Vec<f64> = Vec::new();
    let mut shed = 0;
    for (status, secs) in &results {
        match status {
            Some(200) => accepted.push(*secs),
            Some(503) => shed += 1,
            other => panic!("status {other:?} under overload"),
        }
    }
    accepted.sort_by(f64::total_cmp);
    let p99 = accepted[(accepted.len() * 99 / 100).min(accepted.len() - 1)];
    eprintln!(
        "overload: {} accepted, {shed} shed, one alone {:.1} ms, accepted p99 {:.1} ms, peak in flight {peak}",
        accepted.len(),
        t1 * 1e3,
        p99 * 1e3
    );
    assert!(
        shed > 0 && !accepted.is_empty(),
        "{} accepted, {shed} shed",
        accepted.len()
    );
    assert!(peak <= 2, "{peak} requests in flight with 2 permits");
    assert!(
        p99 < 20.0 * t1 + 1.0,
        "accepted p99 {p99:.3} s, one request {t1:.3} s"
    );
}

/// SIGTERM while 4 clients keep sending: every request that got an answer got a whole 200 (the
/// ones in flight were finished), the others were never accepted, and the process exits 0.
#[test]
fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    let mut server = Server::start("sdim", &["--threads", "2"]);
    let url = format!("http://{}/score", server.addr);
    let reqs = requests();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|c| {
                let (url, reqs, stop) = (&url, &reqs, &stop);
                sc.spawn(move || {
                    let a = agent();
                    let mut out = Vec::new();
                    let mut i = c;
                    // Until the server is gone (bounded: at most 10^5 requests).
                    while out.len() < 100_000 {
                        let r = post_with(&a, url, &reqs[i % reqs.len()].2);
                        let gone = r.is_none() && stop.load(std::sync::atomic::Ordering::SeqCst);
                        out.push(r);
                        if gone {
                            break;
                        }
                        i += 1;
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        server.sigterm();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let answered: Vec<_> = results.iter().flatten().collect();
    assert!(answered.len() > 10, "only {} answers", answered.len());
    for (status, body) in &answered {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(scores_in(body).len(), 10);
    }
    server.exits_0_within(30);
}

/// Malformed, huge, deeply nested and slow bodies are answered (400, 413) or cut off (408)
/// while other clients are served at once: no worker stalls on them.
#[test]
fn malformed_huge_nested_and_slow_bodies_are_answered_or_cut_off() {
    use std::io::{Read, Write};
    let server = Server::start("sdim", &["--max-body", "200000", "--deadline-ms", "1500"]);
    let reqs = requests();
    let url = format!("http://{}/score", server.addr);
    assert_status(&server.post("/score", "{\"user\": "), 400);
    assert_status(&server.post("/score", "\u{0}\u{1}garbage"), 400);
    assert_status(&server.post("/score", &"[".repeat(300_000)), 413);
    let nested = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let r = server.post("/score", &nested);
    assert!(r.starts_with("HTTP/1.1 400"), "{}", &r[..r.len().min(200)]);
    let deep = format!(
        r#"{{"user": {}"candidates": [1]}}"#,
        "{\"a\":".repeat(10_000)
    );
    assert_status(&server.post("/score", &deep), 400);
    // A body sent a byte at a time, slower than the deadline allows.
    let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
    slow.write_all(
        b"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 400\r\n\r\n{",
    )
    .unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut out = Vec::new();
    let outcome = loop {
        // Meanwhile an ordinary request is answered at once.
        let t = std::time::Instant::now();
        assert_eq!(post_with(&agent(), &url, &reqs[0].2).unwrap().0, 200);
        assert!(
            t.elapsed().as_millis() < 1000,
            "a request waited behind the slow body"
        );
        if slow.write_all(b" ").is_err() {
            break "cut off";
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                break "answered";
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break "cut off",
        }
        assert!(
            t0.elapsed().as_secs() < 8,
            "the slow body is still being read after 8 s"
        );
    };
    let text = String::from_utf8_lossy(&out);
    eprintln!(
        "slow body: {outcome} after {:.1} s: {:?}",
        t0.elapsed().as_secs_f64(),
        text.lines().next()
    );
    assert!(
        outcome != "answered" || text.starts_with("HTTP/1.1 408"),
        "the slow body got {text:?}"
    );
    assert!(
        t0.elapsed().as_secs_f64() > 1.0,
        "cut off before the deadline"
    );
    assert!(t0.elapsed().as_secs() < 10);
    assert_status(&server.get("/health"), 200);
}
