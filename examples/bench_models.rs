//! Training throughput and peak memory of every model at a history length L, on synthetic data
//! built in memory at the peer harness's shapes. Prints a table.
//!
//! ```text
//! cargo run --release --example bench_models -- --model sdim --model eta --len 1000
//! cargo run --release --example bench_models -- --model dare --len 10000 --users 2000 --rows 20000
//! ```
//!
//! Data (as `../shared/peer/make_synth.py`): 100k items in 1,000 categories; every user has 4
//! interest categories, each behavior comes from one of them with probability 0.7; a training
//! row's history is its user's first `s` behaviors with `s` uniform in [⌈L/2⌉, L] (so the mean
//! length is 0.75·L, as the peer's); the target comes from an interest with probability 0.5 and is
//! clicked with probability sigmoid(−2 + 1.5·[target category in the history] + 3·(share of the
//! history in it)). Histories are stored once per user.
//!
//! Models, at the harness's common settings (32 dims per field, user id 32, DNN [200, 80] ReLU,
//! Adam 1e-3, clip 10, B = 1024), each as the harness configures FuxiCTR's: DIN [64] Dice; SDIM 2
//! hashes × 4 bits, no l2 norm; ETA 32 bits, top-k 50; SIM soft, top-k 50, auxiliary loss; TWIN
//! top-k 50; every two-stage model and SDIM with a short-term target attention over the last 50
//! (2 heads, 64 wide); DARE at its paper's settings (16 per field and position, top-k 20, aux).
//! Timed as the peer times it: one epoch, collation included, validation excluded.

use anyhow::Context;
use clap::Parser;
use lifelong::config::Config;
use lifelong::data::{Histories, Impressions};
use lifelong::embedding::VocabSizes;
use lifelong::train::Trainer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;

#[path = "common/mod.rs"]
mod common;
use common::peak_rss_mb;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Models to run (repeatable): din, sdim, eta, sim, twin, dare.
    #[arg(long = "model", default_values_t = vec!["sdim".to_string()])]
    models: Vec<String>,
    /// History length L.
    #[arg(long, default_value_t = 1000)]
    len: usize,
    /// Training rows (one epoch).
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Users (each with one history of L behaviors).
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Batch size (DARE's own setting, 2048, with --batch 2048).
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// A TOML config to run instead of the built-in one (its data and train.out are ignored).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to train: cpu, cuda or cuda:N (CUDA needs a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    device: lifelong::device::DeviceSpec,
    /// The parts' implementation: fused (CPU ops) or generic (candle ops; always on a GPU).
    #[arg(long, default_value = "fused")]
    ops: String,
    /// Run directory (checkpoints are written at the end of the epoch).
    #[arg(long, default_value = "target/bench-models")]
    out: PathBuf,
}

const ITEMS: usize = 100_000;
const CATES: usize = 1_000;

fn model_toml(name: &str) -> anyhow::Result<&'static str> {
    Ok(match name {
        "din" => {
            r#"kind = "din"
[model.embedding]
item_dim = 32
cate_dim = 32
user_dim = 32
[[model.aggregate]]
hidden = [64]
activation = "dice"
[model.head]
activation = "relu""#
        }
        "sdim" => {
            r#"kind = "sdim"
[model.embedding]
item_dim = 32
cate_dim = 32
user_dim = 32
[[model.aggregate]]
groups = 2
bits = 4
normalize = false
[[model.aggregate]]
window = { recent = 50 }
[model.head]
activation = "relu""#
        }
        "eta" => {
            r#"kind = "eta"
[model.embedding]
item_dim = 32
cate_dim = 32
user_dim = 32
[model.search]
bits = 32
k = 50
[model.head]
activation = "relu""#
        }
        "sim" => {
            r#"kind = "sim"
[model.embedding]
item_dim = 32
cate_dim = 32
user_dim = 32
[model.search]
k = 50
aux = { pooling = "raw", hidden = [200, 80], activation = "relu" }
[model.head]
activation = "relu""#
        }
        "twin" => {
            r#"kind = "twin"
[model.embedding]
item_dim = 32
cate_dim = 32
user_dim = 32
[model.head]
activation = "relu""#
        }
        "dare" => r#"kind = "dare""#,
        m => anyhow::bail!("unknown model {m} (din, sdim, eta, sim, twin, dare)"),
    })
}

fn config(args: &Args, name: &str) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::from_toml(&format!(
            "[data]\ndir = \"in-memory\"\nmax_len = {}\n[model]\n{}\n[train]\nepochs = 1\nbatch_size = {}\nlr = 1e-3\nsparse_lr = 1e-3\nclip_grad_norm = 10.0\npatience = 0\neval_batch_size = 1024\n",
            args.len,
            model_toml(name)?,
            args.batch
        ))?,
    };
    cfg.data.max_len = args.len;
    cfg.train.out = args.out.join(name);
    cfg.model.ops = match args.ops.as_str() {
        "fused" => lifelong::device::Ops::Fused,
        "generic" => lifelong::device::Ops::Generic,
        o => anyhow::bail!("--ops {o}: fused or generic"),
    };
    cfg.train.epochs = 1;
    cfg.train.batch_size = args.batch;
    // Validation batches no larger than training ones, so the peak RSS is the training step's.
    cfg.train.eval_batch_size = args.batch;
    Ok(cfg)
}

/// Users with 4 interests and histories of exactly `len` behaviors; rows as the module docs say.
fn data(users: usize, len: usize, rows: usize, seed: u64) -> (Histories, Impressions) {
    let cate_of = |item: u32| 2 + (item as usize - 2) % CATES;
    let item_in = |rng: &mut ChaCha8Rng, c: usize| -> u32 {
        // items 2.. with category (i - 2) % CATES
        let k = rng.random_range(0..ITEMS / CATES);
        (2 + (c - 2) + k * CATES) as u32
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut h = Histories {
        offsets: vec![0, 0, 0],
        ..Default::default()
    };
    let mut interests = Vec::with_capacity(users);
    for _ in 0..users {
        let mine: Vec<usize> = (0..4).map(|_| rng.random_range(2..2 + CATES)).collect();
        for t in 0..len {
            let c = if rng.random_bool(0.7) {
                mine[rng.random_range(0..4)]
            } else {
                rng.random_range(2..2 + CATES)
            };
            let it = item_in(&mut rng, c);
            h.items.push(it);
            h.cates.push(cate_of(it) as u32);
            h.ts.push(t as i64);
        }
        h.offsets.push(h.items.len() as u64);
        interests.push(mine);
    }
    let mut imp = Impressions::default();
    for _ in 0..rows {
        let u = rng.random_range(0..users);
        let s = rng.random_range(len.div_ceil(2)..=len);
        let c = if rng.random_bool(0.5) {
            interests[u][rng.random_range(0..4)]
        } else {
            rng.random_range(2..2 + CATES)
        };
        let it = item_in(&mut rng, c);
        let start = h.offsets[u + 2] as usize;
        let hist_c = &h.cates[start..start + s];
        let same = hist_c.iter().filter(|&&x| x as usize == c).count();
        let logit = -2.0 + 1.5 * (same > 0) as u8 as f64 + 3.0 * same as f64 / s as f64;
        let p = 1.0 / (1.0 + (-logit).exp());
        imp.label.push(rng.random_bool(p) as u8 as f32);
        imp.user.push((u + 2) as u32);
        imp.item.push(it);
        imp.cate.push(cate_of(it) as u32);
        imp.seq_len.push(s as u32);
    }
    (h, imp)
}

fn main() -> anyhow::Result<()> {
    lifelong::tune_runtime();
    let args = Args::parse();
    println!("machine: {}", common::machine());
    let (hist, imp) = data(args.users, args.len, args.rows, 1);
    let hist_mb = (hist.items.len() * 16) as f64 / 1e6;
    println!(
        "data: {} users × {} behaviors ({hist_mb:.0} MB of histories), {} training rows; RSS {:.0} MB",
        args.users,
        args.len,
        imp.len(),
        peak_rss_mb()
    );
    let vocab = VocabSizes {
        users: args.users + 2,
        items: ITEMS + 2,
        cates: CATES + 2,
    };
    // Validation (end of the epoch, not timed) on the first training rows: it only exercises
    // the path.
    let n_valid = 2000.min(imp.len());
    let valid = Arc::new(Impressions {
        label: imp.label[..n_valid].to_vec(),
        user: imp.user[..n_valid].to_vec(),
        item: imp.item[..n_valid].to_vec(),
        cate: imp.cate[..n_valid].to_vec(),
        seq_len: imp.seq_len[..n_valid].to_vec(),
        history: Vec::new(),
        ts: Vec::new(),
    });
    let (hist, imp) = (Arc::new(hist), Arc::new(imp));
    let device = args.device.open()?;
    let mut rows = Vec::new();
    for name in &args.models {
        let cfg = config(&args, name)?;
        let mut t =
            Trainer::from_parts(cfg.clone(), vocab, "bench".into(), &cfg.train.out, &device)
                .with_context(|| format!("building {name}"))?;
        t.progress = false;
        let s = t.fit(hist.clone(), imp.clone(), valid.clone())?;
        let tm = t.times;
        let steps = s.state.step.max(1) as f64;
        println!(
            "{name} L={} ({} {}): {:.0} samples/s; per step (ms): wait {:.1}, search {:.1}, gather {:.1}, forward {:.1}, backward {:.1}, update {:.1}; peak RSS so far {:.0} MB",
            args.len,
            args.device,
            cfg.model.ops.on(&device).name(),
            s.samples_per_sec(),
            1e3 * tm.wait / steps,
            1e3 * tm.search / steps,
            1e3 * tm.gather / steps,
            1e3 * tm.forward / steps,
            1e3 * tm.backward / steps,
            1e3 * tm.update / steps,
            peak_rss_mb()
        );
        let ops = cfg.model.ops.on(&device).name();
        rows.push((name.clone(), s.samples_per_sec(), peak_rss_mb(), ops));
    }
    // VmHWM is the process's peak: run one model per process for its own memory figure.
    println!("\n| model | L | device | ops | samples/s | peak RSS MB (cumulative) |");
    println!("|---|---|---|---|---|---|");
    for (n, sps, rss, ops) in rows {
        println!(
            "| {n} | {} | {} | {ops} | {sps:.0} | {rss:.0} |",
            args.len, args.device
        );
    }
    Ok(())
}
