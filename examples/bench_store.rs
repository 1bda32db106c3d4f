//! Encodings beyond RAM: requests served from the memory-mapped store (`serving::MappedStore`,
//! what `lifelong serve --store` reads) for `--users` users against the same requests served
//! from an in-memory map of `--memory-users` (what fits in RAM), at the SDIM preset, L = 1,000,
//! 1,000 candidates, a uniformly random user per request. Prints the store's size, how long
//! writing and opening it took, latency percentiles of the lookup alone and of the whole
//! request, and the process's resident memory after each phase.
//!
//! ```text
//! cargo run --release --example bench_store -- --users 1000000 --dir /tmp/store_bench
//! ```
//!
//! The encodings are random (bucket sums, ids): a request's cost does not depend on the values.

use clap::Parser;
use lifelong::data::RawId;
use lifelong::model::{CtrModel, UserEncoding};
use lifelong::serving::{MappedStore, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Users in the mapped store.
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Users of the in-memory comparison.
    #[arg(long, default_value_t = 100_000)]
    memory_users: usize,
    /// Directory of the store file (kept; reused when it exists with the same size).
    #[arg(long, default_value = "/tmp/store_bench")]
    dir: PathBuf,
    /// Bucket sums in the file: f32 or f16.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Requests timed per phase.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Candidates per request.
    #[arg(long, default_value_t = 1000)]
    candidates: usize,
}

const ITEMS: usize = 100_000;
const CATES: usize = 1_000;
const L: usize = 1000;

fn random_encoding(m: &CtrModel, rng: &mut ChaCha8Rng) -> UserEncoding {
    let layout = m.encoding_layout();
    let n = layout.serving_window.min(L);
    let items: Vec<u32> = (0..n)
        .map(|_| rng.random_range(2..ITEMS as u32 + 2))
        .collect();
    let cates = items.iter().map(|i| 2 + i % CATES as u32).collect();
    let buckets = layout
        .buckets
        .iter()
        .map(|&len| (0..len).map(|_| rng.random::<f32>() - 0.5).collect())
        .collect();
    UserEncoding {
        user: 1,
        items,
        cates,
        ts: Vec::new(),
        codes: Vec::new(),
        buckets,
    }
}

fn main() {
    lifelong::tune_runtime();
    let args = Args::parse();
    let precision: Precision = args.precision.parse().expect("--precision");
    println!("machine: {}", common::machine());
    let m = common::preset_model("sdim", L, ITEMS, CATES);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let cand: Vec<u32> = (0..args.candidates)
        .map(|_| rng.random_range(2..ITEMS as u32 + 2))
        .collect();
    let ccat: Vec<u32> = cand.iter().map(|i| 2 + i % CATES as u32).collect();
    let time = |get: &dyn Fn(i64) -> Arc<UserEncoding>, n: usize, rng: &mut ChaCha8Rng| {
        let (mut look, mut whole) = (Vec::new(), Vec::new());
        for r in 0..args.requests + 50 {
            let id = rng.random_range(0..n as i64);
            let t = Instant::now();
            let enc = get(id);
            let t1 = t.elapsed().as_secs_f64();
            std::hint::black_box(m.score_encoded(&enc, &cand, &ccat).expect("score"));
            if r >= 50 {
                look.push(t1 * 1e6);
                whole.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        (common::percentiles(look), common::percentiles(whole))
    };
    println!(
        "SDIM preset, L = {L}, {} candidates, a random user per request, {} requests per phase\n",
        args.candidates, args.requests
    );
    println!("| store | users | file GB | write s | open s | lookup p50 µs | lookup p99 µs | request p50 ms | request p99 ms | RSS after MB |");
    println!("|---|---|---|---|---|---|---|---|---|---|");

    // Mapped: every user.
    std::fs::create_dir_all(&args.dir).expect("dir");
    let path = args
        .dir
        .join(format!("bench-{}-{}.bin", args.users, args.precision));
    let t0 = Instant::now();
    let written = if path.is_file() {
        false
    } else {
        let mut g = ChaCha8Rng::seed_from_u64(5);
        let users =
            (0..args.users as i64).map(|i| Ok((RawId::Int(i), random_encoding(&m, &mut g))));
        MappedStore::write(&path, &m, precision, users).expect("write the store");
        true
    };
    let write_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let store = MappedStore::open_file(&path).expect("open the store");
    let open_s = t0.elapsed().as_secs_f64();
    assert_eq!(
        store.len(),
        args.users,
        "a store of another size at {path:?}"
    );
    let gb = std::fs::metadata(&path).map_or(0.0, |md| md.len() as f64 / 1e9);
    let (lk, wh) = time(
        &|id| Arc::new(store.get(&RawId::Int(id)).expect("read").expect("a user")),
        args.users,
        &mut rng,
    );
    println!(
        "| mapped ({}) | {} | {gb:.1} | {} | {open_s:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {:.0} |",
        args.precision,
        args.users,
        if written {
            format!("{write_s:.0}")
        } else {
            "(reused)".into()
        },
        lk.0,
        lk.1,
        wh.0,
        wh.1,
        common::rss_mb()
    );

    // In memory: what fits.
    let before = common::rss_mb();
    let mem: HashMap<i64, Arc<UserEncoding>> = (0..args.memory_users as i64)
        .map(|i| (i, Arc::new(random_encoding(&m, &mut rng))))
        .collect();
    let (lk, wh) = time(&|id| mem[&id].clone(), args.memory_users, &mut rng);
    println!(
        "| memory (HashMap, f32) | {} | – | – | – | {:.1} | {:.1} | {:.3} | {:.3} | {:.0} (the map: {:.0}) |",
        args.memory_users,
        lk.0,
        lk.1,
        wh.0,
        wh.1,
        common::rss_mb(),
        common::rss_mb() - before
    );

    println!("\npeak RSS {:.0} MB", common::peak_rss_mb());
}
