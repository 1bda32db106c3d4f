//! Shared test helpers: tiny batches, tiny configs of every preset, a finite-difference gradient
//! check of a model's differentiable part.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use lifelong::config::{Config, Preset};
use lifelong::data::batcher::{collate, Batch};
use lifelong::data::{Histories, Impressions};
use lifelong::embedding::VocabSizes;
use lifelong::model::CtrModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Vocabularies of [`tiny_data`].
pub const TINY_VOCAB: VocabSizes = VocabSizes {
    users: 6,
    items: 12,
    cates: 5,
};

/// Users 2..5 with histories of 5, 3, 6 and 7 behaviors, and impressions with varied seq_len
/// (one empty).
pub fn tiny_data() -> (Histories, Impressions) {
    let hist = Histories {
        offsets: vec![0, 0, 0, 5, 8, 14, 21],
        items: vec![
            2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 3, 4, 5, 6, 8, 10, 3, 9, 11, 7,
        ],
        cates: vec![
            2, 2, 3, 3, 4, 4, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 4, 2, 3, 2, 4,
        ],
        ts: vec![0; 21],
    };
    let imp = Impressions {
        label: vec![1., 0., 1., 0., 1., 0., 1.],
        user: vec![2, 2, 3, 3, 4, 4, 5],
        item: vec![6, 9, 10, 2, 11, 7, 4],
        cate: vec![4, 2, 4, 2, 2, 3, 3],
        seq_len: vec![5, 3, 0, 3, 6, 2, 7],
        history: Vec::new(),
        ts: Vec::new(),
    };
    (hist, imp)
}

/// Random histories with times for users 2..5 (lengths 0, 3, 6 and 11: longer than the tiny
/// configs' max_len = 6 included), behaviors 0 to 29 time units apart.
pub fn random_histories(seed: u64) -> Histories {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut h = Histories {
        offsets: vec![0, 0, 0],
        ..Default::default()
    };
    for len in [0usize, 3, 6, 11] {
        let mut t = 1000i64;
        for _ in 0..len {
            h.items.push(rng.random_range(2..TINY_VOCAB.items as u32));
            h.cates.push(rng.random_range(2..TINY_VOCAB.cates as u32));
            t += rng.random_range(0..30);
            h.ts.push(t);
        }
        h.offsets.push(h.items.len() as u64);
    }
    h
}

/// The tiny batch with times: behavior `j` of the flat history at time `10·j`, each impression
/// 3 time units after its last behavior (or at 0), gaps bucketed by edges 2, 5, 20 (the time
/// field of [`with_time`]).
pub fn tiny_timed_batch(max_len: usize) -> Batch {
    let (mut hist, mut imp) = tiny_data();
    hist.ts = (0..hist.items.len() as i64).map(|j| 10 * j).collect();
    imp.ts = (0..imp.len())
        .map(|r| {
            let s = hist.offsets[imp.user[r] as usize] as i64;
            let n = imp.seq_len[r] as i64;
            if n == 0 {
                0
            } else {
                10 * (s + n - 1) + 3
            }
        })
        .collect();
    let rows: Vec<u32> = (0..imp.len() as u32).collect();
    let tb = lifelong::data::TimeBuckets::new(vec![2, 5, 20]).unwrap();
    lifelong::data::batcher::collate_with(&hist, &imp, &rows, max_len, true, Some(&tb))
}

/// `cfg` with a time field of width 2 over the edges 2, 5, 20 (in the attention view too when
/// decoupled).
pub fn with_time(mut cfg: Config) -> Config {
    cfg.model.embedding.time = Some(lifelong::config::TimeConfig {
        dim: 2,
        edges: vec![2, 5, 20],
    });
    if let Some(a) = cfg.model.embedding.attention.as_mut() {
        a.time_dim = 2;
    }
    cfg
}

/// The tiny batch (every row of [`tiny_data`]) cut to `max_len`.
pub fn tiny_batch(max_len: usize) -> Batch {
    let (hist, imp) = tiny_data();
    let rows: Vec<u32> = (0..imp.len() as u32).collect();
    collate(&hist, &imp, &rows, max_len, true)
}

/// A config of `preset` at toy sizes: every field 2-3 wide, small units, Dice everywhere (smooth,
/// for finite differences), init std 0.5 (activations of order 1), top-k 3 and short windows of 3
/// so that the search and the windows select.
pub fn tiny_config(preset: Preset, extra_model: &str) -> Config {
    let model = match preset {
        Preset::Din => r#"
[model]
kind = "din"
[model.embedding]
item_dim = 3
cate_dim = 2
pos_dim = 2
user_dim = 2
init = { kind = "normal", std = 0.5 }
[[model.aggregate]]
hidden = [4]
"#
        .to_string(),
        Preset::Sdim => r#"
[model]
kind = "sdim"
[model.embedding]
item_dim = 3
cate_dim = 2
init = { kind = "normal", std = 0.5 }
[[model.aggregate]]
groups = 3
bits = 2
[[model.aggregate]]
window = { recent = 3 }
heads = 2
dim = 4
"#
        .to_string(),
        Preset::Eta | Preset::Twin | Preset::Sim => format!(
            r#"
[model]
kind = "{}"
[model.embedding]
item_dim = 3
cate_dim = 2
init = {{ kind = "normal", std = 0.5 }}
[model.search]
k = 3
{}
[[model.aggregate]]
heads = 2
dim = 4
[[model.aggregate]]
window = {{ recent = 3 }}
heads = 2
dim = 4
"#,
            preset.name(),
            if preset == Preset::Sim {
                "dim = 4\naux = { hidden = [3], activation = \"dice\" }"
            } else {
                ""
            }
        ),
        Preset::Dare => r#"
[model]
kind = "dare"
[model.embedding]
item_dim = 3
cate_dim = 2
pos_dim = 2
attention = { item_dim = 2, cate_dim = 2, pos_dim = 1 }
init = { kind = "normal", std = 0.5 }
[model.search]
k = 3
aux = { hidden = [3], activation = "dice" }
"#
        .to_string(),
        Preset::Custom => String::new(),
    };
    let text = format!(
        r#"
[data]
dir = "unused"
max_len = 6
{model}
{extra_model}
[model.head]
hidden = [5]
activation = "dice"
[train]
seed = 9
"#
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{preset:?}: {e}\n{text}"))
}

/// A model built only from parts, with the mean-pooling part over a recent window (its
/// encoding: the window's sum and count) and over SIM's hard-search top-k (scored from ids),
/// beside a DIN unit: the part added to show that a kind of aggregation is one file.
pub const MEAN_MODEL: &str = r#"
[model]
kind = "custom"
[model.embedding]
item_dim = 3
cate_dim = 2
init = { kind = "normal", std = 0.5 }
[model.search]
kind = "category"
k = 3
[[model.aggregate]]
kind = "mean"
window = { recent = 4 }
[[model.aggregate]]
kind = "mean"
window = "retrieved"
[[model.aggregate]]
kind = "din"
window = "all"
hidden = [3]
activation = "dice"
"#;

/// The tiny model of `preset`.
pub fn tiny_model(preset: Preset, extra_model: &str) -> (Config, CtrModel) {
    let cfg = tiny_config(preset, extra_model);
    let model = CtrModel::new(
        &cfg.model,
        cfg.data.max_len,
        TINY_VOCAB,
        cfg.train.seed,
        &Device::Cpu,
    )
    .unwrap();
    (cfg, model)
}

/// The model `cfg` describes, for the tiny vocabularies, on the CPU.
pub fn model_of(cfg: &Config) -> CtrModel {
    CtrModel::new(
        &cfg.model,
        cfg.data.max_len,
        TINY_VOCAB,
        cfg.train.seed,
        &Device::Cpu,
    )
    .unwrap()
}

/// `Σ_b c_b·logit_b + Σ_aux w·Σ_b c'_b·aux_b` in f64, with fixed random coefficients.
fn probe(out: &lifelong::model::Forward, coef: &[f64]) -> f64 {
    let mut l: f64 = out
        .logits
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .zip(coef)
        .map(|(x, c)| *x as f64 * c)
        .sum();
    for (i, (w, a)) in out.aux.iter().enumerate() {
        let v = a.to_vec1::<f32>().unwrap();
        l += w * v
            .iter()
            .zip(coef.iter().rev())
            .map(|(x, c)| *x as f64 * c * (i + 2) as f64)
            .sum::<f64>();
    }
    l
}

/// The same probe as a candle scalar (for the analytic gradient).
fn probe_tensor(out: &lifelong::model::Forward, coef: &[f64]) -> Tensor {
    let dev = out.logits.device();
    let c: Vec<f32> = coef.iter().map(|&c| c as f32).collect();
    let ct = Tensor::from_slice(&c, c.len(), dev).unwrap();
    let mut l = (&out.logits * &ct).unwrap().sum_all().unwrap();
    for (i, (w, a)) in out.aux.iter().enumerate() {
        let cr: Vec<f32> = coef
            .iter()
            .rev()
            .map(|&c| (c * (i + 2) as f64 * w) as f32)
            .collect();
        let crt = Tensor::from_slice(&cr, cr.len(), dev).unwrap();
        l = (l + (a * &crt).unwrap().sum_all().unwrap()).unwrap();
    }
    l
}

/// Finite-difference check of every dense parameter entry and every leaf entry of the model's
/// differentiable part on `batch`, with the search's decisions (top-k, signatures) fixed, in
/// training mode. A 4-point central difference (error O(h⁴)) with h = 0.01 on a probe computed in
/// f64 from the f32 logits; an entry passes when
/// `|analytic − numeric| ≤ 1e-3·max(|analytic|, |numeric|) + atol`. Returns (entries checked,
/// the largest |analytic| seen).
pub fn gradient_check(model: &CtrModel, batch: &Batch, atol: f64) -> (usize, f64) {
    let h = 0.01f32;
    let plan = model.plan(batch).unwrap();
    let (leaves, look) = model.leaves(batch, &plan, true).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let coef: Vec<f64> = (0..batch.size())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let out = model.forward(batch, &plan, &leaves, &look, true).unwrap();
    let grads = probe_tensor(&out, &coef).backward().unwrap();
    let leaf_grad = leaves.take_grad(&grads).unwrap();
    let value = || {
        probe(
            &model.forward(batch, &plan, &leaves, &look, true).unwrap(),
            &coef,
        )
    };
    let mut vars: Vec<(String, candle_core::Var)> = model
        .params()
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.push(("leaf".into(), leaves.var().unwrap().clone()));
    let (mut checked, mut biggest) = (0usize, 0f64);
    for (name, var) in &vars {
        let analytic = if name == "leaf" {
            leaf_grad
                .clone()
                .unwrap_or_else(|| vec![0.0; var.elem_count()])
        } else {
            match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                None => vec![0.0; var.elem_count()],
            }
        };
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let set = |v: &[f32]| {
            var.set(&Tensor::from_slice(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap()
        };
        for i in 0..base.len() {
            let at = |d: f32| {
                let mut x = base.clone();
                x[i] += d;
                set(&x);
                value()
            };
            let (p1, m1, p2, m2) = (at(h), at(-h), at(2.0 * h), at(-2.0 * h));
            set(&base);
            let numeric = (8.0 * (p1 - m1) - (p2 - m2)) / (12.0 * h as f64);
            let a = analytic[i] as f64;
            let err = (a - numeric).abs();
            assert!(
                err <= 1e-3 * a.abs().max(numeric.abs()) + atol,
                "{name}[{i}]: analytic {a:.6e} vs numeric {numeric:.6e} (err {err:.2e})"
            );
            biggest = biggest.max(a.abs());
            checked += 1;
        }
    }
    (checked, biggest)
}

/// Asserts two encodings are the same: ids and codes exactly, bucket sums within 1e-5 (sums
/// folded in another order round differently).
pub fn assert_same_encoding(
    ctx: &str,
    got: &lifelong::model::UserEncoding,
    want: &lifelong::model::UserEncoding,
) {
    assert_eq!(
        (got.user, &got.items, &got.cates),
        (want.user, &want.items, &want.cates),
        "{ctx}: ids"
    );
    assert_eq!(got.codes, want.codes, "{ctx}: codes");
    assert_eq!(got.buckets.len(), want.buckets.len(), "{ctx}");
    for (a, b) in got.buckets.iter().zip(&want.buckets) {
        assert_eq!(a.len(), b.len(), "{ctx}");
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{ctx}: buckets differ by {d}");
    }
}

/// The files of a prepared dataset, relative to its directory.
pub const PREPARED_FILES: [&str; 8] = [
    "meta.json",
    "users.parquet",
    "train.parquet",
    "valid.parquet",
    "test.parquet",
    "vocab/user.parquet",
    "vocab/item.parquet",
    "vocab/cate.parquet",
];
