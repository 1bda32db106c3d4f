//! CPU search throughput: SimHash codes, Hamming top-k and score top-k per row of L behaviors,
//! as behaviors/s and GB/s against the copy bandwidth this program measures. Prints a table.
//!
//! ```text
//! cargo run --release --example bench_search
//! ```
//!
//! Each measurement covers about 2·10^7 behaviors (rows of L): the row-parallel CPU twins of the
//! CUDA kernels (`topk_rows`, `topk_hamming_rows`) and `SimHash::codes` on d = 64 f32 tokens,
//! 64-bit codes. Bytes counted are the bytes each op must read: the codes (8 B/behavior) for the
//! Hamming top-k, the scores (4 B) for the score top-k, the tokens (256 B) for SimHash.

use clap::Parser;
use lifelong::search::{topk_hamming_rows, topk_rows, SimHash};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Row lengths L.
    #[arg(long = "len", default_values_t = vec![1_000usize, 10_000, 100_000])]
    lens: Vec<usize>,
    /// k values.
    #[arg(long = "k", default_values_t = vec![50usize, 200])]
    ks: Vec<usize>,
    /// Behaviors per measurement.
    #[arg(long, default_value_t = 20_000_000)]
    behaviors: usize,
}

/// Best of `reps` runs, in seconds.
fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    lifelong::tune_runtime();
    let args = Args::parse();
    println!("machine: {}", common::machine());
    // Copy bandwidth: a 512 MB buffer copied (read + write), split across the threads.
    let n = 64 << 20;
    let src: Vec<u64> = (0..n as u64).collect();
    let mut dst = vec![0u64; n];
    let secs = time(5, || {
        use rayon::prelude::*;
        dst.par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
    });
    let copy_gbs = (n * 8) as f64 / secs / 1e9; // bytes read (= bytes written) per second
    println!("copy bandwidth: {copy_gbs:.1} GB/s read (+ as much written)");
    drop((src, dst));

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut out = Vec::new();
    // SimHash of d = 64 tokens into 64 bits.
    let (d, bits) = (64usize, 64usize);
    let m = 1usize << 20;
    let x: Vec<f32> = (0..m * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let h = SimHash::new(d, bits, 3);
    let secs = time(3, || {
        std::hint::black_box(h.codes(&x, m));
    });
    out.push((
        "SimHash d=64 → 64 bits".to_string(),
        0,
        0,
        m as f64 / secs,
        (m * d * 4) as f64 / secs / 1e9,
    ));
    for &l in &args.lens {
        let rows = (args.behaviors / l).max(1);
        let codes: Vec<u64> = (0..rows * l).map(|_| rng.random()).collect();
        let target: Vec<u64> = (0..rows).map(|_| rng.random()).collect();
        let scores: Vec<f32> = (0..rows * l).map(|_| rng.random_range(-4.0..4.0)).collect();
        for &k in &args.ks {
            let secs = time(3, || {
                std::hint::black_box(topk_hamming_rows(&target, &codes, l, 1, k));
            });
            let b = (rows * l) as f64;
            out.push((
                "Hamming top-k (64-bit)".into(),
                l,
                k,
                b / secs,
                b * 8.0 / secs / 1e9,
            ));
            let secs = time(3, || {
                std::hint::black_box(topk_rows(&scores, l, None, k));
            });
            out.push((
                "score top-k (f32)".into(),
                l,
                k,
                b / secs,
                b * 4.0 / secs / 1e9,
            ));
        }
    }
    println!("\n| op | L | k | behaviors/s | GB/s read | % of copy bandwidth |");
    println!("|---|---|---|---|---|---|");
    for (op, l, k, bps, gbs) in out {
        let (l, k) = if l == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (l.to_string(), k.to_string())
        };
        println!(
            "| {op} | {l} | {k} | {:.3e} | {gbs:.2} | {:.0}% |",
            bps,
            100.0 * gbs / copy_gbs
        );
    }
}
