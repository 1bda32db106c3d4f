//! The model config, composed of parts: embeddings → optional search → aggregations → head.
//!
//! ```toml
//! [model]
//! kind = "eta"                     # a preset (see `preset.rs`) that fills in every part not given
//! [model.embedding]                # tables per field (and role, when decoupled)
//! [model.search]                   # none | hamming | attention | category
//! [[model.aggregate]]              # din | attention | sdim, each over a window of the history
//! [model.head]                     # MLP over [target, aggregations…, user]
//! ```
//!
//! Every struct rejects unknown keys. Tagged enums wrap structs that carry `deny_unknown_fields`
//! themselves (serde ignores the attribute on an internally tagged enum's variants, serde#2123).

use super::Activation;
use serde::{Deserialize, Serialize};

/// The model: which preset the parts came from, and the parts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The preset the parts were filled in from. A label only: the parts below define the model,
    /// and nothing outside the config reads it.
    pub kind: Preset,
    /// Embedding tables.
    pub embedding: EmbeddingConfig,
    /// The search unit over the whole history (no gradient), feeding `window = "retrieved"`.
    pub search: SearchConfig,
    /// Aggregations, each producing one or two vectors for the head.
    pub aggregate: Vec<AggregateConfig>,
    /// The prediction head.
    pub head: HeadConfig,
    /// Dice settings shared by every Dice layer.
    #[serde(default)]
    pub dice: DiceConfig,
    /// The parts' implementation: `fused` CPU ops (the default) or `generic` candle ops (any
    /// device; every part takes it on a GPU). See [`crate::device::Ops`].
    #[serde(default)]
    pub ops: crate::device::Ops,
    /// The generic path's activations: `f32` or `bf16` (f32 master weights). See
    /// [`crate::device::Precision`].
    #[serde(default)]
    pub precision: crate::device::Precision,
}

/// Model presets (`kind`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// DIN (Zhou et al., KDD'18): the activation unit over the history.
    Din,
    /// SDIM (Cao et al., CIKM'22): SimHash bucket sums over the long history + short-term attention.
    Sdim,
    /// SIM soft search (Pi et al., CIKM'20): attention-score top-k + target attention.
    Sim,
    /// ETA (Chen et al., 2021): SimHash Hamming top-k + target attention.
    Eta,
    /// TWIN (Chang et al., KDD'23): top-k by the exact unit's own attention scores.
    Twin,
    /// DARE (Feng et al., ICLR'25): decoupled attention and representation tables.
    Dare,
    /// No preset: every part is given in the config.
    Custom,
}

impl Preset {
    /// Every preset but `custom`.
    pub const ALL: [Preset; 6] = [
        Preset::Din,
        Preset::Sdim,
        Preset::Sim,
        Preset::Eta,
        Preset::Twin,
        Preset::Dare,
    ];
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Din => "din",
            Preset::Sdim => "sdim",
            Preset::Sim => "sim",
            Preset::Eta => "eta",
            Preset::Twin => "twin",
            Preset::Dare => "dare",
            Preset::Custom => "custom",
        }
    }
}

/// How embedding rows are initialised.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Init {
    /// N(0, std²).
    Normal {
        /// Standard deviation.
        std: f32,
    },
    /// U(−bound, bound).
    Uniform {
        /// Half-width.
        bound: f32,
    },
}

/// Embedding tables: one per field, or, with `attention` set, two per field (DARE): an attention
/// table (search and attention weights) and a representation table (what is aggregated).
///
/// A token (target or behavior) is the concatenation of its field embeddings: item ⊕ category
/// (⊕ relative position). The user field, when present, feeds the head only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Item width (the representation table's when decoupled).
    pub item_dim: usize,
    /// Category width.
    pub cate_dim: usize,
    /// Relative-position width (0 = no position field). Newest behavior = 1, target = 0.
    #[serde(default)]
    pub pos_dim: usize,
    /// User-id width (0 = no user field).
    #[serde(default)]
    pub user_dim: usize,
    /// The time-interval field: each behavior's gap to the target's time, log-bucketed (absent
    /// = none). Needs data with timestamps (an event log's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeConfig>,
    /// Decoupled attention tables (DARE): their widths. Absent = one shared table per field.
    #[serde(default)]
    pub attention: Option<AttentionDims>,
    /// Initialisation of every table. Each table draws from its own seed (derived from the
    /// training seed and the table's name), so adding a table never changes another's values.
    pub init: Init,
}

/// Widths of the decoupled attention tables (may be smaller than the representation's).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttentionDims {
    /// Item width.
    pub item_dim: usize,
    /// Category width.
    pub cate_dim: usize,
    /// Position width (0 = no position in the attention view; ignored without a position field).
    #[serde(default)]
    pub pos_dim: usize,
    /// Time-interval width (0 = no time in the attention view; ignored without a time field).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time_dim: usize,
}

/// The time-interval field (SIM's time embedding): gap `now − ts` of each behavior, in the
/// timestamps' unit, in bucket `1 + #{edges ≤ gap}`; the target reads row 0. See
/// [`crate::data::time`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// Width (the representation view's, or the shared one's); 0 = no time field (as
    /// `pos_dim = 0`: a config turns a preset's or a file's field off with
    /// `--set model.embedding.time.dim=0`).
    pub dim: usize,
    /// Ascending bucket edges (default: powers of two 1, 2, 4, …, 2^40).
    #[serde(default = "crate::data::time::default_edges")]
    pub edges: Vec<i64>,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

/// Which tables a part reads: without decoupling both views are the shared tables.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// The attention tables (DARE's E^att), or the shared ones.
    Attention,
    /// The representation tables (DARE's E^rep), or the shared ones.
    Representation,
}

/// Which behaviors of a sample's (max_len-truncated) history a part reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WindowConfig {
    /// The whole history.
    All,
    /// The most recent `n` behaviors (the short-term window).
    Recent(usize),
    /// The search unit's top-k.
    Retrieved,
}

/// The search unit: picks the top-k behaviors of the whole history per sample, without gradient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SearchConfig {
    /// No search.
    None(NoSearch),
    /// ETA: SimHash codes, the k nearest in Hamming distance to the target's code.
    Hamming(HammingSearch),
    /// SIM soft / TWIN / DARE: the k highest attention scores.
    Attention(AttentionSearch),
    /// SIM hard: behaviors of the target's category, most recent first.
    Category(CategorySearch),
}

/// `kind = "none"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoSearch {}

/// ETA's search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HammingSearch {
    /// Behaviors retrieved per sample.
    pub k: usize,
    /// Code length in bits (packed into u64 words).
    pub bits: usize,
    /// Tables whose tokens are hashed.
    #[serde(default = "attention_view")]
    pub view: View,
}

/// How the attention search scores a behavior.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SearchScorer {
    /// ⟨t, e⟩ scaled per field group (no parameters): DARE, and TWIN in DARE's code.
    Dot,
    /// ⟨W_q t, W_k e⟩ / √dim with the search's own projections (SIM soft).
    Own,
    /// The scores of the exact unit that reads the retrieved window (TWIN): the same parameters.
    Exact,
}

/// The attention search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttentionSearch {
    /// Behaviors retrieved per sample.
    pub k: usize,
    /// How behaviors are scored.
    pub scorer: SearchScorer,
    /// Width of the own projections (`scorer = "own"`).
    #[serde(default = "d64")]
    pub dim: usize,
    /// Tables the scores read.
    #[serde(default = "attention_view")]
    pub view: View,
    /// Auxiliary head on the full (no top-k) attention over the whole history, added to the loss.
    #[serde(default)]
    pub aux: Option<AuxConfig>,
}

/// How the auxiliary head pools the whole history with the search scores.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuxPooling {
    /// Softmax of the scores over each history (DARE).
    Softmax,
    /// The raw scores (SIM's `Σ r_j e_j`).
    Raw,
}

/// The auxiliary head of an attention search: `MLP([t_rep, h, (t_rep ⊙ h)])` with
/// `h = Σ_j w_j e^rep_j` over the whole history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuxConfig {
    /// Weight of the auxiliary loss (0 = no auxiliary head: how a config turns a preset's off).
    #[serde(default = "one")]
    pub weight: f64,
    /// Weights of the pooling.
    #[serde(default = "softmax_pooling")]
    pub pooling: AuxPooling,
    /// Also feed `t_rep ⊙ h`.
    #[serde(default)]
    pub product: bool,
    /// Hidden sizes of the auxiliary MLP.
    pub hidden: Vec<usize>,
    /// Its activation.
    pub activation: Activation,
    /// `Linear → BatchNorm → activation` in every hidden layer (FuxiCTR's `batch_norm`):
    /// PyTorch's `BatchNorm1d` (ε 1e-5, momentum 0.1, unbiased running variance), batch
    /// statistics in training, running ones (saved with checkpoints) in evaluation and serving.
    #[serde(default, skip_serializing_if = "is_false")]
    pub batch_norm: bool,
    /// BatchNorm on the MLP's input, before its first `Linear` (DARE's MLPs; FuxiCTR's
    /// `bn_only_once`); the same BatchNorm as `batch_norm`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub input_batch_norm: bool,
    /// Dropout rate after every hidden activation, in training only, in [0, 1) (0 = none;
    /// FuxiCTR's `net_dropout`): kept units are scaled by 1/(1 − rate).
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub dropout: f32,
}

/// SIM hard search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CategorySearch {
    /// Behaviors retrieved per sample.
    pub k: usize,
}

/// One aggregation over a window of the history, producing interest vectors for the head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AggregateConfig {
    /// DIN's local activation unit.
    Din(DinAggregate),
    /// Target attention (multi-head, masked softmax).
    Attention(AttentionAggregate),
    /// SDIM's hash-bucket gathering.
    Sdim(SdimAggregate),
    /// Mean pooling of the window (the base model of DIN's paper), no target awareness.
    Mean(MeanAggregate),
}

impl AggregateConfig {
    /// The window it reads.
    pub fn window(&self) -> WindowConfig {
        match self {
            AggregateConfig::Din(a) => a.window,
            AggregateConfig::Attention(a) => a.window,
            AggregateConfig::Sdim(a) => a.window,
            AggregateConfig::Mean(a) => a.window,
        }
    }
}

/// DIN's activation unit: `a_j = MLP([t, e_j, t − e_j, t ⊙ e_j])`, `u = Σ_j a_j e_j`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DinAggregate {
    /// The behaviors it attends to.
    pub window: WindowConfig,
    /// Tables of the tokens.
    #[serde(default = "representation_view")]
    pub view: View,
    /// Hidden sizes of the unit (the paper: 80-40; FuxiCTR's default: 64).
    pub hidden: Vec<usize>,
    /// Activation of the unit.
    pub activation: Activation,
    /// Softmax-normalise the weights over each window (the paper does not).
    #[serde(default)]
    pub softmax: bool,
    /// Also feed `t ⊙ u` to the head (the target-aware product DARE's code gives every model).
    #[serde(default)]
    pub product: bool,
    /// `Linear → BatchNorm → activation` in every hidden layer of the unit (as
    /// `model.head.batch_norm`), statistics over the real behaviors of the batch. Takes the
    /// unit off its fused one-Dice-layer op.
    #[serde(default, skip_serializing_if = "is_false")]
    pub batch_norm: bool,
    /// Dropout rate after every hidden activation of the unit, training only, in [0, 1)
    /// (FuxiCTR's `attention_dropout` for DIN). Takes the unit off its fused one-Dice-layer op.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub dropout: f32,
}

/// Target attention over a window: `softmax_j(⟨q, k_j⟩ / √d_h)` per head, values `v_j`.
///
/// With `projection = true` (FuxiCTR's MultiHeadTargetAttention): `q = W_q t`, `k = W_k e`,
/// `v = W_v e`, heads of width `dim / heads`, output `W_o [heads]` of the values' width. With
/// `projection = false` (DARE): one head, `⟨t, e⟩` scaled per field group, the values as they are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttentionAggregate {
    /// The behaviors it attends to.
    pub window: WindowConfig,
    /// Heads (projection only).
    #[serde(default = "two")]
    pub heads: usize,
    /// Attention width (projection only).
    #[serde(default = "d64")]
    pub dim: usize,
    /// Learned Q/K/V/O projections.
    #[serde(default = "yes")]
    pub projection: bool,
    /// Tables of the query and keys.
    #[serde(default = "attention_view")]
    pub keys: View,
    /// Tables of the values.
    #[serde(default = "representation_view")]
    pub values: View,
    /// Also feed `t_values ⊙ out` to the head (DARE's target-aware product).
    #[serde(default)]
    pub product: bool,
}

/// SDIM: `a_g = l2norm(Σ_{j: sig_g(e_j) = sig_g(t)} e_j)`, `u = (1/G) Σ_g a_g`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdimAggregate {
    /// The behaviors it hashes (the long window).
    pub window: WindowConfig,
    /// Signature groups G (the paper's m = G·τ hashes).
    pub groups: usize,
    /// Bits per signature τ (the config's key stays `bits`, so checkpoints and their
    /// fingerprints are those of earlier versions).
    #[serde(rename = "bits")]
    pub tau: usize,
    /// l2-normalise each group's bucket sum (the paper does; FuxiCTR's default does not).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Tables hashed.
    #[serde(default = "attention_view")]
    pub keys: View,
    /// Tables summed.
    #[serde(default = "representation_view")]
    pub values: View,
}

/// Mean pooling: `u = (1/|W|) Σ_{j ∈ W} e_j` over the window (zeros for an empty one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeanAggregate {
    /// The behaviors it averages.
    pub window: WindowConfig,
    /// Tables of the tokens.
    #[serde(default = "representation_view")]
    pub view: View,
}

/// The head: an MLP over `[target (representation view), aggregations…, user]` → one logit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Hidden sizes.
    pub hidden: Vec<usize>,
    /// Activation.
    pub activation: Activation,
    /// `Linear → BatchNorm → activation` in every hidden layer (FuxiCTR's `batch_norm`):
    /// PyTorch's `BatchNorm1d` (ε 1e-5, momentum 0.1, unbiased running variance), batch
    /// statistics in training, running ones (saved with checkpoints) in evaluation and serving.
    #[serde(default, skip_serializing_if = "is_false")]
    pub batch_norm: bool,
    /// BatchNorm on the MLP's input, before its first `Linear` (DARE's MLPs; FuxiCTR's
    /// `bn_only_once`); the same BatchNorm as `batch_norm`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub input_batch_norm: bool,
    /// Dropout rate after every hidden activation, in training only, in [0, 1) (0 = none;
    /// FuxiCTR's `net_dropout`): kept units are scaled by 1/(1 − rate).
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub dropout: f32,
}

/// Dice's settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiceConfig {
    /// ε in sqrt(Var + ε).
    #[serde(default = "default_dice_eps")]
    pub eps: f32,
    /// Momentum of the running statistics: running ← (1 − m)·running + m·batch.
    #[serde(default = "default_dice_momentum")]
    pub momentum: f32,
}

impl Default for DiceConfig {
    fn default() -> Self {
        Self {
            eps: default_dice_eps(),
            momentum: default_dice_momentum(),
        }
    }
}

fn attention_view() -> View {
    View::Attention
}
fn representation_view() -> View {
    View::Representation
}
fn d64() -> usize {
    64
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn softmax_pooling() -> AuxPooling {
    AuxPooling::Softmax
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_f32(x: &f32) -> bool {
    *x == 0.0
}
fn default_dice_eps() -> f32 {
    1e-8
}
fn default_dice_momentum() -> f32 {
    0.1
}

/// A dropout rate must be in [0, 1).
fn dropout_ok(p: f32, key: &str) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("{key} = {p} must be in [0, 1) (0 = no dropout)"))
    }
}

impl ModelConfig {
    /// Checks what serde cannot: sizes, and that the parts fit together.
    ///
    /// # Errors
    /// A message naming the offending key (`model.…`).
    pub fn validate(&self, max_len: usize) -> std::result::Result<(), String> {
        let e = &self.embedding;
        if e.item_dim == 0 || e.cate_dim == 0 {
            return Err("model.embedding.item_dim and cate_dim must be at least 1".into());
        }
        if let Some(a) = &e.attention {
            if a.item_dim == 0 || a.cate_dim == 0 {
                return Err(
                    "model.embedding.attention.item_dim and cate_dim must be at least 1".into(),
                );
            }
        }
        if let Some(t) = &e.time {
            crate::data::time::check_edges(&t.edges)?;
        }
        let width_ok = |x: f32| x >= 0.0 && x.is_finite();
        match e.init {
            Init::Normal { std } if !width_ok(std) => {
                return Err("model.embedding.init.std must be finite and non-negative".into())
            }
            Init::Uniform { bound } if !width_ok(bound) => {
                return Err("model.embedding.init.bound must be finite and non-negative".into())
            }
            _ => {}
        }
        let d = &self.dice;
        if !(d.momentum > 0.0 && d.momentum <= 1.0) {
            return Err("model.dice.momentum must be in (0, 1]".into());
        }
        if !(d.eps >= 0.0 && d.eps.is_finite()) {
            return Err("model.dice.eps must be finite and non-negative".into());
        }
        if self.head.hidden.contains(&0) {
            return Err("model.head.hidden layers must be non-zero".into());
        }
        dropout_ok(self.head.dropout, "model.head.dropout")?;
        if self.aggregate.is_empty() {
            return Err("model.aggregate needs at least one aggregation".into());
        }
        let retrieved: Vec<usize> = (0..self.aggregate.len())
            .filter(|&i| self.aggregate[i].window() == WindowConfig::Retrieved)
            .collect();
        let has_search = !matches!(self.search, SearchConfig::None(_));
        if !retrieved.is_empty() && !has_search {
            return Err(format!(
                "model.aggregate[{}] reads window = \"retrieved\" but model.search is none",
                retrieved[0]
            ));
        }
        if has_search && retrieved.is_empty() {
            return Err(
                "model.search retrieves behaviors but no model.aggregate reads window = \"retrieved\""
                    .into(),
            );
        }
        let k_ok = |k: usize, what: &str| {
            if k == 0 || k > max_len.max(1) * 64 {
                Err(format!("model.search.k = {k} {what}"))
            } else {
                Ok(())
            }
        };
        match &self.search {
            SearchConfig::None(_) => {}
            SearchConfig::Hamming(h) => {
                k_ok(h.k, "must be at least 1")?;
                if h.bits == 0 || h.bits > 1024 {
                    return Err("model.search.bits must be in 1..=1024".into());
                }
            }
            SearchConfig::Attention(a) => {
                k_ok(a.k, "must be at least 1")?;
                if a.scorer == SearchScorer::Own && a.dim == 0 {
                    return Err("model.search.dim must be at least 1".into());
                }
                if a.scorer == SearchScorer::Exact {
                    if retrieved.len() != 1 {
                        return Err("model.search.scorer = \"exact\" needs exactly one model.aggregate with window = \"retrieved\"".into());
                    }
                    match &self.aggregate[retrieved[0]] {
                        AggregateConfig::Attention(t) if t.keys == a.view => {}
                        AggregateConfig::Attention(_) => {
                            return Err("model.search.scorer = \"exact\": the search's view must be the exact unit's keys".into())
                        }
                        _ => {
                            return Err("model.search.scorer = \"exact\" needs the retrieved window to be read by kind = \"attention\"".into())
                        }
                    }
                }
                if let Some(x) = &a.aux {
                    if !(x.weight >= 0.0 && x.weight.is_finite()) {
                        return Err("model.search.aux.weight must be finite and non-negative (0 = no auxiliary head)".into());
                    }
                    if x.hidden.contains(&0) {
                        return Err("model.search.aux.hidden layers must be non-zero".into());
                    }
                    dropout_ok(x.dropout, "model.search.aux.dropout")?;
                }
            }
            SearchConfig::Category(c) => k_ok(c.k, "must be at least 1")?,
        }
        for (i, a) in self.aggregate.iter().enumerate() {
            if let WindowConfig::Recent(0) = a.window() {
                return Err(format!(
                    "model.aggregate[{i}].window: recent needs at least 1"
                ));
            }
            match a {
                AggregateConfig::Din(d) => {
                    if d.hidden.is_empty() || d.hidden.contains(&0) {
                        return Err(format!(
                            "model.aggregate[{i}].hidden needs at least one non-zero layer"
                        ));
                    }
                    dropout_ok(d.dropout, &format!("model.aggregate[{i}].dropout"))?;
                }
                AggregateConfig::Attention(t) => {
                    if t.projection && (t.heads == 0 || t.dim == 0 || t.dim % t.heads != 0) {
                        return Err(format!(
                            "model.aggregate[{i}]: dim ({}) must be a non-zero multiple of heads ({})",
                            t.dim, t.heads
                        ));
                    }
                    if t.product && t.values != View::Representation {
                        return Err(format!(
                            "model.aggregate[{i}]: product needs values = \"representation\" (it multiplies by the target's representation)"
                        ));
                    }
                }
                AggregateConfig::Sdim(s) => {
                    if s.groups == 0 || s.tau == 0 || s.tau > 16 || s.groups * s.tau > 4096 {
                        return Err(format!(
                            "model.aggregate[{i}]: groups must be ≥ 1 and bits (τ) in 1..=16 (groups·bits ≤ 4096)"
                        ));
                    }
                }
                AggregateConfig::Mean(_) => {}
            }
        }
        Ok(())
    }

    /// Width of a token in `view`.
    pub fn view_width(&self, view: View) -> usize {
        let e = &self.embedding;
        match (view, &e.attention) {
            (View::Attention, Some(a)) => {
                a.item_dim + a.cate_dim + if e.pos_dim > 0 { a.pos_dim } else { 0 }
            }
            _ => e.item_dim + e.cate_dim + e.pos_dim,
        }
    }
}
