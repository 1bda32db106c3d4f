//! A model assembled from parts in code (no TOML): SimHash Hamming search over the whole history,
//! DIN's activation unit over the retrieved behaviors, SDIM's buckets over the whole history, a
//! target attention over the most recent 10 and mean pooling of the most recent 50, trained one
//! epoch on the bundled sample.
//!
//! ```text
//! cargo run --release -- demo                              # once: prepares data/prepared/sample
//! cargo run --release --example custom_model
//! ```
//!
//! Any combination the parts allow is a model: the trainer, evaluation and checkpoints work
//! through the one model contract and never name a model kind.

use lifelong::config::preset::preset;
use lifelong::config::{
    Activation, AggregateConfig, AttentionAggregate, Config, DataConfig, DinAggregate,
    HammingSearch, MeanAggregate, ModelConfig, Preset, SdimAggregate, SearchConfig, TrainConfig,
    View, WindowConfig,
};
use lifelong::data::{Dataset, Split};
use lifelong::train::Trainer;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    lifelong::tune_runtime();
    let data = std::path::PathBuf::from("data/prepared/sample");
    anyhow::ensure!(
        data.join("meta.json").exists(),
        "{} is missing: run `cargo run --release -- demo` once first",
        data.display()
    );
    let model = ModelConfig {
        kind: Preset::Custom,
        // The embedding and head of the DIN preset, the other parts built here.
        embedding: preset(Preset::Din).embedding,
        search: SearchConfig::Hamming(HammingSearch {
            k: 20,
            bits: 64,
            view: View::Attention,
        }),
        aggregate: vec![
            AggregateConfig::Din(DinAggregate {
                window: WindowConfig::Retrieved,
                view: View::Representation,
                hidden: vec![64],
                activation: Activation::Dice,
                softmax: false,
                product: false,
                batch_norm: false,
                dropout: 0.0,
            }),
            AggregateConfig::Sdim(SdimAggregate {
                window: WindowConfig::All,
                groups: 8,
                tau: 3,
                normalize: true,
                keys: View::Attention,
                values: View::Representation,
            }),
            AggregateConfig::Attention(AttentionAggregate {
                window: WindowConfig::Recent(10),
                heads: 2,
                dim: 32,
                projection: true,
                keys: View::Attention,
                values: View::Representation,
                product: false,
            }),
            // Mean pooling of the last 50 (model/parts/mean.rs: a part is one file and one arm).
            AggregateConfig::Mean(MeanAggregate {
                window: WindowConfig::Recent(50),
                view: View::Representation,
            }),
        ],
        head: preset(Preset::Din).head,
        dice: Default::default(),
        ops: Default::default(),
        precision: Default::default(),
    };
    let cfg = Config {
        data: DataConfig {
            dir: data.clone(),
            max_len: 100,
        },
        model,
        train: TrainConfig {
            epochs: 1,
            out: "runs/custom_model".into(),
            ..TrainConfig::default()
        },
    };
    cfg.validate()?;
    let ds = Dataset::open(&data)?;
    let hist = ds.histories.clone();
    let (train, valid, test) = (
        Arc::new(ds.load_split(Split::Train)?),
        Arc::new(ds.load_split(Split::Valid)?),
        Arc::new(ds.load_split(Split::Test)?),
    );
    let mut t = Trainer::new(cfg.clone(), &ds, &cfg.train.out, &candle_core::Device::Cpu)?;
    let s = t.fit(hist.clone(), train, valid)?;
    let (m, _) = lifelong::eval::evaluate(t.model(), &hist, &test, 4096)?;
    println!(
        "custom model: {:.0} samples/s; test AUC {:.4}, GAUC {:.4}; checkpoints in {}",
        s.samples_per_sec(),
        m.auc.unwrap_or(f64::NAN),
        m.gauc.unwrap_or(f64::NAN),
        cfg.train.out.display()
    );
    Ok(())
}
