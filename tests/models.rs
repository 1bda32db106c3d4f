//! Model pieces against independent references: Dice's fused op against the op-by-op formula,
//! DIN's packed/factored activation unit against the paper's padded formula, the fused SDIM and
//! full-attention ops against brute force and candle autograd, and for every preset: a
//! finite-difference gradient check of the differentiable part, padding invariance, and DARE's
//! decoupling. (AUC floors and checkpoint round trips per model are in `train.rs`.)

use crate::common::{gradient_check, tiny_batch, tiny_data, tiny_model};
use candle_core::{Device, Tensor, Var};
use lifelong::aggregate::{ActivationUnit, Packed};
use lifelong::config::{Activation, Preset};
use lifelong::data::batcher::collate;
use lifelong::data::{Histories, Impressions};
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
    let mut ps = ParamStore::new(Device::Cpu, 2);
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
    let mut ps = ParamStore::new(Device::Cpu, 0);
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
    unit_with(Activation::Dice, d, hidden, softmax, seed)
}

fn unit_with(
    act: Activation,
    d: usize,
    hidden: &[usize],
    softmax: bool,
    seed: u64,
) -> (ParamStore, ActivationUnit) {
    let mut ps = ParamStore::new(Device::Cpu, seed);
    let unit = ActivationUnit::new(&mut ps, "att", d, hidden, act, softmax, 1e-8, 0.1).unwrap();
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
    let packed = Packed::from_lens(&lens.map(|x| x as u32));
    assert_eq!(seg.len(), packed.rows());
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

/// The named inputs and every parameter of `ps`: the tensors whose gradients a fused op and its
/// reference must agree on.
fn named_vars(inputs: &[(&str, &Var)], ps: &ParamStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .collect();
    vars.extend(
        ps.params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone())),
    );
    vars
}

/// The fused CPU ops and the candle-op composite give the same values and the same gradients
/// for the target, the history and every parameter of the unit.
#[test]
fn din_fused_ops_match_composite_gradients() {
    let mut cases = vec![
        (Activation::Dice, false, vec![5], true),
        (Activation::Dice, true, vec![5], true),
        (Activation::Dice, false, vec![5], false),
        (Activation::Dice, false, vec![5, 4], true),
        (Activation::Dice, true, vec![5, 4], true),
    ];
    // Every other activation, one and two layers, with and without softmax.
    for act in [Activation::Prelu, Activation::Relu, Activation::Sigmoid] {
        for (softmax, hidden) in [(false, vec![5]), (true, vec![5, 4]), (false, vec![5, 4])] {
            cases.push((act, softmax, hidden, true));
        }
    }
    for (act, softmax, hidden, train) in cases {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let d = 6;
        let (ps, unit) = unit_with(act, d, &hidden, softmax, 8);
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
        for (name, v) in named_vars(&[("target", &t), ("seq", &s)], &ps) {
            let (a, b) = (gf.get(&v), gc.get(&v));
            let (a, b) = (
                a.unwrap_or_else(|| panic!("no fused grad for {name}")),
                b.unwrap(),
            );
            assert!(
                max_abs_diff(a, b) < 1e-4,
                "{act:?} {hidden:?} softmax={softmax} {name}: {}",
                max_abs_diff(a, b)
            );
        }
    }
}

/// Every preset's differentiable part (search decisions fixed) against finite differences, every
/// dense parameter entry and every gathered row entry, in training mode.
#[test]
fn every_model_passes_a_gradient_check() {
    let batch = tiny_batch(6);
    for preset in Preset::ALL {
        let (_, model) = tiny_model(preset, "");
        let (checked, biggest) = gradient_check(&model, &batch, 5e-5);
        eprintln!("{preset:?}: {checked} entries, largest gradient {biggest:.3}");
        assert!(checked > 200, "{preset:?}: only {checked} entries");
        assert!(biggest > 0.05, "{preset:?}: gradients all tiny ({biggest})");
    }
}

/// The mean-pooling part (in a model of parts only) through the whole model against finite
/// differences, like every preset.
#[test]
fn the_mean_pooling_part_passes_a_gradient_check() {
    let batch = tiny_batch(6);
    let (_, model) = tiny_model(Preset::Custom, crate::common::MEAN_MODEL);
    let (checked, biggest) = gradient_check(&model, &batch, 5e-5);
    assert!(checked > 100, "only {checked} entries");
    assert!(biggest > 0.01, "gradients all tiny ({biggest})");
}

/// DIN with the smooth activations (sigmoid, Dice), two-layer units, with and without softmax,
/// against finite differences through the whole model. (PReLU and ReLU have kinks where a
/// finite step crosses zero; `din_fused_ops_match_composite_gradients` checks them exactly
/// against candle's autograd instead.)
#[test]
fn din_unit_depths_and_smooth_activations_pass_a_gradient_check() {
    let batch = tiny_batch(6);
    for (act, hidden, softmax) in [("sigmoid", "[4, 3]", false), ("dice", "[4, 3]", true)] {
        // The tiny DIN of `tiny_config`, its unit varied (Custom: no preset text to clash with).
        let model_text = format!(
            "[model]\nkind = \"din\"\n[model.embedding]\nitem_dim = 3\ncate_dim = 2\npos_dim = 2\n\
             user_dim = 2\ninit = {{ kind = \"normal\", std = 0.5 }}\n[[model.aggregate]]\n\
             hidden = {hidden}\nactivation = \"{act}\"\nsoftmax = {softmax}\n"
        );
        let (_, model) = tiny_model(Preset::Custom, &model_text);
        let (checked, biggest) = gradient_check(&model, &batch, 5e-5);
        assert!(checked > 150, "{act} {hidden}: only {checked} entries");
        assert!(
            biggest > 0.01,
            "{act} {hidden}: gradients all tiny ({biggest})"
        );
    }
}

fn single_rows(hist: &Histories, imp: &Impressions, max_len: usize) -> Vec<lifelong::data::Batch> {
    (0..imp.len() as u32)
        .map(|r| collate(hist, imp, &[r], max_len, false))
        .collect()
}

/// Evaluation is padding invariant: a sample scored alone (its own history length, no padding)
/// equals the same sample in a batch whose other histories are longer; and only the last
/// `max_len` behaviors matter (a history cut to them scores the same).
#[test]
fn every_model_is_padding_invariant() {
    let (hist, imp) = tiny_data();
    let max_len = 6;
    // User 5 has 7 behaviors; the same user with only the last 6 stored.
    let mut cut = hist.clone();
    let (s, e) = (cut.offsets[5] as usize, cut.offsets[6] as usize);
    cut.items.remove(s);
    cut.cates.remove(s);
    cut.ts.remove(s);
    cut.offsets[6] -= 1;
    assert_eq!(e - s, 7);
    let mut imp_cut = imp.clone();
    imp_cut.seq_len[6] = 6;
    for preset in Preset::ALL {
        let (_, model) = tiny_model(preset, "");
        let all = model
            .predict(&collate(
                &hist,
                &imp,
                &(0..imp.len() as u32).collect::<Vec<_>>(),
                max_len,
                true,
            ))
            .unwrap();
        for (r, b) in single_rows(&hist, &imp, max_len).iter().enumerate() {
            let alone = model.predict(b).unwrap()[0];
            assert!(
                (alone - all[r]).abs() < 1e-5,
                "{preset:?} row {r}: alone {alone} vs in batch {}",
                all[r]
            );
        }
        let last = model
            .predict(&collate(&cut, &imp_cut, &[6], max_len, false))
            .unwrap()[0];
        assert!(
            (last - all[6]).abs() < 1e-5,
            "{preset:?}: truncation {last} vs {}",
            all[6]
        );
    }
}

/// A batch in which no sample has any history (n = 0) trains for every preset, on both paths
/// (fused and generic, f32 and bf16): the loss is finite and the targets get a gradient.
#[test]
fn every_model_handles_a_batch_without_any_history() {
    use lifelong::device::{Ops, Precision};
    let (hist, mut imp) = tiny_data();
    imp.seq_len.iter_mut().for_each(|s| *s = 0);
    let batch = collate(&hist, &imp, &[0, 1, 2, 3], 6, true);
    assert_eq!((batch.len, batch.n_packed()), (0, 0));
    let paths = [
        (Ops::Fused, Precision::F32),
        (Ops::Generic, Precision::F32),
        (Ops::Generic, Precision::Bf16),
    ];
    for (preset, (ops, precision)) in Preset::ALL.into_iter().flat_map(|p| paths.map(|x| (p, x))) {
        let (cfg, _) = tiny_model(preset, "");
        let mut m = cfg.model.clone();
        (m.ops, m.precision) = (ops, precision);
        let model = lifelong::model::CtrModel::new(
            &m,
            cfg.data.max_len,
            crate::common::TINY_VOCAB,
            cfg.train.seed,
            &Device::Cpu,
        )
        .unwrap();
        let preset = format!("{preset:?} {ops:?} {precision:?}");
        let step = model.step(&batch, true).unwrap();
        let labels = Tensor::from_slice(&batch.label, batch.size(), &Device::Cpu).unwrap();
        let loss = bce_with_logits(&step.out.logits, &labels).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite(), "{preset:?}");
        let grads = loss.backward().unwrap();
        let g: f32 = step
            .leaves
            .row_grads(&grads)
            .unwrap()
            .iter()
            .flat_map(|r| r.grad.iter().map(|x| x.abs()))
            .sum();
        assert!(g > 0.0, "{preset:?}: the targets must get a gradient");
    }
}

/// The gradient of `probe` on the leaf, per table name.
fn table_grads(
    model: &lifelong::model::CtrModel,
    batch: &lifelong::data::Batch,
) -> Vec<(String, f32)> {
    let step = model.step(batch, true).unwrap();
    let w: Vec<f32> = (0..batch.size()).map(|i| 1.0 + i as f32 * 0.3).collect();
    let wt = Tensor::from_slice(&w, w.len(), &Device::Cpu).unwrap();
    let grads = (&step.out.logits * &wt)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    step.leaves
        .row_grads(&grads)
        .unwrap()
        .into_iter()
        .map(|r| {
            let name = model.tables().table(r.table).name().to_string();
            (name, r.grad.iter().map(|x| x.abs()).sum())
        })
        .collect()
}

/// DARE's attention tables learn only through the attention weights: with one retrieved behavior
/// per sample (its weight is 1 whatever the scores) and no auxiliary head, they get exactly no
/// gradient, while the representation tables do. The same model with shared tables (TWIN in
/// DARE's code) gets a gradient in them: the check can fail.
#[test]
fn dare_attention_tables_get_no_gradient_from_the_aggregation_path() {
    let batch = tiny_batch(6);
    // One retrieved behavior, no auxiliary head.
    let (mut cfg, _) = tiny_model(Preset::Dare, "");
    match &mut cfg.model.search {
        lifelong::config::SearchConfig::Attention(a) => {
            a.k = 1;
            a.aux.as_mut().unwrap().weight = 0.0;
        }
        other => panic!("{other:?}"),
    }
    let build = |cfg: &lifelong::config::Config| {
        lifelong::model::CtrModel::new(&cfg.model, 6, crate::common::TINY_VOCAB, 9, &Device::Cpu)
            .unwrap()
    };
    let dare = build(&cfg);
    let g = table_grads(&dare, &batch);
    for (name, v) in &g {
        if name.starts_with("att.") {
            assert_eq!(*v, 0.0, "{name} got a gradient {v}");
        } else {
            assert!(*v > 0.0, "{name} got none");
        }
    }
    assert!(g.iter().any(|(n, _)| n.starts_with("att.")));
    // Shared tables: the aggregated values are the same rows, so they get a gradient.
    cfg.model.embedding.attention = None;
    let twin = build(&cfg);
    let g = table_grads(&twin, &batch);
    assert!(
        g.iter().all(|(n, v)| !n.starts_with("att.") && *v > 0.0),
        "{g:?}"
    );
}

/// The first target-attention aggregation's weights, flat.
fn first_weights(m: &lifelong::model::CtrModel, batch: &lifelong::data::Batch) -> Vec<f32> {
    m.attention_weights(batch).unwrap()[0]
        .clone()
        .unwrap()
        .1
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Overwrites every row but padding of the tables whose name passes `pick`.
fn rewrite_tables(m: &mut lifelong::model::CtrModel, pick: impl Fn(&str) -> bool, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..m.tables().len() {
        let t = m.tables_mut().table_mut(i);
        if pick(t.name()) {
            for r in 1..t.rows() as u32 {
                let v: Vec<f32> = (0..t.dim()).map(|_| rng.random_range(-1.0..1.0)).collect();
                t.set_row(r, &v);
            }
        }
    }
}

/// DARE's search and attention weights never read the representation tables: rewriting every
/// representation table leaves the retrieved behaviors and the weights unchanged (and changes
/// the logits, so the tables are used). With shared tables the same rewrite moves the weights.
#[test]
fn dare_search_and_weights_ignore_the_representation_tables() {
    let batch = tiny_batch(6);
    let (_, mut dare) = tiny_model(Preset::Dare, "");
    let retrieved = dare.plan(&batch).unwrap().retrieved.unwrap();
    let (weights, logits) = (first_weights(&dare, &batch), dare.predict(&batch).unwrap());
    rewrite_tables(&mut dare, |n| n.starts_with("rep."), 5);
    assert_eq!(dare.plan(&batch).unwrap().retrieved.unwrap(), retrieved);
    assert_eq!(first_weights(&dare, &batch), weights);
    assert_ne!(dare.predict(&batch).unwrap(), logits);
    // Shared tables: rewriting them moves the weights.
    let (mut cfg, _) = tiny_model(Preset::Dare, "");
    cfg.model.embedding.attention = None;
    let mut twin =
        lifelong::model::CtrModel::new(&cfg.model, 6, crate::common::TINY_VOCAB, 9, &Device::Cpu)
            .unwrap();
    let w0 = first_weights(&twin, &batch);
    rewrite_tables(&mut twin, |_| true, 6);
    assert_ne!(first_weights(&twin, &batch), w0);
}

/// The fused target attention equals the op-by-op candle composite, values and gradients (of
/// the inputs and every parameter), with and without projections, with the product, and with a
/// sample whose window is empty (its output must be 0).
#[test]
fn target_attention_fused_matches_composite() {
    use lifelong::aggregate::attention::Mask;
    use lifelong::aggregate::TargetAttention;
    let (b, k, dk, dv) = (4usize, 5usize, 6usize, 4usize);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut mask = vec![0f32; b * k];
    for (s, len) in [3usize, 0, 5, 1].iter().enumerate() {
        mask[s * k..s * k + len].iter_mut().for_each(|m| *m = 1.0);
    }
    for (projection, product) in [(true, false), (true, true), (false, true), (false, false)] {
        let dv = if product { dk } else { dv };
        let mut ps = ParamStore::new(Device::Cpu, 3);
        let scale: Vec<f32> = (0..dk).map(|i| 0.3 + 0.1 * i as f32).collect();
        let unit =
            TargetAttention::new(&mut ps, "att", dk, dv, projection, 2, 8, scale, product).unwrap();
        let var =
            |rng: &mut ChaCha8Rng, shape: &[usize]| Var::from_tensor(&randn(rng, shape)).unwrap();
        let (tk, keys, values, tv) = (
            var(&mut rng, &[b, dk]),
            var(&mut rng, &[b * k, dk]),
            var(&mut rng, &[b * k, dv]),
            var(&mut rng, &[b, dv]),
        );
        let m = Mask {
            b,
            k,
            data: std::sync::Arc::new(mask.clone()),
        };
        let mt = Tensor::from_vec(mask.clone(), (b, k), &Device::Cpu).unwrap();
        let fused = unit
            .forward(
                tk.as_tensor(),
                keys.as_tensor(),
                values.as_tensor(),
                &m,
                tv.as_tensor(),
            )
            .unwrap();
        let reference = unit
            .forward_reference(
                tk.as_tensor(),
                keys.as_tensor(),
                values.as_tensor(),
                &mt,
                tv.as_tensor(),
            )
            .unwrap();
        assert!(
            max_abs_diff(&fused, &reference) < 1e-5,
            "projection={projection}"
        );
        assert_eq!(
            fused
                .get(1)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let w = randn(&mut rng, fused.dims());
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let vars = named_vars(
            &[("target_k", &tk), ("keys", &keys), ("values", &values)],
            &ps,
        );
        for (name, v) in vars {
            let (a, r) = (gf.get(&v).unwrap(), gr.get(&v).unwrap());
            assert!(
                max_abs_diff(a, r) < 1e-5,
                "projection={projection} {name}: {}",
                max_abs_diff(a, r)
            );
        }
    }
}

/// The linear op (parallel weight gradient) equals candle's matmul, values and both gradients,
/// also over more rows than one block of its blocked reduction.
#[test]
fn linear_op_matches_candle_matmul() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for n in [7usize, 20_000] {
        let x = Var::from_tensor(&randn(&mut rng, &[n, 6])).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, &[5, 6])).unwrap();
        let g = randn(&mut rng, &[n, 5]);
        let a = lifelong::testing::linear(x.as_tensor(), w.as_tensor()).unwrap();
        let b = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
        let ga = (a * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [x.as_tensor(), w.as_tensor()] {
            let (p, q) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            let scale = q
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max_abs_diff(p, q) <= 1e-5 * scale.max(1.0), "n = {n}");
        }
    }
}

/// Histories long enough that the fused unit works in many blocks and tasks (blocks of 256
/// rows, tasks of ≥ 1024): lengths from 0 to 1,500, one sample alone longer than a task.
fn long_packed(rng: &mut ChaCha8Rng, d: usize) -> (Tensor, Tensor, Packed) {
    let lens: Vec<u32> = vec![700, 0, 1500, 1, 300, 1100, 20, 257, 256, 0, 900];
    let n: usize = lens.iter().map(|&l| l as usize).sum();
    (
        randn(rng, &[lens.len(), d]),
        randn(rng, &[n, d]),
        Packed::from_lens(&lens),
    )
}

/// The fused unit over thousands of rows (many blocks and tasks, samples straddling blocks)
/// against the candle-op composite: values and the gradients of the target, the history and
/// every parameter, with and without softmax, with batch and with running statistics.
#[test]
fn din_fused_unit_matches_composite_over_many_blocks() {
    for (softmax, train) in [(false, true), (true, true), (true, false)] {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let d = 6;
        let (ps, unit) = dice_unit(d, &[5], softmax, 12);
        let (target, seq, packed) = long_packed(&mut rng, d);
        let (t, s) = (
            Var::from_tensor(&target).unwrap(),
            Var::from_tensor(&seq).unwrap(),
        );
        let w = randn(&mut rng, &[target.dim(0).unwrap(), d]);
        let fused = unit
            .forward_t(t.as_tensor(), s.as_tensor(), &packed, train)
            .unwrap();
        let comp = unit
            .forward_composite(t.as_tensor(), s.as_tensor(), &packed, train)
            .unwrap();
        let scale = |x: &Tensor| {
            x.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(
            max_abs_diff(&fused, &comp) <= 1e-5 * scale(&comp).max(1.0),
            "softmax={softmax} train={train}: {}",
            max_abs_diff(&fused, &comp)
        );
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (comp * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in named_vars(&[("target", &t), ("seq", &s)], &ps) {
            let (a, b) = (gf.get(&v).unwrap(), gc.get(&v).unwrap());
            let tol = 1e-4 * scale(b).max(1.0);
            assert!(
                max_abs_diff(a, b) <= tol,
                "softmax={softmax} train={train} {name}: {} (scale {})",
                max_abs_diff(a, b),
                scale(b)
            );
        }
    }
}

/// DIN reading its history straight from the leaf (the fused unit's in-place rows and
/// scatter-added row gradients) over thousands of behaviors, against finite differences of
/// every dense parameter and every leaf entry.
#[test]
fn din_over_long_histories_passes_a_gradient_check() {
    use crate::common::TINY_VOCAB;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let lens = [700usize, 0, 1500, 300, 1100, 20];
    let mut hist = Histories {
        offsets: vec![0],
        items: vec![],
        cates: vec![],
        ts: vec![],
    };
    for &l in &lens {
        for k in 0..l {
            hist.items.push(rng.random_range(2..12));
            hist.cates.push(rng.random_range(2..5));
            hist.ts.push(k as i64);
        }
        hist.offsets.push(hist.items.len() as u64);
    }
    let imp = Impressions {
        label: vec![1., 0., 1., 0., 1., 0.],
        user: vec![0, 1, 2, 3, 4, 5],
        item: vec![6, 9, 10, 2, 11, 7],
        cate: vec![4, 2, 4, 2, 2, 3],
        seq_len: lens.iter().map(|&l| l as u32).collect(),
        history: Vec::new(),
        ts: Vec::new(),
    };
    let batch = collate(&hist, &imp, &[0, 1, 2, 3, 4, 5], 2000, true);
    assert_eq!(batch.n_packed(), lens.iter().sum::<usize>());
    let text = "[data]\ndir = \"unused\"\nmax_len = 2000\n[model]\nkind = \"din\"\n\
        [model.embedding]\nitem_dim = 3\ncate_dim = 2\npos_dim = 0\nuser_dim = 2\n\
        init = { kind = \"normal\", std = 0.5 }\n[[model.aggregate]]\nhidden = [4]\n\
        softmax = true\n[model.head]\nhidden = [5]\nactivation = \"dice\"\n";
    let cfg = lifelong::config::Config::from_toml(text).unwrap();
    let model =
        lifelong::model::CtrModel::new(&cfg.model, 2000, TINY_VOCAB, 3, &Device::Cpu).unwrap();
    let (checked, biggest) = gradient_check(&model, &batch, 2e-4);
    assert!(checked > 80, "only {checked} entries");
    assert!(biggest > 0.01, "gradients all tiny ({biggest})");
}
