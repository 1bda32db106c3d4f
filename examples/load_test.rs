//! Load test of `lifelong serve` on loopback: worker threads send scoring requests (a random
//! user of the encodings, `--candidates` random items) back to back for `--seconds`, over
//! keep-alive connections, and report requests/s, latency percentiles and errors.
//!
//! ```text
//! cargo run --release --example load_test -- --url http://127.0.0.1:8080 \
//!     --encodings encodings/sdim --candidates 1000 --threads 2 --seconds 10
//! ```
//!
//! Exits with status 1 if any request failed (a status other than 200, or a malformed body).

use clap::Parser;
use lifelong::data::{RawId, Vocab};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The encodings directory the server serves (users and items are drawn from its
    /// vocabularies).
    #[arg(long)]
    encodings: PathBuf,
    /// Candidates per request.
    #[arg(long, default_value_t = 1000)]
    candidates: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Duration.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

fn ids(v: &Vocab) -> Vec<serde_json::Value> {
    (2..v.len() as u32)
        .filter_map(|i| v.raw(i))
        .map(|r| match r {
            RawId::Int(x) => serde_json::json!(x),
            RawId::Str(s) => serde_json::json!(s),
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let users = ids(&Vocab::read(&args.encodings.join("vocab/user.parquet"))?);
    let items = ids(&Vocab::read(&args.encodings.join("vocab/item.parquet"))?);
    anyhow::ensure!(!users.is_empty() && !items.is_empty(), "empty vocabularies");
    let health = ureq::get(&format!("{}/health", args.url)).call()?;
    anyhow::ensure!(health.status() == 200, "health: {}", health.status());
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads.max(1))
            .map(|t| {
                let (users, items, args) = (&users, &items, &args);
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(t as u64);
                    let (mut lat, mut errors) = (Vec::new(), 0usize);
                    let url = format!("{}/score", args.url);
                    while Instant::now() < deadline {
                        let user = &users[rng.random_range(0..users.len())];
                        let cands: Vec<&serde_json::Value> = (0..args.candidates)
                            .map(|_| &items[rng.random_range(0..items.len())])
                            .collect();
                        let body =
                            serde_json::json!({ "user": user, "candidates": cands }).to_string();
                        let t0 = Instant::now();
                        let resp = agent
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .send(body.as_bytes());
                        let ok = match resp {
                            Ok(mut r) if r.status() == 200 => {
                                r.body_mut()
                                    .read_to_string()
                                    .ok()
                                    .and_then(|b| {
                                        serde_json::from_str::<serde_json::Value>(&b).ok()
                                    })
                                    .and_then(|v| v.get("scores")?.as_array().map(|a| a.len()))
                                    == Some(args.candidates)
                            }
                            _ => false,
                        };
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                        errors += !ok as usize;
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let errors: usize = results.iter().map(|r| r.1).sum();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "| clients | candidates | requests | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|\n| {} | {} | {} | {:.1} | {:.2} | {:.2} | {errors} |",
        args.threads,
        args.candidates,
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
    );
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
