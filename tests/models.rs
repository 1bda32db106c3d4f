//! Model pieces against independent references: Dice's fused op against the op-by-op formula,
//! DIN's packed/factored activation unit against the paper's padded formula, a finite-difference
//! gradient check of the whole DIN forward, the stable BCE against hand values, and an AUC floor
//! on planted synthetic data that a history-blind model cannot reach.

use candle_core::{Device, Tensor, Var};
use lifelong::aggregate::{ActivationUnit, Packed};
use lifelong::config::{Activation, DinConfig, Init};
use lifelong::data::batcher::collate;
use lifelong::data::{Histories, Impressions};
use lifelong::model::{Din, VocabSizes};
use lifelong::nn::{bce_with_logits, dice_reference, masked_softmax, Dice, ParamStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn dice_fused_matches_reference_values_and_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut ps = ParamStore::new(Device::Cpu, ChaCha8Rng::seed_from_u64(2));
    let dice = Dice::new(&mut ps, "d", 5, 1e-8, 0.1).unwrap();
    dice.alpha.set(&randn(&mut rng, &[5])).unwrap();
    let x = Var::from_tensor(&(randn(&mut rng, &[37, 5]) * 3.0).unwrap()).unwrap();
    let w = randn(&mut rng, &[37, 5]);
    for train in [true, false] {
        if !train {
            // Non-trivial running statistics for the evaluation path.
            dice.running_mean.set(&randn(&mut rng, &[5])).unwrap();
            dice.running_var
                .set(&(randn(&mut rng, &[5]).abs().unwrap() + 0.5).unwrap())
                .unwrap();
        }
        let fused = dice.forward_t(x.as_tensor(), train).unwrap();
        let fixed = (!train).then(|| {
            (
                dice.running_mean.as_tensor().clone(),
                dice.running_var.as_tensor().clone(),
            )
        });
        let (reference, _) = dice_reference(
            x.as_tensor(),
            dice.alpha.as_tensor(),
            fixed.as_ref().map(|(m, v)| (m, v)),
            1e-8,
        )
        .unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-5, "train={train}");
        // Gradients of sum(y ⊙ w) through both paths.
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [x.as_tensor(), dice.alpha.as_tensor()] {
            let (a, b) = (gf.get(v).unwrap(), gr.get(v).unwrap());
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0);
            assert!(
                max_abs_diff(a, b) / scale < 1e-4,
                "train={train}: grad differs by {}",
                max_abs_diff(a, b)
            );
        }
    }
}

#[test]
fn dice_running_statistics_follow_momentum() {
    let mut ps = ParamStore::new(Device::Cpu, ChaCha8Rng::seed_from_u64(0));
    let dice = Dice::new(&mut ps, "d", 1, 1e-8, 0.1).unwrap();
    // Column [1, 2, 3, 6]: mean 3, unbiased variance ((4 + 1 + 0 + 9) / 3) = 14/3.
    let x = Tensor::new(&[[1f32], [2.], [3.], [6.]], &Device::Cpu).unwrap();
    dice.forward_t(&x, true).unwrap();
    let m = dice.running_mean.as_tensor().to_vec1::<f32>().unwrap()[0];
    let v = dice.running_var.as_tensor().to_vec1::<f32>().unwrap()[0];
    assert!((m - 0.3).abs() < 1e-6, "{m}"); // 0.9·0 + 0.1·3
    assert!((v - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-5, "{v}"); // 0.9·1 + 0.1·14/3
                                                                 // Evaluation must not move them.
    dice.forward_t(&x, false).unwrap();
    assert_eq!(
        dice.running_mean.as_tensor().to_vec1::<f32>().unwrap()[0],
        m
    );
}

/// An activation unit with Dice layers `hidden` over tokens of width `d`, seeded.
fn dice_unit(d: usize, hidden: &[usize], softmax: bool, seed: u64) -> (ParamStore, ActivationUnit) {
    let mut ps = ParamStore::new(Device::Cpu, ChaCha8Rng::seed_from_u64(seed));
    let unit = ActivationUnit::new(
        &mut ps,
        "att",
        d,
        hidden,
        Activation::Dice,
        softmax,
        1e-8,
        0.1,
    )
    .unwrap();
    (ps, unit)
}

/// A tiny padded batch: B = 3 samples with history lengths 4, 0 and 2 (L = 4).
fn tiny_packed(rng: &mut ChaCha8Rng, d: usize) -> (Tensor, Tensor, Tensor, Tensor, Packed) {
    let lens = [4usize, 0, 2];
    let (b, l) = (3, 4);
    let seq_padded = randn(rng, &[b, l, d]);
    let mut mask = vec![0f32; b * l];
    let (mut seg, mut pos) = (vec![], vec![]);
    for (i, &k) in lens.iter().enumerate() {
        for j in 0..k {
            mask[i * l + j] = 1.0;
            seg.push(i as u32);
            pos.push((i * l + j) as u32);
        }
    }
    let mask_t = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
    // Padding embeds to zeros.
    let seq_padded = seq_padded
        .broadcast_mul(&mask_t.unsqueeze(2).unwrap())
        .unwrap();
    let pos_t = Tensor::new(pos.as_slice(), &Device::Cpu).unwrap();
    let packed_seq = seq_padded
        .reshape((b * l, d))
        .unwrap()
        .index_select(&pos_t, 0)
        .unwrap();
    let target = randn(rng, &[b, d]);
    let packed = Packed {
        seg: Tensor::new(seg.as_slice(), &Device::Cpu).unwrap(),
        pos: pos_t,
        mask: mask_t.clone(),
        batch: b,
        len: l,
        offsets: Packed::offsets_from_lens(&lens.map(|x| x as u32)),
    };
    (target, seq_padded, packed_seq, mask_t, packed)
}

#[test]
fn din_activation_unit_packed_trick_matches_paper_formula() {
    // [5] runs the one fused op, [5, 3] the first-layer and pooling ops around generic layers.
    for (softmax, hidden) in [
        (false, vec![5]),
        (true, vec![5]),
        (false, vec![5, 3]),
        (true, vec![5, 3]),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d = 6;
        let (_ps, unit) = dice_unit(d, &hidden, softmax, 4);
        let (target, seq_padded, packed_seq, mask, packed) = tiny_packed(&mut rng, d);
        let fast = unit.forward_t(&target, &packed_seq, &packed, true).unwrap();
        let reference = unit
            .forward_padded_reference(&target, &seq_padded, &mask, true)
            .unwrap();
        assert_eq!(fast.dims(), &[3, d]);
        assert!(
            max_abs_diff(&fast, &reference) < 1e-5,
            "softmax={softmax}: {}",
            max_abs_diff(&fast, &reference)
        );
        // The sample without history has a zero interest.
        assert_eq!(
            fast.get(1)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}

fn tiny_din(softmax: bool, user_dim: usize, pos_dim: usize) -> (Din, lifelong::data::Batch) {
    let cfg = DinConfig {
        item_dim: 3,
        cate_dim: 2,
        user_dim,
        pos_dim,
        attention_hidden: vec![4],
        attention_activation: Activation::Dice,
        softmax,
        head_hidden: vec![5],
        head_activation: Activation::Dice,
        dice_eps: 1e-8,
        dice_momentum: 0.1,
        init: Init::Normal { std: 0.5 },
    };
    let vocab = VocabSizes {
        users: 6,
        items: 12,
        cates: 5,
    };
    let model = Din::new(&cfg, 4, vocab, 9, &Device::Cpu).unwrap();
    // Users 2..5 with histories; impressions with varied seq_len (one empty).
    let hist = Histories {
        offsets: vec![0, 0, 0, 5, 8, 14],
        items: vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 3, 4, 5],
        cates: vec![2, 2, 3, 3, 4, 4, 2, 3, 4, 2, 3, 4, 2, 3],
        ts: vec![0; 14],
    };
    let imp = Impressions {
        label: vec![1., 0., 1., 0., 1., 0.],
        user: vec![2, 2, 3, 3, 4, 4],
        item: vec![6, 9, 10, 2, 11, 7],
        cate: vec![4, 2, 4, 2, 2, 3],
        seq_len: vec![5, 3, 0, 3, 6, 2],
    };
    let batch = collate(&hist, &imp, &[0, 1, 2, 3, 4, 5], 4);
    (model, batch)
}

/// Finite-difference check of ∂loss/∂θ for every dense parameter entry and every gathered
/// embedding entry of a tiny DIN (training mode, Dice with batch statistics).
#[test]
fn din_gradient_check() {
    for (softmax, user_dim, pos_dim) in [(false, 2, 0), (true, 0, 2)] {
        let (model, batch) = tiny_din(softmax, user_dim, pos_dim);
        let labels = Tensor::from_slice(&batch.label, batch.size(), &Device::Cpu).unwrap();
        let leaves = model.leaves(&batch).unwrap();
        let loss_of = |leaves: &lifelong::model::StepLeaves| -> f64 {
            let logits = model.forward_t(&batch, leaves, true).unwrap();
            bce_with_logits(&logits, &labels)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let logits = model.forward_t(&batch, &leaves, true).unwrap();
        let grads = bce_with_logits(&logits, &labels)
            .unwrap()
            .backward()
            .unwrap();
        let mut vars: Vec<(String, Var)> = model
            .params()
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.push(("leaf.item".into(), leaves.item.clone()));
        vars.push(("leaf.cate".into(), leaves.cate.clone()));
        vars.extend(leaves.user.clone().map(|v| ("leaf.user".to_string(), v)));
        vars.extend(leaves.pos.clone().map(|v| ("leaf.pos".to_string(), v)));
        let mut checked = 0;
        for (name, var) in &vars {
            let analytic = match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                None => vec![0.0; var.elem_count()],
            };
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for i in 0..base.len() {
                let h = 1e-2f32;
                let mut plus = base.clone();
                plus[i] += h;
                var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let lp = loss_of(&leaves);
                let mut minus = base.clone();
                minus[i] -= h;
                var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let lm = loss_of(&leaves);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let numeric = (lp - lm) / (2.0 * h as f64);
                let a = analytic[i] as f64;
                let err = (a - numeric).abs();
                assert!(
                    err < 2e-3 + 2e-2 * numeric.abs().max(a.abs()),
                    "{name}[{i}] (softmax={softmax}): analytic {a} vs numeric {numeric}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} entries checked");
    }
}

#[test]
fn bce_with_logits_is_stable_on_large_logits() {
    let logits = Tensor::new(&[100f32, 100., -100., 0.], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[1f32, 0., 1., 1.], &Device::Cpu).unwrap();
    let per_row = [0.0f64, 100.0, 100.0, std::f64::consts::LN_2]; // hand-computed
    let expected = per_row.iter().sum::<f64>() / 4.0;
    let got = bce_with_logits(&logits, &labels)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
    let g = Var::new(&[1000f32, -1000.], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0f32, 0.], &Device::Cpu).unwrap();
    let grads = bce_with_logits(g.as_tensor(), &y)
        .unwrap()
        .backward()
        .unwrap();
    // d/dx mean(...) = (sigmoid(x) − y) / n = [1/2, 0]
    let gv = grads.get(g.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert!((gv[0] - 0.5).abs() < 1e-6 && gv[1].abs() < 1e-6, "{gv:?}");
}

#[test]
fn masked_softmax_fully_masked_row_is_zero_not_nan() {
    let s = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
    let m = Tensor::new(&[[1f32, 1., 0.], [0., 0., 0.]], &Device::Cpu).unwrap();
    let p = masked_softmax(&s, &m).unwrap().to_vec2::<f32>().unwrap();
    let e = (1f32).exp() / ((1f32).exp() + (2f32).exp());
    assert!((p[0][0] - e).abs() < 1e-6 && (p[0][1] - (1.0 - e)).abs() < 1e-6 && p[0][2] == 0.0);
    assert_eq!(p[1], vec![0.0, 0.0, 0.0]);
}

/// The fused CPU ops and the candle-op composite give the same values and the same gradients
/// for the target, the history and every parameter of the unit.
#[test]
fn din_fused_ops_match_composite_gradients() {
    for (softmax, hidden, train) in [
        (false, vec![5], true),
        (true, vec![5], true),
        (false, vec![5], false),
        (false, vec![5, 4], true),
        (true, vec![5, 4], true),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let d = 6;
        let (ps, unit) = dice_unit(d, &hidden, softmax, 8);
        let (target, _, packed_seq, _, packed) = tiny_packed(&mut rng, d);
        let t = Var::from_tensor(&target).unwrap();
        let s = Var::from_tensor(&packed_seq).unwrap();
        let w = randn(&mut rng, &[3, d]);
        let fused = unit
            .forward_t(t.as_tensor(), s.as_tensor(), &packed, train)
            .unwrap();
        let comp = unit
            .forward_composite(t.as_tensor(), s.as_tensor(), &packed, train)
            .unwrap();
        assert!(max_abs_diff(&fused, &comp) < 1e-5);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (comp * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![
            ("target".to_string(), t.as_tensor().clone()),
            ("seq".to_string(), s.as_tensor().clone()),
        ];
        vars.extend(
            ps.params()
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone())),
        );
        for (name, v) in vars {
            let (a, b) = (gf.get(&v), gc.get(&v));
            let (a, b) = (
                a.unwrap_or_else(|| panic!("no fused grad for {name}")),
                b.unwrap(),
            );
            assert!(
                max_abs_diff(a, b) < 1e-4,
                "softmax={softmax} {name}: {}",
                max_abs_diff(a, b)
            );
        }
    }
}

/// A batch in which no sample has any history (n = 0) trains without error: the interest is
/// zero and only the target and head get gradients.
#[test]
fn din_handles_a_batch_without_any_history() {
    let (model, _) = tiny_din(false, 2, 0);
    let hist = Histories {
        offsets: vec![0, 0, 0, 3],
        items: vec![2, 3, 4],
        cates: vec![2, 2, 3],
        ts: vec![0; 3],
    };
    let imp = Impressions {
        label: vec![1., 0.],
        user: vec![2, 2],
        item: vec![5, 6],
        cate: vec![3, 4],
        seq_len: vec![0, 0],
    };
    let batch = collate(&hist, &imp, &[0, 1], 4);
    assert_eq!((batch.len, batch.n_packed()), (0, 0));
    let leaves = model.leaves(&batch).unwrap();
    let logits = model.forward_t(&batch, &leaves, true).unwrap();
    let labels = Tensor::from_slice(&batch.label, 2, &Device::Cpu).unwrap();
    let loss = bce_with_logits(&logits, &labels).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let grads = loss.backward().unwrap();
    let g = grads
        .get(leaves.item.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(g > 0.0, "the target items must get a gradient");
}
