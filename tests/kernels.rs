//! The kernel ops (`lifelong::kernels`) against brute-force references on the CPU (their CPU
//! twins, with the kernels' u32 layouts and ragged rows), the sources' limits against the host's,
//! every source through NVRTC (`nvrtc` feature), and, with the `cuda` feature on a machine with
//! a GPU, every kernel against its twin.

use candle_core::{DType, Device, Tensor};
use lifelong::kernels::{self, limits, NONE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gaussian(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Offsets of rows with the given lengths.
fn offsets_of(lens: &[usize]) -> Vec<u32> {
    let mut o = vec![0u32];
    for &l in lens {
        o.push(o[o.len() - 1] + l as u32);
    }
    o
}

fn u32s(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// References

/// Bits of SimHash by f64 dot products; `None` where the projection is too close to 0 to
/// call (f32 summation order decides those).
fn reference_bits(x: &[f32], r: &[f32], n: usize, d: usize, bits: usize) -> Vec<Option<bool>> {
    let mut out = Vec::with_capacity(n * bits);
    for i in 0..n {
        for b in 0..bits {
            let p: f64 = (0..d)
                .map(|c| x[i * d + c] as f64 * r[c * bits + b] as f64)
                .sum();
            out.push(if p.abs() < 1e-4 { None } else { Some(p > 0.0) });
        }
    }
    out
}

fn bit(codes: &[u32], words: usize, i: usize, b: usize) -> bool {
    codes[i * words + b / 32] >> (b % 32) & 1 == 1
}

/// Per row: all positions sorted by (distance ↑, position ↓), the first k, NONE-padded.
fn reference_hamming(
    target: &[u32],
    codes: &[u32],
    offsets: &[u32],
    w: usize,
    k: usize,
) -> Vec<u32> {
    let mut out = Vec::new();
    for r in 0..offsets.len() - 1 {
        let (s0, s1) = (offsets[r] as usize, offsets[r + 1] as usize);
        let mut all: Vec<(u32, usize)> = (s0..s1)
            .map(|j| {
                let d: u32 = (0..w)
                    .map(|i| (target[r * w + i] ^ codes[j * w + i]).count_ones())
                    .sum();
                (d.min(255), j - s0)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        for t in 0..k {
            out.push(all.get(t).map_or(NONE, |&(_, j)| j as u32));
        }
    }
    out
}

/// Per row: unmasked positions sorted by (score ↓ with -0 = 0 and NaN lowest, position ↓).
fn reference_topk(scores: &[f32], mask: Option<&[u8]>, len: usize, k: usize) -> Vec<u32> {
    let rank = |x: f32| {
        if x.is_nan() {
            f64::NEG_INFINITY
        } else {
            x as f64 + 0.0
        }
    };
    let mut out = Vec::new();
    for r in 0..scores.len() / len {
        let mut all: Vec<usize> = (0..len)
            .filter(|&j| mask.is_none_or(|m| m[r * len + j] != 0))
            .collect();
        all.sort_by(|&a, &b| {
            let (x, y) = (scores[r * len + a], scores[r * len + b]);
            // NaN below -inf too: NaN first by a flag.
            (!x.is_nan())
                .cmp(&!y.is_nan())
                .reverse()
                .then(rank(y).partial_cmp(&rank(x)).unwrap())
                .then(b.cmp(&a))
        });
        for t in 0..k {
            out.push(all.get(t).map_or(NONE, |&j| j as u32));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// CPU twins through the ops

#[test]
fn simhash_codes_match_f64_projections_in_every_input_dtype() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &(n, d, bits) in &[
        (37usize, 24usize, 64usize),
        (5, 7, 40),
        (70, 130, 96),
        (3, 16, 1),
    ] {
        let x = gaussian(&mut rng, n * d);
        let r = gaussian(&mut rng, d * bits);
        let words = bits.div_ceil(32);
        let xt = Tensor::from_vec(x.clone(), (n, d), &Device::Cpu).unwrap();
        let rt = Tensor::from_vec(r.clone(), (d, bits), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let xq = xt.to_dtype(dtype).unwrap();
            // The reference sees the values the op sees.
            let xs = f32s(&xq.to_dtype(DType::F32).unwrap());
            let codes = kernels::simhash_codes(&xq, &rt).unwrap();
            assert_eq!(codes.dims(), &[n, words]);
            let codes = u32s(&codes);
            let want = reference_bits(&xs, &r, n, d, bits);
            for i in 0..n {
                for b in 0..32 * words {
                    let got = bit(&codes, words, i, b);
                    if b >= bits {
                        assert!(!got, "padding bit {b} of row {i} is set");
                    } else if let Some(w) = want[i * bits + b] {
                        assert_eq!(got, w, "{dtype:?} n={n} d={d} bits={bits}: row {i} bit {b}");
                    }
                }
            }
        }
    }
}

#[test]
fn sdim_signatures_read_tau_bit_groups_across_words() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, w) = (9usize, 3usize);
    let codes: Vec<u32> = (0..n * w).map(|_| rng.random()).collect();
    let ct = Tensor::from_vec(codes.clone(), (n, w), &Device::Cpu).unwrap();
    // τ = 5 crosses the 32- and 64-bit word boundaries (bits 30..35 and 60..65).
    for &(g, tau) in &[(19usize, 5usize), (6, 16), (96, 1), (4, 3)] {
        let sigs = u32s(&kernels::sdim_signatures(&ct, g, tau).unwrap());
        for i in 0..n {
            for q in 0..g {
                let want: u32 = (0..tau)
                    .map(|t| (bit(&codes, w, i, q * tau + t) as u32) << t)
                    .sum();
                assert_eq!(sigs[i * g + q], want, "row {i} group {q} τ={tau}");
            }
        }
    }
    assert!(
        kernels::sdim_signatures(&ct, 7, 14).is_err(),
        "7·14 > 96 bits"
    );
    assert!(kernels::sdim_signatures(&ct, 2, 17).is_err(), "τ > 16");
}

#[test]
fn topk_hamming_matches_sorting_on_ragged_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // Rows: empty, one, shorter than k, longer; words odd (the u64 twin pads) and 9 (288 bits,
    // where distances above 255 are capped and tie).
    let lens = [0usize, 1, 5, 300, 1000, 64];
    let offsets = offsets_of(&lens);
    let n = *offsets.last().unwrap() as usize;
    for &w in &[1usize, 3, 9] {
        let rows = lens.len();
        // Few distinct codes per word, so distances tie often.
        let mut codes: Vec<u32> = (0..n * w)
            .map(|_| rng.random::<u32>() & 0x0F0F_00FF)
            .collect();
        let target: Vec<u32> = (0..rows * w)
            .map(|_| rng.random::<u32>() & 0x0F0F_00FF)
            .collect();
        if w == 9 {
            // Some codes far from their target: distances past 255 must be capped (and tie).
            for r in 0..rows {
                for j in offsets[r] as usize..offsets[r + 1] as usize {
                    if j % 3 == 0 {
                        for i in 0..w {
                            codes[j * w + i] = !target[r * w + i];
                        }
                    }
                }
            }
        }
        let tt = Tensor::from_vec(target.clone(), (rows, w), &Device::Cpu).unwrap();
        let ct = Tensor::from_vec(codes.clone(), (n, w), &Device::Cpu).unwrap();
        for &k in &[1usize, 7, 64, 1024] {
            let got = kernels::topk_hamming(&tt, &ct, &offsets, k).unwrap();
            assert_eq!(got.dims(), &[rows, k]);
            assert_eq!(
                u32s(&got),
                reference_hamming(&target, &codes, &offsets, w, k),
                "words {w}, k {k}"
            );
        }
    }
}

#[test]
fn topk_scores_match_sorting_with_masks_nan_and_ties() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for &(rows, len) in &[(3usize, 1usize), (4, 37), (2, 5000), (5, 20_000)] {
        let mut scores = gaussian(&mut rng, rows * len);
        // Ties (scores rounded to a coarse grid), -0.0 against 0.0, NaN.
        for (j, s) in scores.iter_mut().enumerate() {
            match j % 11 {
                0 => *s = (*s * 4.0).round() / 4.0,
                1 => *s = -0.0,
                2 => *s = 0.0,
                3 if j % 7 == 0 => *s = f32::NAN,
                _ => {}
            }
        }
        let mask: Vec<u8> = (0..rows * len)
            .map(|_| rng.random_bool(0.7) as u8)
            .collect();
        let st = Tensor::from_vec(scores.clone(), (rows, len), &Device::Cpu).unwrap();
        let mt = Tensor::from_vec(mask.clone(), (rows, len), &Device::Cpu).unwrap();
        for &k in &[1usize, 3, 100, 1024] {
            let got = u32s(&kernels::topk_scores(&st, None, k).unwrap());
            assert_eq!(
                got,
                reference_topk(&scores, None, len, k),
                "{rows}×{len} k={k}"
            );
            let got = u32s(&kernels::topk_scores(&st, Some(&mt), k).unwrap());
            assert_eq!(
                got,
                reference_topk(&scores, Some(&mask), len, k),
                "{rows}×{len} k={k} masked"
            );
        }
    }
}

#[test]
fn sdim_sums_and_tables_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let lens = [0usize, 3, 40, 1, 200];
    let offsets = offsets_of(&lens);
    let (n, d, g, tau) = (*offsets.last().unwrap() as usize, 6usize, 5usize, 3usize);
    let rows = lens.len();
    let values = gaussian(&mut rng, n * d);
    let sigs: Vec<u32> = (0..n * g)
        .map(|_| rng.random_range(0..1u32 << tau))
        .collect();
    let target: Vec<u32> = (0..rows * g)
        .map(|_| rng.random_range(0..1u32 << tau))
        .collect();
    let vt = Tensor::from_vec(values.clone(), (n, d), &Device::Cpu).unwrap();
    let gt = Tensor::from_vec(sigs.clone(), (n, g), &Device::Cpu).unwrap();
    let tt = Tensor::from_vec(target.clone(), (rows, g), &Device::Cpu).unwrap();

    let sums = kernels::sdim_matched_sums(&vt, &gt, &tt, &offsets).unwrap();
    assert_eq!(sums.dims(), &[rows, g, d]);
    let table = kernels::sdim_bucket_table(&vt, &gt, &offsets, tau).unwrap();
    assert_eq!(table.dims(), &[rows, g, 1 << tau, d]);
    let (sums, table) = (f32s(&sums), f32s(&table));
    let nb = 1usize << tau;
    for r in 0..rows {
        for q in 0..g {
            for s in 0..nb {
                for c in 0..d {
                    let mut want = 0f64;
                    for j in offsets[r] as usize..offsets[r + 1] as usize {
                        if sigs[j * g + q] as usize == s {
                            want += values[j * d + c] as f64;
                        }
                    }
                    let got = table[((r * g + q) * nb + s) * d + c];
                    assert!(
                        (got as f64 - want).abs() < 1e-4,
                        "table r{r} g{q} s{s} c{c}"
                    );
                    if s == target[r * g + q] as usize {
                        let got = sums[(r * g + q) * d + c];
                        assert!((got as f64 - want).abs() < 1e-4, "sums r{r} g{q} c{c}");
                    }
                }
            }
        }
    }
    // A signature outside 2^τ is an error naming it, not a write out of bounds.
    let mut wrong = sigs.clone();
    wrong[7 * g + 2] = 1 << tau;
    let wt = Tensor::from_vec(wrong, (n, g), &Device::Cpu).unwrap();
    let err = kernels::sdim_bucket_table(&vt, &wt, &offsets, tau).unwrap_err();
    assert!(err.to_string().contains("row 7"), "{err}");
}

#[test]
fn kernel_ops_reject_bad_arguments_by_name() {
    let cpu = &Device::Cpu;
    let scores = Tensor::zeros((2, 10), DType::F32, cpu).unwrap();
    for k in [0, limits::TS_MAX_K + 1] {
        let e = kernels::topk_scores(&scores, None, k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k = "), "{e}");
    }
    let bad_mask = Tensor::zeros((2, 9), DType::U8, cpu).unwrap();
    let e = kernels::topk_scores(&scores, Some(&bad_mask), 3).unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");

    let t = Tensor::zeros((2, 1), DType::U32, cpu).unwrap();
    let c = Tensor::zeros((6, 1), DType::U32, cpu).unwrap();
    let e = kernels::topk_hamming(&t, &c, &[0, 4, 2], 3).unwrap_err();
    assert!(e.to_string().contains("offsets decrease at row 1"), "{e}");
    let e = kernels::topk_hamming(&t, &c, &[0, 4, 7], 3).unwrap_err();
    assert!(e.to_string().contains("past the 6"), "{e}");
    let wide = Tensor::zeros((6, limits::TH_MAX_WORDS + 1), DType::U32, cpu).unwrap();
    let wide_t = Tensor::zeros((2, limits::TH_MAX_WORDS + 1), DType::U32, cpu).unwrap();
    assert!(kernels::topk_hamming(&wide_t, &wide, &[0, 3, 6], 3).is_err());

    let x = Tensor::zeros((4, 8), DType::F32, cpu).unwrap();
    let r = Tensor::zeros((7, 32), DType::F32, cpu).unwrap();
    let e = kernels::simhash_codes(&x, &r).unwrap_err();
    assert!(e.to_string().contains("simhash_codes"), "{e}");
    let xi = Tensor::zeros((4, 8), DType::U32, cpu).unwrap();
    assert!(kernels::simhash_codes(&xi, &r).is_err(), "u32 input");

    let v = Tensor::zeros((6, limits::SD_SHARED_FLOATS), DType::F32, cpu).unwrap();
    let s = Tensor::zeros((6, 2), DType::U32, cpu).unwrap();
    assert!(
        kernels::sdim_bucket_table(&v, &s, &[0, 6], 2).is_err(),
        "d too wide"
    );
}

/// Empty inputs give empty outputs of the right shape (no kernel launch, no zero-byte
/// allocation, which CUDA refuses).
fn empty_inputs_give_empty_outputs(dev: &Device) {
    let x = Tensor::zeros((0, 8), DType::F32, dev).unwrap();
    let r = Tensor::ones((8, 40), DType::F32, dev).unwrap();
    assert_eq!(kernels::simhash_codes(&x, &r).unwrap().dims(), &[0, 2]);
    let codes = Tensor::zeros((0, 2), DType::U32, dev).unwrap();
    assert_eq!(
        kernels::sdim_signatures(&codes, 4, 3).unwrap().dims(),
        &[0, 4]
    );
    let t = Tensor::zeros((0, 2), DType::U32, dev).unwrap();
    assert_eq!(
        kernels::topk_hamming(&t, &codes, &[0], 5).unwrap().dims(),
        &[0, 5]
    );
    // Rows with no behaviors at all: every slot unused.
    let t2 = Tensor::zeros((2, 2), DType::U32, dev).unwrap();
    let got = kernels::topk_hamming(&t2, &codes, &[0, 0, 0], 3).unwrap();
    assert_eq!(u32s(&got.to_device(&Device::Cpu).unwrap()), vec![NONE; 6]);
    let s = Tensor::zeros((0, 10), DType::F32, dev).unwrap();
    assert_eq!(kernels::topk_scores(&s, None, 4).unwrap().dims(), &[0, 4]);
    let v = Tensor::zeros((0, 3), DType::F32, dev).unwrap();
    let g = Tensor::zeros((0, 2), DType::U32, dev).unwrap();
    let tg = Tensor::zeros((0, 2), DType::U32, dev).unwrap();
    assert_eq!(
        kernels::sdim_matched_sums(&v, &g, &tg, &[0])
            .unwrap()
            .dims(),
        &[0, 2, 3]
    );
    assert_eq!(
        kernels::sdim_bucket_table(&v, &g, &[0], 2).unwrap().dims(),
        &[0, 2, 4, 3]
    );
}

#[test]
fn kernel_ops_on_empty_inputs() {
    empty_inputs_give_empty_outputs(&Device::Cpu);
}

#[test]
fn kernel_sources_define_the_limits_the_host_checks() {
    for &(file, name, value) in limits::DEFINED {
        let src = kernels::SOURCES.iter().find(|s| s.file == file).unwrap();
        let line = src
            .code
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
            .unwrap_or_else(|| panic!("{file} has no #define {name}"));
        let v: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(v, value, "{file}: {name}");
    }
    // Every declared function is defined as a kernel in its file, and nothing else is.
    for src in kernels::SOURCES {
        let defined: Vec<&str> = src
            .code
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| rest.split('(').next().unwrap().trim())
            .collect();
        assert_eq!(defined, src.functions, "{}", src.file);
    }
}

// ---------------------------------------------------------------------------------------------
// NVRTC: every source compiles (no GPU needed)

#[cfg(feature = "nvrtc")]
mod nvrtc {
    use super::kernels;
    use std::path::PathBuf;
    use std::process::Command;

    const WHEEL: &str = "nvidia-cuda-nvrtc==13.0.88";

    /// A folder holding libnvrtc.so.13: `LIFELONG_NVRTC_LIB`, else NVIDIA's wheel installed once
    /// under the target folder.
    fn nvrtc_lib() -> PathBuf {
        if let Some(dir) = std::env::var_os("LIFELONG_NVRTC_LIB") {
            return dir.into();
        }
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nvrtc-13.0.88");
        let lib = root.join("nvidia/cu13/lib");
        if !lib.join("libnvrtc.so.13").exists() {
            let out = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
                .arg(&root)
                .arg(WHEEL)
                .output()
                .expect("python3 (for pip) not found");
            assert!(
                out.status.success(),
                "pip install {WHEEL} failed (set LIFELONG_NVRTC_LIB to a folder with \
                 libnvrtc.so.13 instead): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            lib.join("libnvrtc.so.13").exists(),
            "{lib:?} has no libnvrtc.so.13"
        );
        lib
    }

    /// libnvrtc is found through the library path, which a process reads when it starts: so
    /// this test runs [`compile_every_source`] in a child of this test binary.
    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        if kernels::nvrtc::available() {
            return compile_every_source_here();
        }
        let lib = nvrtc_lib();
        let path = match std::env::var_os("LD_LIBRARY_PATH") {
            Some(p) => format!("{}:{}", lib.display(), p.to_string_lossy()),
            None => lib.display().to_string(),
        };
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kernels::nvrtc::compile_every_source",
                "--ignored",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env("LD_LIBRARY_PATH", path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "NVRTC check failed:\n{text}"
        );
    }

    #[test]
    #[ignore = "run by every_kernel_compiles_with_nvrtc, with libnvrtc on the library path"]
    fn compile_every_source() {
        compile_every_source_here();
    }

    fn compile_every_source_here() {
        assert!(kernels::nvrtc::available(), "libnvrtc not loadable");
        // The lowest architecture the kernels need and the lent GPU's (H200: 9.0).
        for arch in [kernels::nvrtc::MIN_ARCH, (9, 0)] {
            for src in kernels::SOURCES {
                let ptx = kernels::nvrtc::compile(src, arch).unwrap_or_else(|e| panic!("{e}"));
                let target = format!(".target sm_{}{}", arch.0, arch.1);
                assert!(ptx.contains(&target), "{}: no `{target}`", src.file);
                for f in src.functions {
                    assert!(
                        ptx.contains(&format!(".entry {f}(")),
                        "{}: no kernel {f} in the PTX",
                        src.file
                    );
                }
                // Nothing spills to local memory (a slow kernel that still compiles).
                assert!(
                    !ptx.contains(".local"),
                    "{}: local memory in the PTX",
                    src.file
                );
            }
        }
        // The check can fail: a source with an error is reported with the file and NVRTC's log.
        let broken = kernels::Source {
            file: "broken.cu",
            code: "extern \"C\" __global__ void f(int *x) { x[0] = undeclared; }",
            functions: &["f"],
        };
        let e = kernels::nvrtc::compile(&broken, (9, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken.cu") && e.contains("undeclared"), "{e}");
        println!("NVRTC {} sources OK", kernels::SOURCES.len());
    }
}

// ---------------------------------------------------------------------------------------------
// On a GPU (`cuda` feature): every kernel against its CPU twin. Not run in CI (no GPU there);
// `benches/gpu_check.sh` runs these on a lent machine.

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    fn cuda() -> Device {
        Device::new_cuda(0).expect("the cuda tests need a GPU")
    }

    /// Asserts `got == want`, naming the case and the first differing index with both values
    /// (a whole-vector message would not fit the device tool's output tail).
    fn same(got: &[u32], want: &[u32], case: &str) {
        assert_eq!(got.len(), want.len(), "{case}: lengths");
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!("{case}: entry {i}: gpu {} cpu {}", got[i], want[i]);
        }
    }

    /// Fills and frees a buffer of `n` u32 with a poison value first, so an output the kernel
    /// forgets to write shows up (the stream-ordered allocator hands the same memory back).
    fn poison(dev: &Device, n: usize) {
        let p = Tensor::full(0xDEAD_BEEFu32, n.max(1), dev).unwrap();
        dev.synchronize().unwrap();
        drop(p);
    }

    #[test]
    fn simhash_codes_and_signatures_on_gpu_equal_cpu() {
        let dev = cuda();
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for &(n, d, bits) in &[
            (1usize, 3usize, 1usize),
            (33, 64, 64),
            (1000, 130, 96),
            (4097, 32, 256),
        ] {
            let x = Tensor::from_vec(gaussian(&mut rng, n * d), (n, d), &Device::Cpu).unwrap();
            let r =
                Tensor::from_vec(gaussian(&mut rng, d * bits), (d, bits), &Device::Cpu).unwrap();
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let xq = x.to_dtype(dt).unwrap();
                let proj = f32s(&xq.to_dtype(DType::F32).unwrap().matmul(&r).unwrap());
                let want = u32s(&kernels::simhash_codes(&xq, &r).unwrap());
                poison(&dev, want.len());
                let got = kernels::simhash_codes(
                    &xq.to_device(&dev).unwrap(),
                    &r.to_device(&dev).unwrap(),
                )
                .unwrap();
                let got = u32s(&got.to_device(&Device::Cpu).unwrap());
                let words = bits.div_ceil(32);
                for i in 0..n {
                    for b in 0..32 * words {
                        let (g, w) = (bit(&got, words, i, b), bit(&want, words, i, b));
                        // Summation order may flip a projection within rounding of 0.
                        if g != w {
                            let p = if b < bits {
                                proj[i * bits + b].abs()
                            } else {
                                f32::INFINITY
                            };
                            assert!(
                                p < 1e-3 * (d as f32).sqrt() * 4.0,
                                "{dt:?} {n}×{d}→{bits}: row {i} bit {b}"
                            );
                        }
                    }
                }
            }
            let codes = kernels::simhash_codes(&x, &r).unwrap();
            for &(g, tau) in &[
                (bits.min(16), 1usize),
                ((bits / 3).max(1), 3usize.min(bits)),
            ] {
                let want = u32s(&kernels::sdim_signatures(&codes, g, tau).unwrap());
                poison(&dev, want.len());
                let got =
                    kernels::sdim_signatures(&codes.to_device(&dev).unwrap(), g, tau).unwrap();
                same(
                    &u32s(&got.to_device(&Device::Cpu).unwrap()),
                    &want,
                    &format!("signatures G={g} τ={tau}"),
                );
            }
        }
    }

    #[test]
    fn topk_hamming_on_gpu_equals_cpu() {
        let dev = cuda();
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for &(b, len) in &[
            (3usize, 1usize),
            (7, 31),
            (5, 257),
            (64, 10_000),
            (4, 100_000),
        ] {
            let lens: Vec<usize> = (0..b)
                .map(|r| {
                    if r == 0 {
                        len
                    } else {
                        rng.random_range(0..=len)
                    }
                })
                .collect();
            let offsets = offsets_of(&lens);
            let n = *offsets.last().unwrap() as usize;
            for &w in &[1usize, 2, 9] {
                // Masked codes: many equal distances, so the tie rule is exercised.
                let codes: Vec<u32> = (0..n * w)
                    .map(|_| rng.random::<u32>() & 0x0101_0F0F)
                    .collect();
                let target: Vec<u32> = (0..b * w)
                    .map(|_| rng.random::<u32>() & 0x0101_0F0F)
                    .collect();
                let ct = Tensor::from_vec(codes, (n, w), &Device::Cpu).unwrap();
                let tt = Tensor::from_vec(target, (b, w), &Device::Cpu).unwrap();
                let (cg, tg) = (ct.to_device(&dev).unwrap(), tt.to_device(&dev).unwrap());
                for &k in &[1usize, 7, 64, 1024] {
                    let want = u32s(&kernels::topk_hamming(&tt, &ct, &offsets, k).unwrap());
                    poison(&dev, want.len());
                    let got = kernels::topk_hamming(&tg, &cg, &offsets, k).unwrap();
                    same(
                        &u32s(&got.to_device(&Device::Cpu).unwrap()),
                        &want,
                        &format!("{b}×{len} w={w} k={k}"),
                    );
                }
            }
        }
    }

    #[test]
    fn topk_scores_on_gpu_equal_cpu() {
        let dev = cuda();
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for &(b, len) in &[
            (3usize, 1usize),
            (5, 33),
            (9, 2049),
            (64, 10_000),
            (4, 100_000),
        ] {
            for ties in [false, true] {
                let mut scores = gaussian(&mut rng, b * len);
                if ties {
                    // Few distinct values: every bin crowded, the refinement passes run.
                    scores.iter_mut().for_each(|s| *s = (*s * 2.0).round());
                    scores[0] = f32::NAN;
                    scores[len / 2] = -0.0;
                }
                let mask: Vec<u8> = (0..b * len).map(|_| rng.random_bool(0.8) as u8).collect();
                let st = Tensor::from_vec(scores, (b, len), &Device::Cpu).unwrap();
                let mt = Tensor::from_vec(mask, (b, len), &Device::Cpu).unwrap();
                let (sg, mg) = (st.to_device(&dev).unwrap(), mt.to_device(&dev).unwrap());
                for &k in &[1usize, 7, 64, 1024] {
                    for masked in [false, true] {
                        let m = |t: &Tensor| if masked { Some(t.clone()) } else { None };
                        let want = u32s(&kernels::topk_scores(&st, m(&mt).as_ref(), k).unwrap());
                        poison(&dev, want.len());
                        let got = kernels::topk_scores(&sg, m(&mg).as_ref(), k).unwrap();
                        same(
                            &u32s(&got.to_device(&Device::Cpu).unwrap()),
                            &want,
                            &format!("{b}×{len} k={k} ties={ties} masked={masked}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_ops_on_empty_inputs_on_gpu() {
        empty_inputs_give_empty_outputs(&cuda());
    }

    #[test]
    fn bucket_table_on_gpu_rejects_a_signature_out_of_range() {
        let dev = cuda();
        let v = Tensor::ones((5, 4), DType::F32, &dev).unwrap();
        let mut sigs = vec![1u32; 10];
        sigs[7] = 8; // τ = 3: 8 is outside 0..8
        let g = Tensor::from_vec(sigs, (5, 2), &Device::Cpu)
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let e = kernels::sdim_bucket_table(&v, &g, &[0, 2, 5], 3).unwrap_err();
        assert!(e.to_string().contains("2^τ"), "{e}");
    }

    #[test]
    fn sdim_sums_and_tables_on_gpu_equal_cpu() {
        let dev = cuda();
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        // (d, G, τ): small, a group chunk past 32, a table too large for shared memory.
        for &(d, g, tau) in &[(5usize, 3usize, 2usize), (64, 40, 3), (96, 4, 6)] {
            let lens: Vec<usize> = vec![0, 1, 33, 1000, 5000];
            let offsets = offsets_of(&lens);
            let n = *offsets.last().unwrap() as usize;
            let rows = lens.len();
            let vt = Tensor::from_vec(gaussian(&mut rng, n * d), (n, d), &Device::Cpu).unwrap();
            let sg: Vec<u32> = (0..n * g)
                .map(|_| rng.random_range(0..1u32 << tau))
                .collect();
            let tg: Vec<u32> = (0..rows * g)
                .map(|_| rng.random_range(0..1u32 << tau))
                .collect();
            let gt = Tensor::from_vec(sg, (n, g), &Device::Cpu).unwrap();
            let tt = Tensor::from_vec(tg, (rows, g), &Device::Cpu).unwrap();
            let (vd, gd, td) = (
                vt.to_device(&dev).unwrap(),
                gt.to_device(&dev).unwrap(),
                tt.to_device(&dev).unwrap(),
            );
            let close = |got: Vec<f32>, want: Vec<f32>, what: &str| {
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{what} d={d} G={g} τ={tau}: entry {i}: {a} vs {b}"
                    );
                }
            };
            let want = f32s(&kernels::sdim_matched_sums(&vt, &gt, &tt, &offsets).unwrap());
            poison(&dev, want.len());
            let got = kernels::sdim_matched_sums(&vd, &gd, &td, &offsets).unwrap();
            close(
                f32s(&got.to_device(&Device::Cpu).unwrap()),
                want,
                "matched sums",
            );
            let want = f32s(&kernels::sdim_bucket_table(&vt, &gt, &offsets, tau).unwrap());
            poison(&dev, want.len());
            let got = kernels::sdim_bucket_table(&vd, &gd, &offsets, tau).unwrap();
            close(
                f32s(&got.to_device(&Device::Cpu).unwrap()),
                want,
                "bucket table",
            );
        }
    }
}
