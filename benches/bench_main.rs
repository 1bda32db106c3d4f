//! Criterion benchmarks: the GEMM rate of candle at DIN's activation-unit shapes, and the
//! activation unit's forward + backward (fused CPU op) at B = 1024.
//!
//! ```text
//! cargo bench --bench bench_main
//! ```
//! The end-to-end training throughput against FuxiCTR is `examples/bench_din.rs`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lifelong::aggregate::{ActivationUnit, Packed};
use lifelong::config::Activation;
use lifelong::nn::ParamStore;

// The allocator and runtime settings of the `lifelong` binary and the examples (glibc's malloc
// returns the unit's tens-of-MB buffers to the OS every step, and every step faults them in).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn gemm(c: &mut Criterion) {
    lifelong::tune_runtime();
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    // [B·L, 4d]×[4d, h] (the paper's first layer) and [B·L, d]×[d, h] (the fused unit's, the
    // target folded in), B = 1024, L = 50 and 200.
    for (m, k, n) in [
        (51_200, 256, 64),
        (51_200, 64, 64),
        (204_800, 256, 64),
        (204_800, 64, 64),
    ] {
        let a = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., (n, k), &dev).unwrap().t().unwrap();
        g.throughput(Throughput::Elements((2 * m * k * n) as u64)); // FLOPs
        g.bench_function(format!("cpu_matmul_{m}x{k}x{n}"), |bch| {
            bch.iter(|| a.matmul(&b).unwrap())
        });
    }
    g.finish();
}

fn activation_unit(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (b, d, h) = (1024usize, 64usize, 64usize);
    let mut g = c.benchmark_group("din_activation_unit");
    g.sample_size(10);
    for l in [50usize, 200] {
        let n = b * l;
        let mut ps = ParamStore::new(dev.clone(), 1);
        let unit = ActivationUnit::new(&mut ps, "att", d, &[h], Activation::Dice, false, 1e-8, 0.1)
            .unwrap();
        let target = Var::from_tensor(&Tensor::randn(0f32, 1., (b, d), &dev).unwrap()).unwrap();
        let seq = Var::from_tensor(&Tensor::randn(0f32, 1., (n, d), &dev).unwrap()).unwrap();
        let packed = Packed::from_lens(&vec![l as u32; b]);
        // The FLOPs the fused unit does per sample: the target folded into the first layer,
        // forward L·2·d·h + 3·d·h, backward 2·L·2·d·h.
        let flops = b * (3 * l * 2 * d * h + 3 * d * h);
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(format!("cpu_fwd_bwd_b{b}_l{l}"), |bch| {
            bch.iter(|| {
                let u = unit
                    .forward_t(target.as_tensor(), seq.as_tensor(), &packed, true)
                    .unwrap();
                u.sum_all().unwrap().backward().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gemm, activation_unit);
criterion_main!(benches);
