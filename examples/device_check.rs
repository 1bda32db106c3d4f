//! Every preset trained for the same steps on two devices (or two implementations), step by
//! step on the same batches from the same initial weights: the loss curves side by side, and a
//! non-zero exit when any step's losses differ by more than `--tol`.
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
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Largest |loss − reference loss| allowed at any step.
    #[arg(long, default_value_t = 2e-3)]
    tol: f64,
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
        "{} ({}) against {} ({}): {} steps of {} at L = {}, tolerance {:.0e}",
        args.device,
        ops_a.name(),
        args.against,
        ops_b.name(),
        args.steps,
        args.batch,
        args.len,
        args.tol
    );
    println!("\n| model | first tenth's loss | last tenth's loss | max abs diff | at step | {} s | {} s |", args.device, args.against);
    println!("|---|---|---|---|---|---|---|");
    let mut failed = Vec::new();
    for p in models {
        let text = format!(
            "[data]\ndir = \"{}\"\nmax_len = {}\n[model]\nkind = \"{}\"\n[train]\nbatch_size = {}\nseed = 7\n",
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
        let (mut worst, mut at) = (0f64, 0usize);
        let mut curve = Vec::with_capacity(args.steps);
        let mut secs = [0f64; 2];
        for s in 0..args.steps {
            let rows: Vec<u32> = ((s * args.batch) as u32..((s + 1) * args.batch) as u32).collect();
            let batch = collate(&ds.histories, &train, &rows, args.len, full);
            let mut losses = [0f32; 2];
            for (i, t) in trainers.iter_mut().enumerate() {
                let t0 = Instant::now();
                losses[i] = t.train_step(&batch)?;
                secs[i] += t0.elapsed().as_secs_f64();
            }
            let d = (losses[0] as f64 - losses[1] as f64).abs();
            if d > worst || !d.is_finite() {
                (worst, at) = (if d.is_finite() { d } else { f64::INFINITY }, s);
            }
            curve.push(losses[0] as f64);
        }
        // Means of the first and the last tenth: the curve must come down.
        let tenth = (args.steps / 10).max(1);
        let first = curve[..tenth].iter().sum::<f64>() / tenth as f64;
        let last = curve[curve.len() - tenth..].iter().sum::<f64>() / tenth as f64;
        println!(
            "| {} | {first:.5} | {last:.5} | {worst:.2e} | {at} | {:.2} | {:.2} |",
            p.name(),
            secs[0],
            secs[1]
        );
        if worst > args.tol || first <= last {
            failed.push(p.name());
        }
    }
    if !failed.is_empty() {
        bail!(
            "loss curves apart by more than {:.0e} (or not decreasing): {failed:?}",
            args.tol
        );
    }
    println!("\nall curves within {:.0e}", args.tol);
    Ok(())
}
