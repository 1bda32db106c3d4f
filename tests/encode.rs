//! Offline encoding and the serving `Scorer` end to end, for every model: `lifelong encode` (one
//! process and two shards), the Scorer's probabilities against `eval`'s on the same users and
//! candidates, `encode --update` against encoding the extended history, and bad input (unknown
//! user, no candidates, malformed requests, encodings of other weights, truncated files).

use crate::cli::{fails, ok, prepare, s, synth, write_log};
use crate::common::assert_same_encoding;
use lifelong::checkpoint::ModelFile;
use lifelong::data::{Dataset, Impressions, RawId, UNKNOWN};
use lifelong::serving::{self as encodings, EncodedUser};
use lifelong::serving::{Candidate, Scorer, User};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const KINDS: [&str; 6] = ["din", "sdim", "sim", "eta", "twin", "dare"];

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

impl Fixture {
    fn run(&self, kind: &str) -> PathBuf {
        self.root.join(format!("run_{kind}"))
    }
    fn enc(&self, kind: &str) -> PathBuf {
        self.root.join(format!("enc_{kind}"))
    }
}

/// One synthetic dataset; every kind trained 15 steps on it and encoded.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let events = synth(&root, &root.join("events"), 120, 400);
        let data = root.join("prepared");
        prepare(&root, &events, &data);
        let f = Fixture {
            _tmp: tmp,
            root: root.clone(),
            data,
        };
        for kind in KINDS {
            let search = if matches!(kind, "din" | "sdim") {
                ""
            } else {
                "[model.search]\nk = 5"
            };
            let cfg = root.join(format!("{kind}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[data]\ndir = \"unused\"\nmax_len = 20\n[model]\nkind = \"{kind}\"\n\
                     [model.embedding]\nitem_dim = 8\ncate_dim = 8\n{search}\n\
                     [train]\nepochs = 1\nbatch_size = 128\nmax_steps = 15\nseed = 5\n"
                ),
            )
            .unwrap();
            let run = f.run(kind);
            ok(
                &root,
                &[
                    "train",
                    "--config",
                    s(&cfg),
                    "--data",
                    s(&f.data),
                    "--out",
                    s(&run),
                ],
            );
            let out = ok(
                &root,
                &[
                    "encode",
                    "--checkpoint",
                    s(&run),
                    "--data",
                    s(&f.data),
                    "--out",
                    s(&f.enc(kind)),
                ],
            );
            assert!(out.contains("encoded 120 users"), "{kind}: {out}");
        }
        f
    })
}

/// Every row of an encodings directory, by raw user id.
fn read_all(dir: &Path, run: &Path) -> HashMap<RawId, EncodedUser> {
    let mf = ModelFile::open(run, &candle_core::Device::Cpu).unwrap();
    let layout = mf.model.encoding_layout();
    let fp = lifelong::checkpoint::model_fingerprint(&mf.model).unwrap();
    let mut out = HashMap::new();
    for (file, _) in encodings::parts(dir, &fp, &layout).unwrap() {
        encodings::read_part(&file, &layout, |rows| {
            for r in rows {
                assert!(
                    out.insert(r.id.clone(), r).is_none(),
                    "a user encoded twice"
                );
            }
            Ok(())
        })
        .unwrap();
    }
    out
}

#[test]
fn scorer_equals_eval_for_every_model() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let item_cates = ds.item_cates().unwrap();
    let hist = ds.histories.clone();
    // 30 known items and one never seen.
    let cand_items: Vec<u32> = (2..32).chain([UNKNOWN]).collect();
    let mut cands: Vec<Candidate> = (2..32)
        .map(|i| Candidate::item(items.raw(i).unwrap()))
        .collect();
    cands.push(Candidate::item(RawId::Int(987_654_321)));
    for kind in KINDS {
        let scorer = Scorer::open(&f.run(kind), &f.enc(kind)).unwrap();
        assert_eq!(scorer.num_users(), 120, "{kind}");
        let mf = ModelFile::open(&f.run(kind), &candle_core::Device::Cpu).unwrap();
        let mut worst = 0f32;
        for u in (2..122u32).step_by(7) {
            let n = cand_items.len();
            let imp = std::sync::Arc::new(Impressions {
                label: vec![0.0; n],
                user: vec![u; n],
                item: cand_items.clone(),
                cate: cand_items.iter().map(|&i| item_cates[i as usize]).collect(),
                seq_len: vec![hist.len_of(u) as u32; n],
                history: Vec::new(),
            });
            let want: Vec<f32> = lifelong::eval::predict(&mf.model, &hist, &imp, 64)
                .unwrap()
                .into_iter()
                .map(lifelong::metrics::sigmoid)
                .collect();
            let id = users.raw(u).unwrap();
            let got = scorer.score(&User::Id(id.clone()), &cands).unwrap();
            // The same user given by its raw history instead of its encoding.
            let (hi, hc) = hist.get(u);
            let cates = ds.vocab("cate").unwrap();
            let by_history = User::History {
                id: Some(id),
                items: hi.iter().map(|&i| items.raw(i).unwrap()).collect(),
                cates: Some(hc.iter().map(|&c| cates.raw(c).unwrap()).collect()),
            };
            let raw = scorer.score(&by_history, &cands).unwrap();
            for r in 0..n {
                worst = worst
                    .max((got[r] - want[r]).abs())
                    .max((raw[r] - want[r]).abs());
            }
        }
        assert!(worst < 1e-5, "{kind}: served vs eval differ by {worst}");
    }
}

#[test]
fn two_shards_hold_exactly_the_users_of_one_encode() {
    let f = fixture();
    let dir = f.root.join("enc_sdim_sharded");
    let run = f.run("sdim");
    for shard in ["0/2", "1/2"] {
        ok(
            &f.root,
            &[
                "encode",
                "--checkpoint",
                s(&run),
                "--data",
                s(&f.data),
                "--out",
                s(&dir),
                "--shard",
                shard,
            ],
        );
    }
    let one = read_all(&f.enc("sdim"), &run);
    let two = read_all(&dir, &run);
    assert_eq!(one.len(), 120);
    assert_eq!(one, two, "sharded encodings differ from one process's");
    // One shard alone is refused as incomplete.
    let half = f.root.join("enc_half");
    std::fs::create_dir_all(half.join("vocab")).unwrap();
    for v in ["user", "item", "cate"] {
        let name = format!("vocab/{v}.parquet");
        std::fs::copy(dir.join(&name), half.join(&name)).unwrap();
    }
    std::fs::copy(
        dir.join("part-00000-of-00002.parquet"),
        half.join("part-00000-of-00002.parquet"),
    )
    .unwrap();
    let e = Scorer::open(&run, &half).unwrap_err().to_string();
    assert!(e.contains("shard 1 of 2"), "{e}");
}

#[test]
fn update_equals_encoding_the_extended_history() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items, cates) = (
        ds.vocab("user").unwrap(),
        ds.vocab("item").unwrap(),
        ds.vocab("cate").unwrap(),
    );
    let item_cates = ds.item_cates().unwrap();
    let t_max = *ds.histories.ts.iter().max().unwrap();
    // New events: users 2..40 get 1 to 25 new behaviors (more than max_len = 20 for some), one of
    // them an item never seen; a brand-new user gets 3.
    let (mut eu, mut ei, mut ec, mut et) = (vec![], vec![], vec![], vec![]);
    let mut expect_new: HashMap<RawId, Vec<(u32, u32)>> = HashMap::new();
    for u in 2..40u32 {
        let RawId::Int(uid) = users.raw(u).unwrap() else {
            panic!("int ids")
        };
        for k in 0..(1 + (u as usize * 7) % 25) {
            let i = 2 + ((u as usize * 13 + k * 5) % 300) as u32;
            let (raw_i, idx) = if k == 3 {
                (555_555_555, UNKNOWN)
            } else {
                let RawId::Int(x) = items.raw(i).unwrap() else {
                    panic!()
                };
                (x, i)
            };
            let c = if idx == UNKNOWN {
                UNKNOWN
            } else {
                item_cates[idx as usize]
            };
            let RawId::Int(raw_c) = cates.raw(c).unwrap_or(RawId::Int(777_777)) else {
                panic!()
            };
            eu.push(uid);
            ei.push(raw_i);
            ec.push(raw_c);
            et.push(t_max + 1 + k as i64);
            expect_new
                .entry(RawId::Int(uid))
                .or_default()
                .push((idx, c));
        }
    }
    for k in 0..3 {
        let i = 2 + k as u32;
        let RawId::Int(x) = items.raw(i).unwrap() else {
            panic!()
        };
        let RawId::Int(cx) = cates.raw(item_cates[i as usize]).unwrap() else {
            panic!()
        };
        eu.push(-42);
        ei.push(x);
        ec.push(cx);
        et.push(t_max + 1 + k);
        expect_new
            .entry(RawId::Int(-42))
            .or_default()
            .push((i, item_cates[i as usize]));
    }
    let log = f.root.join("new_events.parquet");
    write_log(
        &log,
        vec![
            ("user_id", eu),
            ("item_id", ei),
            ("cate_id", ec),
            ("ts", et),
        ],
    );
    for kind in ["sdim", "eta", "dare"] {
        let run = f.run(kind);
        let out_dir = f.root.join(format!("enc_{kind}_updated"));
        let msg = ok(
            &f.root,
            &[
                "encode",
                "--checkpoint",
                s(&run),
                "--update",
                s(&f.enc(kind)),
                "--events",
                s(&log),
                "--out",
                s(&out_dir),
            ],
        );
        assert!(msg.contains("(1 new; 121 in all)"), "{kind}: {msg}");
        let mf = ModelFile::open(&run, &candle_core::Device::Cpu).unwrap();
        let got = read_all(&out_dir, &run);
        assert_eq!(got.len(), 121);
        let mut checked = 0;
        for (id, row) in &got {
            let u = users.lookup(id);
            let (mut hi, mut hc) = if u == UNKNOWN {
                (vec![], vec![])
            } else {
                let (a, b) = ds.histories.get(u);
                (a.to_vec(), b.to_vec())
            };
            for &(i, c) in expect_new.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                hi.push(i);
                hc.push(c);
            }
            let want = mf.model.encode_user(u, &hi, &hc).unwrap();
            assert_same_encoding(&format!("{kind} user {id}"), &row.enc, &want);
            checked += expect_new.contains_key(id) as usize;
        }
        assert_eq!(checked, 39, "{kind}");
        // Events older than an encoding are refused, naming the user.
        let old = f.root.join(format!("old_{kind}.parquet"));
        let RawId::Int(uid) = users.raw(5).unwrap() else {
            panic!()
        };
        write_log(
            &old,
            vec![
                ("user_id", vec![uid]),
                ("item_id", vec![1_000_000]),
                ("cate_id", vec![1]),
                ("ts", vec![i64::MIN + 1]),
            ],
        );
        fails(
            &f.root,
            &[
                "encode",
                "--checkpoint",
                s(&run),
                "--update",
                s(&out_dir),
                "--events",
                s(&old),
            ],
            &[&format!("user {uid}"), "older than the encoding"],
        );
        // The failed in-place update left every file as it was (atomic writes).
        assert_eq!(
            read_all(&out_dir, &run),
            got,
            "{kind}: a failed update changed the encodings"
        );
    }
}

#[test]
fn serving_bad_input_gets_a_named_error_and_the_scorer_keeps_working() {
    let f = fixture();
    let run = f.run("eta");
    let scorer = Scorer::open(&run, &f.enc("eta")).unwrap();
    let ds = Dataset::open(&f.data).unwrap();
    let uid = match ds.vocab("user").unwrap().raw(3).unwrap() {
        RawId::Int(x) => x,
        RawId::Str(_) => panic!("int ids"),
    };
    let item = match ds.vocab("item").unwrap().raw(2).unwrap() {
        RawId::Int(x) => x,
        RawId::Str(_) => panic!(),
    };
    let req = |body: String| scorer.handle_json(body.as_bytes());
    let (code, body) = req(format!(
        r#"{{"user": {uid}, "candidates": [{item}, {{"item": "{item}"}}, 123456789]}}"#
    ));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p: Vec<f64> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(p.len(), 3);
    assert!(
        (p[0] - p[1]).abs() < 1e-7,
        "a string id of an integer vocabulary is the same item"
    );
    assert!(p.iter().all(|x| (0.0..=1.0).contains(x)));
    for (body, status, needle) in [
        (
            format!(r#"{{"user": 31337, "candidates": [{item}]}}"#),
            404,
            "unknown user 31337",
        ),
        (
            format!(r#"{{"user": {uid}, "candidates": []}}"#),
            400,
            "no candidates",
        ),
        ("{\"user\": ".to_string(), 400, "malformed request"),
        (
            r#"{"candidates": [1]}"#.to_string(),
            400,
            "\\\"user\\\" or \\\"history\\\"",
        ),
        (
            format!(r#"{{"user": {uid}, "candidates": [1], "extra": 1}}"#),
            400,
            "unknown field",
        ),
        (
            r#"{"history": {"items": [1, 2], "cates": [1]}, "candidates": [1]}"#.to_string(),
            400,
            "2 items but 1 categories",
        ),
    ] {
        let (code, out) = req(body.clone());
        assert_eq!(code, status, "{body} → {out}");
        assert!(
            out.contains("\"error\"") && out.contains(needle),
            "{body} → {out}"
        );
    }
    // Still serving after every error.
    assert_eq!(
        req(format!(r#"{{"user": {uid}, "candidates": [{item}]}}"#)).0,
        200
    );

    // Encodings of other weights (another kind's run) and a truncated file are refused by name.
    let e = Scorer::open(&f.run("sdim"), &f.enc("eta"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("part-00000-of-00001.parquet"), "{e}");
    let cut = f.root.join("enc_truncated");
    std::fs::create_dir_all(cut.join("vocab")).unwrap();
    for v in ["user", "item", "cate"] {
        std::fs::copy(
            f.enc("eta").join("vocab").join(format!("{v}.parquet")),
            cut.join("vocab").join(format!("{v}.parquet")),
        )
        .unwrap();
    }
    let bytes = std::fs::read(f.enc("eta").join("part-00000-of-00001.parquet")).unwrap();
    std::fs::write(
        cut.join("part-00000-of-00001.parquet"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = Scorer::open(&run, &cut).unwrap_err().to_string();
    assert!(e.contains("part-00000-of-00001.parquet"), "{e}");
    // A failed reload keeps the old encodings.
    assert!(scorer.reload(&cut).is_err());
    assert_eq!(scorer.num_users(), 120);
    assert_eq!(scorer.reload(&f.enc("eta")).unwrap(), 120);
}

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
    fn post(&self, path: &str, body: &str) -> String {
        http_post(&self.addr, path, body)
    }
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
    assert!(server.get("/health").starts_with("HTTP/1.1 200"));
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
    assert!(server
        .post("/score", r#"{"user": -5, "candidates": [1]}"#)
        .starts_with("HTTP/1.1 404"));
    assert!(server
        .post("/score", "not json")
        .starts_with("HTTP/1.1 400"));
    assert!(server
        .post("/score", &"x".repeat(5000))
        .starts_with("HTTP/1.1 413"));
    assert!(server.get("/nope").starts_with("HTTP/1.1 404"));
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
    let mut server = Server::start("sdim", &[]);
    let many: Vec<String> = (0..60_000).map(|i| (2 + i % 300).to_string()).collect();
    let big = format!(r#"{{"user": {uid}, "candidates": [{}]}}"#, many.join(","));
    let addr = server.addr.clone();
    let inflight = std::thread::spawn(move || http_post(&addr, "/score", &big));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let answer = inflight.join().unwrap();
    eprintln!("in flight at SIGTERM: {:?}", answer.lines().next());
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.is_empty(),
        "the request in flight: {}",
        &answer[..answer.len().min(200)]
    );
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed().as_secs() < 30,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
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
    assert!(late.get("/health").starts_with("HTTP/1.1 200"));
}

/// `encode --data DIR --events LOG` (users straight from an event log, the dataset's
/// vocabularies) gives the encodings `encode --data DIR` gives from the prepared histories.
#[test]
fn encoding_from_the_event_log_equals_encoding_the_prepared_histories() {
    let f = fixture();
    let events = f.root.join("events").join("events.parquet");
    for kind in ["sdim", "eta"] {
        let run = f.run(kind);
        let dir = f.root.join(format!("enc_{kind}_from_log"));
        for shard in ["0/2", "1/2"] {
            let out = ok(
                &f.root,
                &[
                    "encode",
                    "--checkpoint",
                    s(&run),
                    "--data",
                    s(&f.data),
                    "--events",
                    s(&events),
                    "--out",
                    s(&dir),
                    "--shard",
                    shard,
                ],
            );
            assert!(out.contains("encoded"), "{out}");
        }
        let want = read_all(&f.enc(kind), &run);
        let got = read_all(&dir, &run);
        assert_eq!(got.len(), want.len(), "{kind}");
        for (id, w) in &want {
            let g = &got[id];
            assert_eq!(g.last_ts, w.last_ts, "{kind} user {id}");
            assert_same_encoding(&format!("{kind} user {id}"), &g.enc, &w.enc);
        }
    }
}
