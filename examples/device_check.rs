//! Every preset trained for the same steps on two devices (or two implementations), step by
//! step on the same batches from the same initial weights: the loss curves side by side, and a
//! non-zero exit when they part.
//!
//! The rule: over the first fifth of the steps the losses agree within `--tol-early` (one
//! step's rounding differences are ~1e-7; Adam's normalised updates, top-k and hash buckets
//! then amplify them, so free-running curves part slowly: measured on the CPU, fused against
//! generic on batches of a few users, DARE's first 12 steps agree to the bit and step 43 differs
//! by 3e-2); the
//! means of the last tenth agree within `--tol-mean`; and every curve comes down.
//!
//! On a GPU machine (a `--features cuda` build; `benches/gpu_check.sh` runs it):
//!   `device_check --device cuda --against cpu`   (both on the generic path, the only one a GPU has)
//! Anywhere (the same harness, the two CPU paths against each other):
//!   `cargo run --release --example device_check -- --device cpu --ops generic --against-ops fused`
//!
//! Data: `lifelong synth` + `prepare` into `--work` (users × up to `--len` behaviors).

use anyhow::{bail, Context};
use clap::Parser;
use lifelong::config::{Config, Preset};
use lifelong::data::batcher::collate;
use lifelong::data::{prepare, write_synth, Dataset, PrepareConfig, Split, SynthConfig};
use lifelong::device::{DeviceSpec, Ops};
use lifelong::train::Trainer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

#[derive(Parser, Debug)]
struct Args {
    /// The device under test.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Its implementation (a GPU always runs generic).
    #[arg(long, default_value = "generic")]
    ops: String,
    /// The reference device.
    #[arg(long, default_value = "cpu")]
    against: DeviceSpec,
    /// The reference's implementation.
    #[arg(long, default_value = "generic")]
    against_ops: String,
    /// Steps per preset.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// History length L (and data.max_len).
    #[arg(long, default_value_t = 200)]
    len: usize,
    /// Batch size.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Largest |loss − reference loss| over the first fifth of the steps.
    #[arg(long, default_value_t = 1e-3)]
    tol_early: f64,
    /// Largest difference of the two curves' means over the last tenth.
    #[arg(long, default_value_t = 3e-2)]
    tol_mean: f64,
    /// Presets (repeatable; default all six).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Scratch directory for the synthetic dataset.
    #[arg(long, default_value = "target/device-check")]
    work: PathBuf,
}

fn ops(s: &str) -> anyhow::Result<Ops> {
    Ok(match s {
        "fused" => Ops::Fused,
        "generic" => Ops::Generic,
        o => bail!("ops {o}: fused or generic"),
    })
}

fn main() -> anyhow::Result<()> {
    lifelong::tune_runtime();
    let args = Args::parse();
    println!("machine: {}", common::machine());
    let (dev, refdev) = (args.device.open()?, args.against.open()?);
    let (ops_a, ops_b) = (
        ops(&args.ops)?.on(&dev),
        ops(&args.against_ops)?.on(&refdev),
    );
    let data = args.work.join(format!("prepared-L{}", args.len));
    if !data.join("meta.json").is_file() {
        let synth = SynthConfig {
            users: 3000,
            items: 20_000,
            cates: 200,
            len: args.len,
            seed: 5,
        };
        let events = write_synth(&synth, &args.work.join(format!("events-L{}", args.len)))?;
        prepare(&events, &data, &PrepareConfig::default())?;
    }
    let ds = Dataset::open(&data)?;
    let train = ds.load_split(Split::Train)?;
    let need = args.steps * args.batch;
    if train.len() < need {
        bail!("{} training rows, {need} needed", train.len());
    }
    // Batches of rows drawn without replacement (one seeded shuffle), as training draws them:
    // consecutive rows would be a few users' and share most of their histories.
    let mut order: Vec<u32> = (0..train.len() as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(3));
    let batch_rows = |s: usize| order[s * args.batch..(s + 1) * args.batch].to_vec();
    let models: Vec<Preset> = if args.models.is_empty() {
        Preset::ALL.to_vec()
    } else {
        args.models
            .iter()
            .map(|m| {
                Preset::ALL
                    .into_iter()
                    .find(|p| p.name() == m)
                    .with_context(|| format!("unknown model {m}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    println!(
        "{} ({}) against {} ({}): {} steps of {} at L = {}; early steps within {:.0e}, last tenth's means within {:.0e}",
        args.device,
        ops_a.name(),
        args.against,
        ops_b.name(),
        args.steps,
        args.batch,
        args.len,
        args.tol_early,
        args.tol_mean
    );
    println!(
        "\n| model | first tenth's loss | last tenth's loss | reference's last tenth | max diff, first fifth | max diff, all | {} s | {} s |",
        args.device, args.against
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut failed = Vec::new();
    let mut leaf_mb = Vec::new();
    for p in models {
        let text = format!(
            "[data]\ndir = \"{}\"\nmax_len = {}\n[model]\nkind = \"{}\"\n[train]\nbatch_size = {}\nseed = 7\nlr = 0.002\nsparse_lr = 0.02\n",
            data.display(),
            args.len,
            p.name(),
            args.batch
        );
        let mut trainers = Vec::new();
        for (d, o) in [(&dev, ops_a), (&refdev, ops_b)] {
            let mut cfg = Config::from_toml(&text)?;
            cfg.model.ops = o;
            let out = args.work.join(format!("run-{}", p.name()));
            trainers.push(Trainer::new(cfg, &ds, &out, d)?);
        }
        let full = trainers[0].model().needs_full_ids();
        {
            // What the first step's leaf sends to the device and its gradient brings back.
            let batch = collate(&ds.histories, &train, &batch_rows(0), args.len, full);
            let m = trainers[0].model();
            let plan = m.plan(&batch)?;
            let (leaves, _) = m.leaves(&batch, &plan, true)?;
            leaf_mb.push((p.name(), 4.0 * leaves.len() as f64 / 1e6, batch.n_packed()));
        }
        let mut curves = [
            Vec::with_capacity(args.steps),
            Vec::with_capacity(args.steps),
        ];
        let mut secs = [0f64; 2];
        for s in 0..args.steps {
            let batch = collate(&ds.histories, &train, &batch_rows(s), args.len, full);
            for (i, t) in trainers.iter_mut().enumerate() {
                let t0 = Instant::now();
                curves[i].push(t.train_step(&batch)? as f64);
                secs[i] += t0.elapsed().as_secs_f64();
            }
        }
        let diff = |r: std::ops::Range<usize>| {
            r.map(|s| (curves[0][s] - curves[1][s]).abs())
                .fold(
                    0f64,
                    |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
                )
        };
        let n = args.steps;
        let (early, all) = (diff(0..(n / 5).max(1)), diff(0..n));
        let tenth = (n / 10).max(1);
        let mean = |c: &[f64], r: std::ops::Range<usize>| {
            c[r.clone()].iter().sum::<f64>() / r.len() as f64
        };
        let (first, last, ref_last) = (
            mean(&curves[0], 0..tenth),
            mean(&curves[0], n - tenth..n),
            mean(&curves[1], n - tenth..n),
        );
        println!(
            "| {} | {first:.5} | {last:.5} | {ref_last:.5} | {early:.2e} | {all:.2e} | {:.2} | {:.2} |",
            p.name(),
            secs[0],
            secs[1]
        );
        if early > args.tol_early || (last - ref_last).abs() > args.tol_mean || first <= last {
            failed.push(p.name());
        }
    }
    println!(
        "\n| model | behaviors in the first batch | leaf MB (up; its gradient, the same, down) |"
    );
    println!("|---|---|---|");
    for (m, mb, n) in leaf_mb {
        println!("| {m} | {n} | {mb:.2} |");
    }
    if !failed.is_empty() {
        bail!("loss curves apart (or not coming down): {failed:?}");
    }
    println!("\nall curves within the tolerances");
    Ok(())
}
