//! The generic path (`model.ops = "generic"`: every part composed of candle ops, the path a GPU
//! runs) against the fused CPU ops, for every preset: the same plan to the bit, the same logits,
//! the same gradients of every dense parameter and every leaf entry, the same Dice running
//! statistics; and its own finite-difference check. (Its planted-data AUC floor is in
//! `train.rs`.)

use crate::common::{
    gradient_check, tiny_batch, tiny_config, tiny_timed_batch, with_time, MEAN_MODEL,
};
use candle_core::{Device, Tensor};
use lifelong::config::{Config, Preset};
use lifelong::data::Batch;
use lifelong::device::{DeviceSpec, Ops};
use lifelong::model::CtrModel;
use std::collections::BTreeMap;

fn build(cfg: &Config, ops: Ops) -> CtrModel {
    build_as(cfg, ops, lifelong::device::Precision::F32)
}

fn build_as(cfg: &Config, ops: Ops, precision: lifelong::device::Precision) -> CtrModel {
    let mut m = cfg.model.clone();
    m.ops = ops;
    m.precision = precision;
    CtrModel::new(
        &m,
        cfg.data.max_len,
        crate::common::TINY_VOCAB,
        cfg.train.seed,
        &Device::Cpu,
    )
    .unwrap()
}

/// Every model under test: the six presets and the model of parts (mean pooling, SIM hard).
fn configs() -> Vec<(String, Config)> {
    let mut v: Vec<(String, Config)> = Preset::ALL
        .iter()
        .map(|&p| (p.name().to_string(), tiny_config(p, "")))
        .collect();
    v.push(("mean".into(), tiny_config(Preset::Custom, MEAN_MODEL)));
    for p in [Preset::Din, Preset::Sdim, Preset::Eta, Preset::Dare] {
        v.push((format!("{}+time", p.name()), with_time(tiny_config(p, ""))));
    }
    v
}

/// The batch a config reads: with times for a model with the time field.
fn batch_for(cfg: &Config) -> Batch {
    if cfg.model.embedding.time.is_some() {
        tiny_timed_batch(6)
    } else {
        tiny_batch(6)
    }
}

/// A part's signatures as the host holds them, from either path's plan (the generic path keeps
/// them on the device): `(targets, rows)`.
fn sigs_of(p: &lifelong::model::PartPlan) -> Option<(Vec<u32>, Vec<u32>)> {
    let u = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let w = |v: &[u16]| v.iter().map(|&x| x as u32).collect::<Vec<_>>();
    match (&p.sigs, &p.device_sigs) {
        (Some(h), None) => Some((w(&h.target), w(&h.rows))),
        (None, Some(d)) => Some((u(&d.target), u(&d.rows))),
        (None, None) => None,
        (Some(_), Some(_)) => panic!("a plan with both kinds of signatures"),
    }
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `|a − b| ≤ 1e-4·max(|a|, |b|) + 1e-5` entry by entry; names the first entry that is not.
fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = 1e-4 * x.abs().max(y.abs()) + 1e-5;
        assert!(
            (x - y).abs() <= tol,
            "{what}[{i}]: fused {x:.7e}, generic {y:.7e}"
        );
    }
}

/// One training-mode forward and backward of a fixed probe: logits, aux logits, the leaf's
/// gradient and every parameter's, and the buffers after the step (Dice's running statistics).
struct Run {
    logits: Vec<f32>,
    aux: Vec<Vec<f32>>,
    leaf: Vec<f32>,
    params: BTreeMap<String, Vec<f32>>,
    buffers: BTreeMap<String, Vec<f32>>,
    eval: Vec<f32>,
}

fn run(model: &CtrModel, batch: &Batch) -> Run {
    let plan = model.plan(batch).unwrap();
    let (leaves, look) = model.leaves(batch, &plan, true).unwrap();
    let out = model.forward(batch, &plan, &leaves, &look, true).unwrap();
    let b = batch.size();
    let coef: Vec<f32> = (0..b).map(|i| 1.0 - 0.37 * i as f32).collect();
    let ct = Tensor::from_slice(&coef, b, &Device::Cpu).unwrap();
    let mut probe = (&out.logits * &ct).unwrap().sum_all().unwrap();
    for (w, a) in &out.aux {
        let s = (a * &ct).unwrap().sum_all().unwrap();
        probe = (probe + (s * *w).unwrap()).unwrap();
    }
    let grads = probe.backward().unwrap();
    let leaf = leaves.take_grad(&grads).unwrap().unwrap_or_default();
    let params = model
        .params()
        .params()
        .iter()
        .map(|(n, v)| {
            let g = grads
                .get(v.as_tensor())
                .map(vec_of)
                .unwrap_or_else(|| vec![0.0; v.elem_count()]);
            (n.clone(), g)
        })
        .collect();
    let buffers = model
        .params()
        .buffers()
        .iter()
        .map(|(n, v)| (n.clone(), vec_of(v.as_tensor())))
        .collect();
    Run {
        logits: vec_of(&out.logits),
        aux: out.aux.iter().map(|(_, a)| vec_of(a)).collect(),
        leaf,
        params,
        buffers,
        eval: model.predict(batch).unwrap(),
    }
}

#[test]
fn generic_path_equals_the_fused_ops_for_every_model() {
    for (name, cfg) in configs() {
        let batch = batch_for(&cfg);
        let (fused, generic) = (build(&cfg, Ops::Fused), build(&cfg, Ops::Generic));
        // The plan (search and signatures) is the same to the bit.
        let (pf, pg) = (fused.plan(&batch).unwrap(), generic.plan(&batch).unwrap());
        assert_eq!(pf.retrieved, pg.retrieved, "{name}: retrieved");
        assert_eq!(pf.windows, pg.windows, "{name}: windows");
        for (a, b) in pf.parts.iter().zip(&pg.parts) {
            assert!(
                a.device_sigs.is_none(),
                "{name}: the fused plan keeps its signatures on the host"
            );
            assert_eq!(sigs_of(a), sigs_of(b), "{name}: signatures");
        }
        let (f, g) = (run(&fused, &batch), run(&generic, &batch));
        assert_close(&format!("{name} logits"), &f.logits, &g.logits);
        assert_eq!(f.aux.len(), g.aux.len(), "{name}: aux heads");
        for (a, b) in f.aux.iter().zip(&g.aux) {
            assert_close(&format!("{name} aux"), a, b);
        }
        assert!(
            f.leaf.iter().any(|x| x.abs() > 1e-3),
            "{name}: no leaf gradient"
        );
        assert_close(&format!("{name} leaf gradient"), &f.leaf, &g.leaf);
        let mut moved = 0;
        for (n, a) in &f.params {
            assert_close(&format!("{name} ∂{n}"), a, &g.params[n]);
            moved += a.iter().any(|x| x.abs() > 1e-4) as usize;
        }
        assert!(moved * 2 >= f.params.len(), "{name}: most gradients zero");
        for (n, a) in &f.buffers {
            assert_close(&format!("{name} buffer {n}"), a, &g.buffers[n]);
        }
        assert_close(&format!("{name} eval logits"), &f.eval, &g.eval);
    }
}

/// The generic path's own gradients (candle's autograd through every part) against finite
/// differences, every preset.
#[test]
fn generic_path_passes_a_gradient_check_for_every_model() {
    for (name, cfg) in configs() {
        let batch = batch_for(&cfg);
        let model = build(&cfg, Ops::Generic);
        let (checked, biggest) = gradient_check(&model, &batch, 5e-5);
        assert!(checked > 100, "{name}: only {checked} entries");
        assert!(biggest > 0.01, "{name}: gradients all tiny ({biggest})");
    }
}

/// Device names: parsed as documented, refused by name otherwise; a build without `cuda`
/// refuses a CUDA device naming the feature (never a silent CPU run).
#[test]
fn devices_parse_and_a_build_without_cuda_refuses_one_by_name() {
    assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
    assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
    assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
    for bad in ["gpu", "cuda:", "cuda:x", "CUDA", ""] {
        let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("cpu") && e.contains("cuda:N"), "{bad}: {e}");
    }
    assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    #[cfg(not(feature = "cuda"))]
    {
        let e = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
        assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
    }
    // The config key, through the same parser.
    let cfg = tiny_config(Preset::Din, "");
    assert_eq!(cfg.train.device, DeviceSpec::Cpu);
    let text = "[data]\ndir = \"x\"\n[model]\nkind = \"din\"\n[train]\ndevice = \"tpu\"\n";
    let e = Config::from_toml(text).unwrap_err().to_string();
    assert!(e.contains("train.device") && e.contains("tpu"), "{e}");
    // Ops off the CPU are always generic; on it, as configured.
    assert_eq!(Ops::Fused.on(&Device::Cpu), Ops::Fused);
    assert_eq!(Ops::Generic.on(&Device::Cpu), Ops::Generic);
}

/// The plan through the kernel ops (the generic path's: tokens assembled on the device,
/// `simhash_codes`, `sdim_signatures`, `topk_hamming`, `topk_scores` and their CPU twins here)
/// picks exactly the fused plan's behaviors and signatures, over whole training batches of
/// synthetic histories (up to 60 behaviors, k = 10), for every model that searches or hashes.
#[test]
fn the_kernel_op_plan_equals_the_fused_plan_on_training_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ds = crate::train::prepared(dir.path(), 400, 60);
    let train = ds.load_split(lifelong::data::Split::Train).unwrap();
    let rows: Vec<u32> = (0..train.len().min(1024) as u32).collect();
    for preset in [
        Preset::Sdim,
        Preset::Sim,
        Preset::Eta,
        Preset::Twin,
        Preset::Dare,
    ] {
        let cfg = crate::train::preset_config(preset, &ds.dir, &dir.path().join("x"), "");
        let model = |ops| {
            let mut m = cfg.model.clone();
            m.ops = ops;
            let vocab = lifelong::embedding::VocabSizes {
                users: ds.meta.n_users,
                items: ds.meta.n_items,
                cates: ds.meta.n_cates,
            };
            CtrModel::new(&m, cfg.data.max_len, vocab, 5, &Device::Cpu).unwrap()
        };
        let (fused, generic) = (model(Ops::Fused), model(Ops::Generic));
        let (mut windows, mut sigs) = (0, 0);
        for chunk in rows.chunks(256) {
            let batch = lifelong::data::batcher::collate(
                &ds.histories,
                &train,
                chunk,
                cfg.data.max_len,
                true,
            );
            let (pf, pg) = (fused.plan(&batch).unwrap(), generic.plan(&batch).unwrap());
            assert_eq!(pf.retrieved, pg.retrieved, "{preset:?}: retrieved");
            assert_eq!(pf.windows, pg.windows, "{preset:?}: windows");
            windows += pf.retrieved.map_or(0, |w| w.rows.len());
            for (a, b) in pf.parts.iter().zip(&pg.parts) {
                assert_eq!(sigs_of(a), sigs_of(b), "{preset:?}: signatures");
                sigs += a.sigs.as_ref().map_or(0, |s| s.rows.len());
            }
        }
        eprintln!("{preset:?}: {windows} retrieved rows, {sigs} signatures equal");
        assert!(windows + sigs > 5_000, "{preset:?}: too little compared");
    }
}

/// bf16 on the generic path: the tokens the parts read are the f32 rows rounded to bf16 (to
/// the bit), the logits stay within bf16's rounding of the f32 path's, every gradient lands in
/// the f32 master weights (f32, pointing the same way), and asking for bf16 on the fused ops is
/// refused by name.
#[test]
fn bf16_tokens_logits_and_gradients_against_f32() {
    use candle_core::DType;
    for (name, cfg) in configs() {
        let batch = batch_for(&cfg);
        let (f32m, bf16m) = (
            build(&cfg, Ops::Generic),
            build_as(&cfg, Ops::Generic, lifelong::device::Precision::Bf16),
        );
        // The conversion: gathered tokens are the f32 rows rounded to nearest-even bf16.
        let plan = bf16m.plan(&batch).unwrap();
        let (lb, _) = bf16m.leaves(&batch, &plan, false).unwrap();
        assert_eq!(lb.compute_dtype(), DType::BF16);
        let flat = vec_of(lb.tensor());
        let rounded: Vec<f32> = flat
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        let via = lb
            .tensor()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(vec_of(&via), rounded, "{name}: bf16 rounding");
        assert!(
            flat.iter().zip(&rounded).any(|(a, b)| a != b),
            "{name}: the rows are exactly representable, the check says nothing"
        );
        let (a, b) = (run(&f32m, &batch), run(&bf16m, &batch));
        for (i, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
            assert!(
                (x - y).abs() <= 0.03 * x.abs().max(1.0),
                "{name} logit {i}: f32 {x} bf16 {y}"
            );
        }
        assert_ne!(a.logits, b.logits, "{name}: bf16 changed nothing");
        // Gradients: f32 (the master weights'), and the same direction.
        let cos = |u: &[f32], v: &[f32]| {
            let dot: f64 = u.iter().zip(v).map(|(a, b)| *a as f64 * *b as f64).sum();
            let n = |w: &[f32]| w.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            dot / (n(u) * n(v)).max(1e-30)
        };
        assert!(
            cos(&a.leaf, &b.leaf) > 0.99,
            "{name}: leaf gradient direction"
        );
        for (n, g) in &a.params {
            if g.iter().any(|x| x.abs() > 1e-3) {
                let c = cos(g, &b.params[n]);
                assert!(c > 0.95, "{name} ∂{n}: cosine {c}");
            }
        }
    }
    // On the fused ops: refused by name.
    let mut m = tiny_config(Preset::Din, "").model;
    m.precision = lifelong::device::Precision::Bf16;
    let e = CtrModel::new(&m, 6, crate::common::TINY_VOCAB, 1, &Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("precision") && e.to_string().contains("generic"),
        "{e}"
    );
}

/// A checkpoint's weights (as `named_tensors` writes them) from one path load into the other
/// (what a checkpoint written on the CPU and opened on a GPU goes through): every weight of the
/// fused model moved off its initial value, the generic model given those tensors predicts what
/// the fused one does.
#[test]
fn weights_of_the_fused_model_load_into_the_generic_one() {
    for (name, cfg) in configs() {
        let batch = batch_for(&cfg);
        let mut fused = build(&cfg, Ops::Fused);
        // Move every weight away from its initial value (tables and dense parameters alike).
        let mut moved = std::collections::BTreeMap::new();
        for (n, t) in fused.named_tensors().unwrap() {
            let bumped = (t.affine(1.1, 0.01).unwrap()).contiguous().unwrap();
            moved.insert(n, bumped);
        }
        fused.load_tensors(&moved).unwrap();
        let mut generic = build(&cfg, Ops::Generic);
        assert_ne!(
            fused.predict(&batch).unwrap(),
            generic.predict(&batch).unwrap(),
            "{name}: the bump changed nothing"
        );
        let saved: std::collections::BTreeMap<String, Tensor> =
            fused.named_tensors().unwrap().into_iter().collect();
        generic.load_tensors(&saved).unwrap();
        assert_close(
            &format!("{name} predictions after loading"),
            &fused.predict(&batch).unwrap(),
            &generic.predict(&batch).unwrap(),
        );
    }
}

/// The generic token lookup against a loop over the flat buffer: two fields side by side from
/// their segments, padding rows (`NONE`) zero, gradients summed into the rows read and none into
/// a row only padding points at.
#[test]
fn the_generic_gather_reads_rows_and_zeroes_padding() {
    use lifelong::embedding::gather::gather_generic;
    use lifelong::embedding::leaves::FieldIndex;
    use lifelong::embedding::{Field, TokenIndex, NONE};
    use std::sync::Arc;
    // Segment A: 4 rows of 3 at offset 0; segment B: 3 rows of 2 at offset 12.
    let flat: Vec<f32> = (0..18).map(|i| 1.0 + i as f32 * 0.5).collect();
    let a = [2u32, NONE, 0, 2, NONE];
    let b = [1u32, 2, NONE, 0, NONE];
    let field = |f, col, dim, off, seg_rows, local: &[u32]| FieldIndex {
        field: f,
        col,
        dim,
        seg_offset: off,
        seg_rows,
        local: Arc::new(local.to_vec()),
    };
    let index = TokenIndex::new(
        5,
        5,
        vec![
            field(Field::Item, 0, 3, 0, 4, &a),
            field(Field::Cate, 3, 2, 12, 3, &b),
        ],
    );
    let var = candle_core::Var::from_slice(&flat, 18, &Device::Cpu).unwrap();
    let got = gather_generic(var.as_tensor(), &index).unwrap();
    let mut want = Vec::new();
    for r in 0..5 {
        for (ids, dim, off) in [(&a, 3usize, 0usize), (&b, 2, 12)] {
            for c in 0..dim {
                want.push(match ids[r] {
                    NONE => 0.0,
                    i => flat[off + i as usize * dim + c],
                });
            }
        }
    }
    assert_eq!(vec_of(&got), want);
    // Gradient of Σ out·w: each row read gets the sum of its readers' weights.
    let w: Vec<f32> = (0..25).map(|i| 0.1 * i as f32).collect();
    let wt = Tensor::from_slice(&w, (5, 5), &Device::Cpu).unwrap();
    let g = (got * wt).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vec_of(g.get(var.as_tensor()).unwrap());
    let mut want_g = vec![0f32; 18];
    for r in 0..5 {
        for (ids, dim, off, col) in [(&a, 3usize, 0usize, 0usize), (&b, 2, 12, 3)] {
            if ids[r] != NONE {
                for c in 0..dim {
                    want_g[off + ids[r] as usize * dim + c] += w[r * 5 + col + c];
                }
            }
        }
    }
    assert_close("gather gradient", &want_g, &g);
}
