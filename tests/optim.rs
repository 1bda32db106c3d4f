//! Row-wise sparse optimisers against dense Adam and hand-computed updates.

use candle_core::{Device, Tensor, Var};
use lifelong::config::{Init, SparseOptimizer};
use lifelong::embedding::{unique_remap, EmbeddingTable};
use lifelong::optim::{Adam, AdamParams, RowWise};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn table(rows: usize, dim: usize) -> EmbeddingTable {
    EmbeddingTable::new(
        "item",
        rows,
        dim,
        true,
        Init::Uniform { bound: 1.0 },
        &mut ChaCha8Rng::seed_from_u64(5),
    )
    .unwrap()
}

/// Sparse row-wise Adam on the touched rows gives what dense Adam over the whole table gives
/// after one step (whose gradient is zero on untouched rows), and untouched rows do not move.
#[test]
fn sparse_adam_matches_dense_adam_after_one_step() {
    let (rows, dim) = (10, 3);
    let mut sparse_t = table(rows, dim);
    let before = sparse_t.clone();
    let ids = [2u32, 5, 7];
    let grad_rows: Vec<f32> = vec![0.5, -1.0, 2.0, 0.1, 0.0, -0.3, 3.0, 1.0, -2.0];
    let p = AdamParams::with_lr(0.01);
    let mut opt = RowWise::new(SparseOptimizer::Adam, p);
    opt.update(&mut sparse_t, &ids, &grad_rows, 1.0).unwrap();

    // Dense Adam: the full table as one variable, gradient = grad_rows scattered into zeros
    // (loss = Σ table ⊙ G has ∂loss/∂table = G).
    let dense = Var::from_tensor(&before.to_tensor().unwrap()).unwrap();
    let mut g = vec![0f32; rows * dim];
    for (k, &id) in ids.iter().enumerate() {
        g[id as usize * dim..(id as usize + 1) * dim]
            .copy_from_slice(&grad_rows[k * dim..(k + 1) * dim]);
    }
    let gt = Tensor::from_vec(g, (rows, dim), &Device::Cpu).unwrap();
    let grads = (dense.as_tensor() * &gt)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut adam = Adam::new(vec![("t".into(), dense.clone())], p).unwrap();
    adam.step(&grads, 1.0).unwrap();
    let dense_after = dense
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();

    for r in 0..rows as u32 {
        let s = sparse_t.row(r);
        let d = &dense_after[r as usize * dim..(r as usize + 1) * dim];
        for j in 0..dim {
            assert!(
                (s[j] - d[j]).abs() < 1e-6,
                "row {r}: sparse {s:?} dense {d:?}"
            );
            // Independent expectation: after one step m̂/sqrt(v̂) = g/|g|, so w moves by
            // lr·g/(|g| + ε) (0 where g = 0), and untouched rows do not move at all.
            let k = ids.iter().position(|&i| i == r);
            let gj = k.map_or(0.0, |k| grad_rows[k * dim + j]);
            let expected = before.row(r)[j] - 0.01 * gj / (gj.abs() + 1e-8);
            assert!(
                (s[j] - expected).abs() < 1e-6,
                "row {r}[{j}]: {} vs {expected}",
                s[j]
            );
        }
    }
}

#[test]
fn sparse_adam_counts_steps_per_row() {
    // Row 3 is touched at steps 1 and 2, row 4 only at step 2: row 4's first update must be a
    // first-step update (bias correction with t = 1), i.e. lr·sign(g).
    let mut t = table(6, 2);
    let before = t.clone();
    let mut opt = RowWise::new(SparseOptimizer::Adam, AdamParams::with_lr(0.1));
    opt.update(&mut t, &[3], &[1.0, 1.0], 1.0).unwrap();
    opt.update(&mut t, &[3, 4], &[1.0, 1.0, -2.0, 4.0], 1.0)
        .unwrap();
    let r4 = t.row(4);
    assert!((r4[0] - (before.row(4)[0] + 0.1)).abs() < 1e-6);
    assert!((r4[1] - (before.row(4)[1] - 0.1)).abs() < 1e-6);
    // Row 3 had the same gradient twice: m̂ = g, v̂ = g², so each step moves it by lr.
    assert!((t.row(3)[0] - (before.row(3)[0] - 0.2)).abs() < 1e-5);
}

#[test]
fn rowwise_adagrad_matches_hand_computation() {
    let mut t = table(5, 2);
    let before = t.clone();
    let mut opt = RowWise::new(
        SparseOptimizer::Adagrad,
        AdamParams {
            eps: 1e-10,
            ..AdamParams::with_lr(0.5)
        },
    );
    // g = [3, 4]: acc = mean(g²) = 12.5, w -= 0.5·g/sqrt(12.5)
    opt.update(&mut t, &[1], &[3.0, 4.0], 1.0).unwrap();
    let s = 12.5f32.sqrt();
    assert!((t.row(1)[0] - (before.row(1)[0] - 0.5 * 3.0 / s)).abs() < 1e-6);
    assert!((t.row(1)[1] - (before.row(1)[1] - 0.5 * 4.0 / s)).abs() < 1e-6);
    // Second step with g = [1, 1]: acc = 12.5 + 1 = 13.5.
    let mid = t.row(1).to_vec();
    opt.update(&mut t, &[1], &[1.0, 1.0], 1.0).unwrap();
    assert!((t.row(1)[0] - (mid[0] - 0.5 / 13.5f32.sqrt())).abs() < 1e-6);
    assert_eq!(t.row(2), before.row(2));
}

#[test]
fn rowwise_never_touches_padding_and_rejects_bad_ids() {
    let mut t = table(4, 2);
    assert_eq!(t.row(0), &[0.0, 0.0]);
    let mut opt = RowWise::new(SparseOptimizer::Adam, AdamParams::with_lr(0.1));
    opt.update(&mut t, &[0, 1], &[1.0, 1.0, 1.0, 1.0], 1.0)
        .unwrap();
    assert_eq!(t.row(0), &[0.0, 0.0]);
    assert!(
        opt.update(&mut t, &[2, 1], &[0.0; 4], 1.0).is_err(),
        "unsorted ids"
    );
    assert!(
        opt.update(&mut t, &[1, 1], &[0.0; 4], 1.0).is_err(),
        "duplicate ids"
    );
    let e = opt
        .update(&mut t, &[9], &[0.0; 2], 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("item") && e.contains('9'), "{e}");
}

#[test]
fn unique_remap_maps_every_lookup_to_its_row() {
    let ids = [7u32, 3, 7, 0, 3, 9];
    let s = unique_remap(&ids);
    assert_eq!(*s.unique, vec![0, 3, 7, 9]);
    let back: Vec<u32> = s.local.iter().map(|&l| s.unique[l as usize]).collect();
    assert_eq!(back, ids);
}

/// Row 0 is padding in id tables (never updated) but a real row in the position table (the
/// target's position): both optimisers skip it only where the table has padding.
#[test]
fn row_zero_is_updated_only_without_padding() {
    for kind in [SparseOptimizer::Adam, SparseOptimizer::Adagrad] {
        for padding in [true, false] {
            let mut t = EmbeddingTable::new(
                "pos",
                4,
                2,
                padding,
                Init::Uniform { bound: 1.0 },
                &mut ChaCha8Rng::seed_from_u64(5),
            )
            .unwrap();
            let before = t.clone();
            let mut opt = RowWise::new(kind, AdamParams::with_lr(0.1));
            opt.update(&mut t, &[0, 2], &[1.0, -1.0, 0.5, 0.5], 1.0)
                .unwrap();
            // Row 0 moves by lr·g/|g| (Adam) or lr·g/sqrt(mean g²) (Adagrad) = ∓0.1 per entry.
            let moved = t.row(0) != before.row(0);
            assert_eq!(moved, !padding, "{kind:?} padding={padding}");
            if !padding {
                assert!((t.row(0)[0] - (before.row(0)[0] - 0.1)).abs() < 1e-5);
                assert!((t.row(0)[1] - (before.row(0)[1] + 0.1)).abs() < 1e-5);
            } else {
                assert!(t.row(0).iter().all(|&x| x == 0.0));
            }
            assert_ne!(t.row(2), before.row(2));
        }
    }
}

/// AdamW (decoupled weight decay) by hand over two steps: w ← w·(1 − lr·wd) − lr·m̂/(√v̂ + ε),
/// with a gradient of zero on the second entry (only the decay moves it) and a scaled
/// (clipped) gradient on the second step.
#[test]
fn adamw_decays_weights_and_scales_gradients_as_computed_by_hand() {
    let w0 = [1.0f32, -2.0];
    let g = [0.5f32, 0.0];
    let var = Var::from_slice(&w0, 2, &Device::Cpu).unwrap();
    let p = AdamParams {
        weight_decay: 0.01,
        ..AdamParams::with_lr(0.1)
    };
    let mut adam = Adam::new(vec![("w".into(), var.clone())], p).unwrap();
    let gt = Tensor::from_slice(&g, 2, &Device::Cpu).unwrap();
    let grads = || {
        (var.as_tensor() * &gt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    adam.step(&grads(), 1.0).unwrap();
    adam.step(&grads(), 0.5).unwrap();
    // By hand, in f64.
    let (b1, b2, eps, lr, wd) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64, 0.01f64);
    let mut want = [0f64; 2];
    for j in 0..2 {
        let (mut w, mut m, mut v) = (w0[j] as f64, 0f64, 0f64);
        for (t, scale) in [(1, 1.0f64), (2, 0.5)] {
            let gj = g[j] as f64 * scale;
            m = b1 * m + (1.0 - b1) * gj;
            v = b2 * v + (1.0 - b2) * gj * gj;
            let (mh, vh) = (m / (1.0 - b1.powi(t)), v / (1.0 - b2.powi(t)));
            w = w * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
        }
        want[j] = w;
    }
    let got = var.as_tensor().to_vec1::<f32>().unwrap();
    for j in 0..2 {
        assert!(
            (got[j] as f64 - want[j]).abs() < 1e-6,
            "entry {j}: {} vs {}",
            got[j],
            want[j]
        );
    }
    // The second entry moved by the decay alone: −2·(1 − 0.001)².
    assert!((want[1] + 2.0 * 0.999f64.powi(2)).abs() < 1e-12);
}

/// Dense Adam of a whole table in f64 by a plain loop (every element, every step; zero gradient
/// on the rows a step does not touch): the reference the catch-up must reproduce.
fn dense_adam_reference(w0: &[f32], grads: &[Vec<f32>], p: AdamParams) -> Vec<f64> {
    let mut w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0f64; w.len()], vec![0f64; w.len()]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for k in 0..w.len() {
            m[k] = p.beta1 * m[k] + (1.0 - p.beta1) * g[k] as f64;
            v[k] = p.beta2 * v[k] + (1.0 - p.beta2) * (g[k] as f64).powi(2);
            let mh = m[k] / (1.0 - p.beta1.powi(t));
            let vh = v[k] / (1.0 - p.beta2.powi(t));
            w[k] -= p.lr * mh / (vh.sqrt() + p.eps);
        }
    }
    w
}

/// Row-wise Adam with the catch-up follows dense Adam: rows touched at random steps (some
/// skipped for 250 steps, past the full replay), every row touched with a zero gradient at the
/// end (which brings it up to date), the table equals the dense loop's; the lazy optimiser on
/// the same gradients does not.
#[test]
fn caught_up_row_wise_adam_follows_dense_adam() {
    use rand::Rng;
    let (rows, dim, steps) = (8usize, 3usize, 300usize);
    let p = AdamParams::with_lr(0.01);
    let start = table(rows, dim);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // Per step: the touched rows (row 0 is padding; row 7 only at steps 10 and 270).
    let mut touched: Vec<Vec<u32>> = Vec::new();
    let mut grads: Vec<Vec<f32>> = Vec::new();
    for s in 0..steps {
        let mut ids: Vec<u32> = (1..7u32).filter(|_| rng.random_bool(0.3)).collect();
        if s == 10 || s == 270 {
            ids.push(7);
        }
        if s == steps - 1 {
            ids = (1..rows as u32).collect();
        }
        let mut g = vec![0f32; rows * dim];
        for &id in &ids {
            if s < steps - 1 {
                for j in 0..dim {
                    g[id as usize * dim + j] = rng.random_range(-1.0..1.0);
                }
            }
        }
        touched.push(ids);
        grads.push(g);
    }
    let run = |catch_up: bool| {
        let mut t = start.clone();
        let mut opt = RowWise::new(SparseOptimizer::Adam, p).with_catch_up(catch_up);
        for (s, (ids, g)) in touched.iter().zip(&grads).enumerate() {
            opt.begin_step(s as u64 + 1);
            let rows_g: Vec<f32> = ids
                .iter()
                .flat_map(|&id| g[id as usize * dim..(id as usize + 1) * dim].to_vec())
                .collect();
            opt.update(&mut t, ids, &rows_g, 1.0).unwrap();
        }
        t.to_tensor()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let w0 = start
        .to_tensor()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut want = dense_adam_reference(&w0, &grads, p);
    want[..dim].iter_mut().for_each(|x| *x = 0.0); // the padding row stays zero
    let (caught, lazy) = (run(true), run(false));
    let diff = |a: &[f32]| {
        a.iter()
            .zip(&want)
            .map(|(&x, &y)| (x as f64 - y).abs())
            .fold(0f64, f64::max)
    };
    assert!(
        diff(&caught) < 1e-5,
        "caught up vs dense: {}",
        diff(&caught)
    );
    assert!(
        diff(&lazy) > 1e-3,
        "lazy vs dense: {} (the test could not tell)",
        diff(&lazy)
    );
    // Catch-up needs Adam: with Adagrad the config is refused by name.
    let e = lifelong::config::Config::from_toml(
        "[data]\ndir = \"d\"\n[model]\nkind = \"din\"\n[train]\nsparse_optimizer = \"adagrad\"\nsparse_catch_up = true",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sparse_catch_up"), "{e}");
}
