//! Presets: `kind = "din" | "sdim" | "sim" | "eta" | "twin" | "dare"` fills in every model part
//! the config does not give.
//!
//! Merging, in one rule applied recursively: a table given in the config is merged key by key
//! into the preset's table, unless its `kind` differs from the preset's (then it replaces it
//! whole, so a hamming search's `bits` never leaks into an attention search); a list
//! (`[[model.aggregate]]`) replaces the preset's list, each element merged with the preset's
//! element at the same position by the same rule; any other value replaces the preset's.
//!
//! The settings are the papers' where they give them and `../shared/peer`'s common harness
//! settings otherwise (32 dims per field, attention width 64 with 2 heads, top-k 50, a short-term
//! window of 50, DNN [200, 80]).

use super::model::*;
use super::Activation;

/// The full model config of a preset.
pub fn preset(kind: Preset) -> ModelConfig {
    let emb = |d: usize| EmbeddingConfig {
        item_dim: d,
        cate_dim: d,
        pos_dim: 0,
        user_dim: 0,
        time: None,
        attention: None,
        init: Init::Normal { std: 0.01 },
    };
    let head = |activation| HeadConfig {
        hidden: vec![200, 80],
        activation,
        batch_norm: false,
        input_batch_norm: false,
        dropout: 0.0,
    };
    let attention = |window| {
        AggregateConfig::Attention(AttentionAggregate {
            window,
            heads: 2,
            dim: 64,
            projection: true,
            keys: View::Attention,
            values: View::Representation,
            product: false,
        })
    };
    let short = attention(WindowConfig::Recent(50));
    let long = attention(WindowConfig::Retrieved);
    let (embedding, search, aggregate, head) = match kind {
        Preset::Din => (
            emb(32),
            SearchConfig::None(NoSearch {}),
            vec![AggregateConfig::Din(DinAggregate {
                window: WindowConfig::All,
                view: View::Representation,
                hidden: vec![64],
                activation: Activation::Dice,
                softmax: false,
                product: false,
                batch_norm: false,
                dropout: 0.0,
            })],
            head(Activation::Dice),
        ),
        // The paper's m = 48 hashes as G = 16 signatures of τ = 3 bits, with the short-term
        // target attention it is paired with.
        Preset::Sdim => (
            emb(32),
            SearchConfig::None(NoSearch {}),
            vec![
                AggregateConfig::Sdim(SdimAggregate {
                    window: WindowConfig::All,
                    groups: 16,
                    tau: 3,
                    normalize: true,
                    keys: View::Attention,
                    values: View::Representation,
                }),
                short,
            ],
            head(Activation::Dice),
        ),
        Preset::Eta => (
            emb(32),
            SearchConfig::Hamming(HammingSearch {
                k: 50,
                bits: 64,
                view: View::Attention,
            }),
            vec![long, short],
            head(Activation::Dice),
        ),
        // SIM soft search is trained through an auxiliary CTR head on the soft-search pooling.
        Preset::Sim => (
            emb(32),
            SearchConfig::Attention(AttentionSearch {
                k: 50,
                scorer: SearchScorer::Own,
                dim: 64,
                view: View::Attention,
                aux: Some(AuxConfig {
                    weight: 1.0,
                    pooling: AuxPooling::Softmax,
                    product: false,
                    hidden: vec![200, 80],
                    activation: Activation::Dice,
                    batch_norm: false,
                    input_batch_norm: false,
                    dropout: 0.0,
                }),
            }),
            vec![long, short],
            head(Activation::Dice),
        ),
        Preset::Twin => (
            emb(32),
            SearchConfig::Attention(AttentionSearch {
                k: 50,
                scorer: SearchScorer::Exact,
                dim: 64,
                view: View::Attention,
                aux: None,
            }),
            vec![long, short],
            head(Activation::Dice),
        ),
        // The paper's reference settings (16 dims per field and position, top-k 20) and the
        // official code's parts: parameter-free dot-product search and attention on the
        // attention tables, the target-aware product, the auxiliary head on full attention.
        Preset::Dare => (
            EmbeddingConfig {
                item_dim: 16,
                cate_dim: 16,
                pos_dim: 16,
                user_dim: 0,
                time: None,
                attention: Some(AttentionDims {
                    item_dim: 16,
                    cate_dim: 16,
                    pos_dim: 16,
                    time_dim: 0,
                }),
                init: Init::Normal { std: 0.01 },
            },
            SearchConfig::Attention(AttentionSearch {
                k: 20,
                scorer: SearchScorer::Dot,
                dim: 64,
                view: View::Attention,
                aux: Some(AuxConfig {
                    weight: 1.0,
                    pooling: AuxPooling::Softmax,
                    product: true,
                    hidden: vec![200],
                    activation: Activation::Prelu,
                    batch_norm: false,
                    input_batch_norm: false,
                    dropout: 0.0,
                }),
            }),
            vec![AggregateConfig::Attention(AttentionAggregate {
                window: WindowConfig::Retrieved,
                heads: 1,
                dim: 64,
                projection: false,
                keys: View::Attention,
                values: View::Representation,
                product: true,
            })],
            head(Activation::Prelu),
        ),
        Preset::Custom => (
            emb(32),
            SearchConfig::None(NoSearch {}),
            Vec::new(),
            head(Activation::Dice),
        ),
    };
    ModelConfig {
        kind,
        embedding,
        search,
        aggregate,
        head,
        dice: DiceConfig::default(),
        ops: Default::default(),
        precision: Default::default(),
    }
}

/// Merges `user` into `base` by the rule in the module docs.
pub fn merge(base: &mut toml::Value, user: toml::Value) {
    use toml::Value;
    match (base, user) {
        (Value::Table(b), Value::Table(u)) => {
            let kind_differs = match (b.get("kind"), u.get("kind")) {
                (Some(bk), Some(uk)) => bk != uk,
                _ => false,
            };
            if kind_differs {
                *b = u;
                return;
            }
            for (k, v) in u {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(u)) => {
            let old = std::mem::take(b);
            let mut old = old.into_iter();
            for v in u {
                match old.next() {
                    Some(mut slot) => {
                        merge(&mut slot, v);
                        b.push(slot);
                    }
                    None => b.push(v),
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Resolves a `[model]` table: the preset named by its `kind` (required), with the table merged
/// over it. `kind = "custom"` starts from no parts at all.
///
/// # Errors
/// A message for a missing or unknown `kind`.
pub fn resolve(user: toml::Value) -> std::result::Result<toml::Value, String> {
    let kind = user
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| {
            "model.kind is missing: one of din, sdim, sim, eta, twin, dare, custom".to_string()
        })?
        .to_string();
    let preset_kind: Preset = serde::Deserialize::deserialize(toml::Value::String(kind.clone()))
        .map_err(|_| {
            format!("model.kind = {kind:?} is not one of din, sdim, sim, eta, twin, dare, custom")
        })?;
    let mut base = if preset_kind == Preset::Custom {
        toml::Value::Table(toml::Table::new())
    } else {
        toml::Value::try_from(preset(preset_kind)).map_err(|e| format!("preset {kind}: {e}"))?
    };
    merge(&mut base, user);
    Ok(base)
}
