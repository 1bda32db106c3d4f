//! Throughput of the kernel ops (`lifelong::kernels`) against their byte floors. Prints a table.
//!
//! ```text
//! cargo run --release --example bench_kernels                      # the CPU twins
//! cargo run --release --features cuda --example bench_kernels -- --device cuda --dump DIR
//! ```
//!
//! Each row times one op on fresh random inputs (never zeros) and reports the time per call and
//! the achieved GB/s of the bytes the op must move at least (inputs read once, outputs written
//! once). On CUDA the time comes from device events around `--reps` calls, and the table starts
//! with the card's copy bandwidth (a device-to-device copy, read + write counted), so each
//! kernel's share of it can be read off. `--dump DIR` writes the score top-k inputs as raw f32
//! (`scores_<rows>x<L>.f32`) for `benches/torch_topk.py`, which times `torch.topk` on them.

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lifelong::kernels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// `cpu` or `cuda` (the latter needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Calls per timing.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also run L = 100,000 (the lifelong case; slow on a CPU).
    #[arg(long)]
    long: bool,
    /// Write the score top-k inputs here for `benches/torch_topk.py`.
    #[arg(long)]
    dump: Option<PathBuf>,
}

fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => anyhow::bail!("--device {other}: want cpu or cuda"),
    }
}

/// Seconds per call of `f` (after one warm-up call), by device events on CUDA.
fn time(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<f64> {
    let _ = f()?;
    dev.synchronize()?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cd) = dev {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        let stream = cd.cuda_stream();
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let mut keep = Vec::with_capacity(reps);
        for _ in 0..reps {
            keep.push(f()?);
        }
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        end.synchronize()?;
        return Ok(start.elapsed_ms(&end)? as f64 / 1e3 / reps as f64);
    }
    let t = Instant::now();
    for _ in 0..reps {
        let _ = f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

struct Row {
    op: String,
    shape: String,
    secs: f64,
    bytes: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dev = device(&args.device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut normal = ChaCha8Rng::seed_from_u64(8);
    let mut rows = Vec::new();
    let mut gauss = |n: usize| -> Vec<f32> {
        use rand_distr::{Distribution, StandardNormal};
        (0..n).map(|_| StandardNormal.sample(&mut normal)).collect()
    };

    #[allow(unused_mut)]
    let mut copy_gbs: Option<f64> = None;
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        // The card's copy bandwidth: 1 GiB device to device (read + write).
        let n = 1usize << 28;
        let a = Tensor::ones(n, DType::F32, &dev)?;
        let secs = time(&dev, args.reps, || Ok(a.copy()?))?;
        copy_gbs = Some(2.0 * 4.0 * n as f64 / secs / 1e9);
        rows.push(Row {
            op: "copy (d2d)".into(),
            shape: "1 GiB".into(),
            secs,
            bytes: 2.0 * 4.0 * n as f64,
        });
    }

    // SimHash: 1M behaviors of 64 floats, 64 bits.
    {
        let (n, d, bits) = (1usize << 20, 64usize, 64usize);
        let x = Tensor::from_vec(gauss(n * d), (n, d), &Device::Cpu)?.to_device(&dev)?;
        let r = Tensor::from_vec(gauss(d * bits), (d, bits), &Device::Cpu)?.to_device(&dev)?;
        for dt in [DType::F32, DType::BF16] {
            let xq = x.to_dtype(dt)?;
            let secs = time(&dev, args.reps, || Ok(kernels::simhash_codes(&xq, &r)?))?;
            let bytes = (n * d * dt.size_in_bytes() + n * bits / 8) as f64;
            rows.push(Row {
                op: format!("simhash {dt:?}"),
                shape: format!("{n}×{d}→{bits} bits"),
                secs,
                bytes,
            });
        }
    }

    let lens: Vec<usize> = if args.long {
        vec![1_000, 10_000, 100_000]
    } else {
        vec![1_000, 10_000]
    };
    for &len in &lens {
        // 1024 rows up to L = 10^4; 128 at 10^5 (the same bytes order).
        let b = if len >= 100_000 { 128 } else { 1024 };
        let n = b * len;
        let offsets: Vec<u32> = (0..=b).map(|r| (r * len) as u32).collect();

        // Hamming top-k over 64-bit codes.
        let words = 2usize;
        let codes: Vec<u32> = (0..n * words).map(|_| rng.random()).collect();
        let target: Vec<u32> = (0..b * words).map(|_| rng.random()).collect();
        let ct = Tensor::from_vec(codes, (n, words), &Device::Cpu)?.to_device(&dev)?;
        let tt = Tensor::from_vec(target, (b, words), &Device::Cpu)?.to_device(&dev)?;
        for k in [64usize, 1024] {
            let secs = time(&dev, args.reps, || {
                Ok(kernels::topk_hamming(&tt, &ct, &offsets, k)?)
            })?;
            let bytes = (n * words * 4 + b * k * 4) as f64;
            rows.push(Row {
                op: "topk hamming".into(),
                shape: format!("{b}×{len}, k={k}"),
                secs,
                bytes,
            });
        }

        // Score top-k.
        let scores = gauss(n);
        if let Some(dir) = &args.dump {
            std::fs::create_dir_all(dir)?;
            let raw: Vec<u8> = scores.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("scores_{b}x{len}.f32")), raw)?;
        }
        let st = Tensor::from_vec(scores, (b, len), &Device::Cpu)?.to_device(&dev)?;
        for k in [64usize, 1024] {
            let secs = time(&dev, args.reps, || Ok(kernels::topk_scores(&st, None, k)?))?;
            let bytes = (n * 4 + b * k * 4) as f64;
            rows.push(Row {
                op: "topk scores".into(),
                shape: format!("{b}×{len}, k={k}"),
                secs,
                bytes,
            });
        }

        // SDIM: d = 64, G = 16 groups of τ = 3 bits.
        if len <= 10_000 {
            let (d, g, tau) = (64usize, 16usize, 3usize);
            let values = Tensor::from_vec(gauss(n * d), (n, d), &Device::Cpu)?.to_device(&dev)?;
            let sigs: Vec<u32> = (0..n * g)
                .map(|_| rng.random_range(0..1u32 << tau))
                .collect();
            let ts: Vec<u32> = (0..b * g)
                .map(|_| rng.random_range(0..1u32 << tau))
                .collect();
            let gt = Tensor::from_vec(sigs, (n, g), &Device::Cpu)?.to_device(&dev)?;
            let tt = Tensor::from_vec(ts, (b, g), &Device::Cpu)?.to_device(&dev)?;
            let secs = time(&dev, args.reps, || {
                Ok(kernels::sdim_matched_sums(&values, &gt, &tt, &offsets)?)
            })?;
            // Signatures all, values of the rows that hit a group (1 − (7/8)^16 = 88% here).
            let hit = 1.0 - (1.0 - 1.0 / (1u32 << tau) as f64).powi(g as i32);
            let bytes = (n * g * 4) as f64 + hit * (n * d * 4) as f64 + (b * g * d * 4) as f64;
            rows.push(Row {
                op: "sdim matched sums".into(),
                shape: format!("{b}×{len}, d={d}, G={g}"),
                secs,
                bytes,
            });
            let secs = time(&dev, args.reps, || {
                Ok(kernels::sdim_bucket_table(&values, &gt, &offsets, tau)?)
            })?;
            let bytes = (n * g * 4 + n * d * 4 + ((b * g * d * 4) << tau)) as f64;
            rows.push(Row {
                op: "sdim bucket table".into(),
                shape: format!("{b}×{len}, d={d}, G={g}, τ={tau}"),
                secs,
                bytes,
            });
        }
    }

    println!("| op | shape | ms per call | GB/s (byte floor) | of copy bandwidth |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let gbs = r.bytes / r.secs / 1e9;
        let share = copy_gbs.map_or("-".into(), |c| format!("{:.0}%", 100.0 * gbs / c));
        println!(
            "| {} | {} | {:.3} | {:.1} | {} |",
            r.op,
            r.shape,
            r.secs * 1e3,
            gbs,
            share
        );
    }
    Ok(())
}
