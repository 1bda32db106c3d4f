//! Serving latency: one request = one user × `--candidates` candidates, through
//! `CtrModel::score_encoded` (what `serving::Scorer::score` runs), for SDIM, ETA, TWIN and DARE at their
//! preset sizes, with the user's encoding precomputed ("encoded") and computed in the request
//! from the raw history ("raw history": `encode_user` + score); then the same with 2 client
//! threads, and encoding throughput. Prints tables.
//!
//! ```text
//! RAYON_NUM_THREADS=1 taskset -c 0 cargo run --release --example bench_serve   # one core
//! cargo run --release --example bench_serve -- --clients 2 --len 10000           # throughput
//! ```
//!
//! Weights are the preset's random initialisation (latency does not depend on their values);
//! histories and candidates are uniform over 100,000 items in 1,000 categories.

use candle_core::Device;
use clap::Parser;
use lifelong::model::CtrModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// History lengths L.
    #[arg(long = "len", default_values_t = vec![1_000usize, 10_000, 100_000])]
    lens: Vec<usize>,
    /// Models.
    #[arg(long = "model", default_values_t = vec!["sdim".to_string(), "eta".to_string(), "twin".to_string(), "dare".to_string()])]
    models: Vec<String>,
    /// Candidates per request.
    #[arg(long, default_value_t = 1000)]
    candidates: usize,
    /// Requests timed per setting (after 3 warm-up requests).
    #[arg(long, default_value_t = 50)]
    requests: usize,
    /// Client threads scoring side by side (throughput).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Also time the eval path (`CtrModel::predict` on a batch of the candidates, each with its
    /// own copy of the history: no encoding, nothing shared) for L up to this (0: skip).
    #[arg(long, default_value_t = 10_000)]
    eval_path_up_to: usize,
    /// Users encoded for the encoding throughput (0: skip).
    #[arg(long, default_value_t = 2000)]
    encode_users: usize,
}

const ITEMS: usize = 100_000;
const CATES: usize = 1_000;

fn model(kind: &str, max_len: usize) -> CtrModel {
    common::preset_model(kind, max_len, ITEMS, CATES)
}

/// One core's f32 GEMM rate through candle (`[1000, 256] × [256, 256]`), GFLOP/s: the yardstick
/// for the requests' arithmetic.
fn gemm_rate() -> f64 {
    let a = candle_core::Tensor::randn(0f32, 1.0, (1000, 256), &Device::Cpu).expect("a");
    let b = candle_core::Tensor::randn(0f32, 1.0, (256, 256), &Device::Cpu).expect("b");
    let flops = 2.0 * 1000.0 * 256.0 * 256.0;
    let mut best = f64::INFINITY;
    for _ in 0..200 {
        let t = Instant::now();
        std::hint::black_box(a.matmul(&b).expect("matmul"));
        best = best.min(t.elapsed().as_secs_f64());
    }
    flops / best / 1e9
}

/// The request's dense arithmetic in FLOPs (a multiply and an add count two): the search's
/// scores `[C, w] × [w, L]` and the head's layers over every candidate. Left out: the parts'
/// attention over k or the short window and Dice (together under 10% at L = 10^4), and the
/// Hamming search's XOR + popcount (integer work, C·L words).
fn request_flops(m: &CtrModel, c: usize, l: usize) -> f64 {
    use lifelong::config::SearchConfig;
    let search = match &m.config().search {
        SearchConfig::Attention(a) => {
            2.0 * c as f64 * l as f64 * m.tables().view(a.view).width as f64
        }
        _ => 0.0,
    };
    let head: f64 = m
        .named_tensors()
        .expect("tensors")
        .iter()
        .filter(|(n, t)| n.starts_with("param/head.") && t.dims().len() == 2)
        .map(|(_, t)| 2.0 * c as f64 * t.elem_count() as f64)
        .sum();
    search + head
}

fn history(rng: &mut ChaCha8Rng, l: usize) -> (Vec<u32>, Vec<u32>) {
    (0..l)
        .map(|_| {
            let i = rng.random_range(2..ITEMS as u32 + 2);
            (i, 2 + i % CATES as u32)
        })
        .unzip()
}

fn main() {
    lifelong::tune_runtime();
    let args = Args::parse();
    println!("machine: {}", common::machine());
    println!(
        "rayon threads: {}, client threads: {}, candidates per request: {}\n",
        rayon::current_num_threads(),
        args.clients,
        args.candidates
    );
    let gemm = gemm_rate();
    println!("one core's f32 GEMM rate (candle, [1000, 256] × [256, 256]): {gemm:.1} GFLOP/s\n");
    println!("| model | L | encoded p50 ms | encoded p99 ms | raw history p50 ms | raw history p99 ms | eval path p50 ms | requests/s ({} clients, encoded) | dense GFLOP/request | at % of GEMM rate (p50) | largest Δp vs eval |", args.clients);
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for kind in &args.models {
        for &l in &args.lens {
            let m = model(kind, l);
            let (hi, hc) = history(&mut rng, l);
            let enc = m.encode_user(0, &hi, &hc).expect("encode");
            let (ci, cc) = history(&mut rng, args.candidates);
            let time = |f: &dyn Fn()| -> Vec<f64> {
                for _ in 0..3 {
                    f();
                }
                (0..args.requests)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect()
            };
            let encoded = common::percentiles(time(&|| {
                std::hint::black_box(m.score_encoded(&enc, &ci, &cc).expect("score"));
            }));
            let raw = common::percentiles(time(&|| {
                let e = m.encode_user(0, &hi, &hc).expect("encode");
                std::hint::black_box(m.score_encoded(&e, &ci, &cc).expect("score"));
            }));
            let (eval_path, eval_diff) = if l <= args.eval_path_up_to {
                let hist = vec![(&hi[..], &hc[..]); ci.len()];
                let batch =
                    lifelong::data::Batch::from_samples(&vec![0; ci.len()], &ci, &cc, &hist);
                let runs: Vec<f64> = (0..3)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(m.predict(&batch).expect("predict"));
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                let want = m.predict(&batch).expect("predict");
                let got = m.score_encoded(&enc, &ci, &cc).expect("score");
                let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (sig(g) - sig(w)).abs())
                    .fold(0f32, f32::max);
                (
                    format!("{:.1}", common::percentiles(runs).0),
                    format!("{worst:.1e}"),
                )
            } else {
                ("–".to_string(), "–".to_string())
            };
            // Throughput: `clients` threads each scoring back to back for ~2 s.
            let t0 = Instant::now();
            let per = (2.0 / (encoded.0 / 1e3)).ceil().max(5.0) as usize;
            (0..args.clients).into_par_iter().for_each(|_| {
                for _ in 0..per {
                    std::hint::black_box(m.score_encoded(&enc, &ci, &cc).expect("score"));
                }
            });
            let rps = (per * args.clients) as f64 / t0.elapsed().as_secs_f64();
            let flops = request_flops(&m, args.candidates, l);
            let at = flops / (encoded.0 / 1e3) / 1e9 / gemm * 100.0;
            println!(
                "| {kind} | {l} | {:.3} | {:.3} | {:.3} | {:.3} | {eval_path} | {rps:.0} | {:.3} | {at:.0}% | {eval_diff} |",
                encoded.0,
                encoded.1,
                raw.0,
                raw.1,
                flops / 1e9
            );
        }
    }
    if args.encode_users > 0 {
        println!("\n| model | users × L | users/s | behaviors/s |\n|---|---|---|---|");
        for kind in &args.models {
            let l = 1000;
            let m = model(kind, l);
            let users: Vec<(Vec<u32>, Vec<u32>)> = (0..args.encode_users)
                .map(|_| history(&mut rng, l))
                .collect();
            let t0 = Instant::now();
            users.par_iter().for_each(|(hi, hc)| {
                std::hint::black_box(m.encode_user(0, hi, hc).expect("encode"));
            });
            let secs = t0.elapsed().as_secs_f64();
            let n = args.encode_users as f64;
            println!(
                "| {kind} | {} × {l} | {:.0} | {:.3e} |",
                args.encode_users,
                n / secs,
                n * l as f64 / secs
            );
        }
    }
    println!("\npeak RSS {:.0} MB", common::peak_rss_mb());
}
