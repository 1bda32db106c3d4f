//! DIN training throughput at the peer harness's shapes, and how close the step is to the
//! machine's GEMM rate. Prints a table.
//!
//! ```text
//! cargo run --release --example bench_din -- --len 50 --len 200
//! ```
//!
//! Shapes (as `../shared/peer`'s FuxiCTR DIN): B = 1024, 200k training rows, 32 dims per field
//! (user id, item, category; a behavior is 64 wide), activation unit [64] with Dice, DNN
//! [200, 80] (ReLU), Adam 1e-3, gradient-norm clip 10. Every training row's history is cut to
//! exactly L (the peer's are uniform in [L/2, L], so ours are at least as long on average).
//! Timed as the peer times it: one training epoch including data loading and collation,
//! validation excluded. Peak RSS is the process's `ru_maxrss` (data generation runs in a child
//! process so it does not count).

use candle_core::{Device, Tensor};
use clap::Parser;
use lifelong::config::Config;
use lifelong::data::{
    prepare, write_synth, Dataset, Impressions, PrepareConfig, Split, SynthConfig,
};
use lifelong::train::Trainer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;
use common::peak_rss_mb;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// History lengths L to run (repeatable).
    #[arg(long = "len", default_values_t = vec![50usize, 200])]
    lens: Vec<usize>,
    /// Training rows per epoch.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Where the generated datasets are cached.
    #[arg(long, default_value = "target/bench-data")]
    cache: PathBuf,
    /// Internal: only generate the dataset for one L and exit.
    #[arg(long, hide = true)]
    generate_only: Option<usize>,
    /// Skip the GEMM-rate table.
    #[arg(long)]
    no_gemm: bool,
}

fn dataset_dir(cache: &Path, len: usize) -> PathBuf {
    cache.join(format!("din_L{len}"))
}

/// 6000 users with histories of 2L..4L behaviors; every training positive has at least L
/// behaviors before it (so its truncated history is exactly L); stride picks ~20 positives per
/// user, 1 popularity-sampled negative each: ≥ 200k training rows.
fn generate(cache: &Path, len: usize) -> lifelong::Result<()> {
    let dir = dataset_dir(cache, len);
    let synth = SynthConfig {
        users: 6000,
        items: 100_000,
        cates: 1000,
        len: 4 * len,
        seed: 1,
    };
    let events = write_synth(&synth, &dir.join("events"))?;
    let cfg = PrepareConfig {
        min_history: len,
        stride: (len / 10).max(1),
        ..PrepareConfig::default()
    };
    prepare(&events, &dir.join("prepared"), &cfg)?;
    Ok(())
}

fn gemm_gflops(m: usize, k: usize, n: usize) -> f64 {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
    let b = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
    let bt = b.t().unwrap();
    let _ = a.matmul(&bt).unwrap();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&bt).unwrap();
    }
    let secs = t.elapsed().as_secs_f64() / reps as f64;
    2.0 * (m * k * n) as f64 / secs / 1e9
}

fn config(data: &Path, len: usize, batch: usize, out: &Path) -> Config {
    let text = format!(
        r#"
[data]
dir = "{}"
max_len = {len}
[model]
kind = "din"
[model.embedding]
item_dim = 32
cate_dim = 32
user_dim = 32
[[model.aggregate]]
hidden = [64]
activation = "dice"
[model.head]
activation = "relu"
[train]
epochs = 1
batch_size = {batch}
lr = 1e-3
sparse_lr = 1e-3
clip_grad_norm = 10.0
patience = 0
eval_batch_size = 1024
out = "{}"
"#,
        data.display(),
        out.display()
    );
    Config::from_toml(&text).expect("bench config")
}

fn main() -> anyhow::Result<()> {
    lifelong::tune_runtime();
    let args = Args::parse();
    if let Some(len) = args.generate_only {
        generate(&args.cache, len)?;
        return Ok(());
    }
    println!("machine: {}", common::machine());

    let mut rows_out = Vec::new();
    for &len in &args.lens {
        let dir = dataset_dir(&args.cache, len);
        if !dir.join("prepared/meta.json").exists() {
            // Generate in a child process so its memory does not count in our peak RSS.
            let status = std::process::Command::new(std::env::current_exe()?)
                .args(["--generate-only", &len.to_string(), "--cache"])
                .arg(&args.cache)
                .status()?;
            anyhow::ensure!(status.success(), "generating the L={len} dataset failed");
        }
        let ds = Dataset::open(&dir.join("prepared"))?;
        let mut train = ds.load_split(Split::Train)?;
        anyhow::ensure!(
            train.len() >= args.rows,
            "only {} training rows at L={len}",
            train.len()
        );
        truncate(&mut train, args.rows);
        let mean_len = train
            .seq_len
            .iter()
            .map(|&s| s.min(len as u32) as f64)
            .sum::<f64>()
            / train.len() as f64;
        let valid = ds.load_split(Split::Valid)?;
        let out = args.cache.join(format!("run_L{len}"));
        let cfg = config(&ds.dir, len, args.batch, &out);
        let mut trainer = Trainer::new(cfg, &ds, &out, &Device::Cpu)?;
        trainer.progress = false;
        let s = trainer.fit(ds.histories.clone(), Arc::new(train), Arc::new(valid))?;
        let tm = trainer.times;
        println!(
            "L={len} step phases (s): wait {:.2}, gather {:.2}, forward {:.2}, backward {:.2}, update {:.2}",
            tm.wait, tm.gather, tm.forward, tm.backward, tm.update
        );
        let auc = s
            .state
            .evals
            .last()
            .and_then(|e| e.valid.auc)
            .unwrap_or(f64::NAN);
        // Inference as the peer times it (`predict` over the test split, loading included).
        let test = Arc::new(ds.load_split(Split::Test)?);
        let t0 = Instant::now();
        let logits = lifelong::eval::predict(trainer.model(), &ds.histories.clone(), &test, 1024)?;
        let infer = logits.len() as f64 / t0.elapsed().as_secs_f64();
        println!(
            "L={len}: inference {infer:.0} samples/s over {} test rows",
            logits.len()
        );
        rows_out.push((len, mean_len, s.samples_per_sec(), s.train_secs, auc, infer));
        println!(
            "L={len}: {:.0} samples/s ({} samples in {:.1}s), mean history {mean_len:.1}, valid AUC {auc:.4}, peak RSS so far {:.0} MB",
            s.samples_per_sec(),
            s.samples,
            s.train_secs,
            peak_rss_mb()
        );
    }

    // FLOPs of the activation unit per training sample at L (d = 64, h = 64), as the fused
    // unit does them: the sample's target folded into the first layer (`M_b·e_j`), so
    // forward L·2·d·h + 2·d·h (t-term) + h·d (fold), backward 2·L·2·d·h (∂e and P_b).
    // The whole step's samples/s times the unit's FLOPs is a lower bound of the unit's rate.
    println!("\n| L | train samples/s | inference samples/s | mean hist | train s | valid AUC | unit GFLOP/sample fwd+bwd | unit GFLOP/s at the step's rate |");
    println!("|---|---|---|---|---|---|---|---|");
    let (d, h) = (64.0, 64.0);
    for (len, mean_len, sps, secs, auc, infer) in &rows_out {
        let l = *len as f64;
        let total = (3.0 * l * 2.0 * d * h + 3.0 * d * h) / 1e9;
        println!(
            "| {len} | {sps:.0} | {infer:.0} | {mean_len:.1} | {secs:.1} | {auc:.4} | {total:.5} | {:.1} |",
            total * sps
        );
    }
    if !args.no_gemm {
        println!(
            "\nGEMM rate of candle matmul at the activation unit's shapes (B = {}):",
            args.batch
        );
        println!("| shape | GFLOP/s |");
        println!("|---|---|");
        for &len in &args.lens {
            let m = args.batch * len;
            println!(
                "| [{m}×256]×[256×64] (the paper's first layer) | {:.1} |",
                gemm_gflops(m, 256, 64)
            );
            println!(
                "| [{m}×64]×[64×64] (the folded first layer's shape) | {:.1} |",
                gemm_gflops(m, 64, 64)
            );
        }
    }
    println!("\npeak RSS: {:.0} MB", peak_rss_mb());
    Ok(())
}

fn truncate(imp: &mut Impressions, n: usize) {
    imp.label.truncate(n);
    imp.user.truncate(n);
    imp.item.truncate(n);
    imp.cate.truncate(n);
    imp.seq_len.truncate(n);
}
