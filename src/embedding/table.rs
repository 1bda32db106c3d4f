//! Host-resident embedding tables, one per (field, role), and the views that concatenate them
//! into tokens.
//!
//! | role | tables | used by |
//! |---|---|---|
//! | shared | `item`, `cate`, `pos`, `user` | every part (no decoupling) |
//! | attention | `att.item`, `att.cate`, `att.pos` | search and attention weights (DARE) |
//! | representation | `rep.item`, `rep.cate`, `rep.pos` | what is aggregated and the head (DARE) |
//!
//! Row 0 of the item, category and user tables is padding (zero, never updated). The position
//! table has no padding row: row 0 is the target's position, row `p` the behavior `p` steps back
//! (newest = 1), so it has `max_len + 1` rows, all trained.

use crate::config::{EmbeddingConfig, Init, View};
use crate::data::Field;
use crate::seed::named_seed;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Vocabulary sizes the tables are built for (padding and unknown included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabSizes {
    /// Users.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Categories.
    pub cates: usize,
}

/// What a table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// One table for everything.
    Shared,
    /// DARE's attention table.
    Attention,
    /// DARE's representation table.
    Representation,
}

/// A table's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableKey {
    /// The field.
    pub field: Field,
    /// The role.
    pub role: Role,
}

impl TableKey {
    /// The table's name in checkpoints: `item`, `att.item`, `rep.item`, ...
    pub fn name(self) -> String {
        match self.role {
            Role::Shared => self.field.name().to_string(),
            Role::Attention => format!("att.{}", self.field.name()),
            Role::Representation => format!("rep.{}", self.field.name()),
        }
    }
}

/// One embedding table in host memory (`rows × dim` f32, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingTable {
    name: String,
    rows: usize,
    dim: usize,
    padding: bool,
    data: Vec<f32>,
}

impl EmbeddingTable {
    /// A table of `rows × dim` drawn from `init`; with `padding`, row 0 is zero.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid init.
    pub fn new(
        name: &str,
        rows: usize,
        dim: usize,
        padding: bool,
        init: Init,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let len = rows.checked_mul(dim).ok_or_else(|| {
            Error::InvalidArgument(format!("table `{name}`: {rows} × {dim} overflows"))
        })?;
        let mut data = vec![0f32; len];
        let first = if padding { dim.min(len) } else { 0 };
        match init {
            Init::Normal { std } => {
                let d = Normal::new(0.0, std).map_err(|e| Error::Config(format!("init: {e}")))?;
                data[first..].iter_mut().for_each(|x| *x = d.sample(rng));
            }
            Init::Uniform { bound } => {
                if !(bound >= 0.0 && bound.is_finite()) {
                    return Err(Error::Config(format!("init: bound {bound}")));
                }
                data[first..]
                    .iter_mut()
                    .for_each(|x| *x = rng.random_range(-bound..=bound));
            }
        }
        Ok(Self {
            name: name.to_string(),
            rows,
            dim,
            padding,
            data,
        })
    }

    /// The table from a `[rows, dim]` tensor (a checkpoint).
    pub fn from_tensor(name: &str, padding: bool, t: &Tensor) -> Result<Self> {
        let (rows, dim) = t.dims2()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            name: name.to_string(),
            rows,
            dim,
            padding,
            data,
        })
    }

    /// The whole table as a `[rows, dim]` CPU tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.dim),
            &Device::Cpu,
        )?)
    }

    /// Table name (`item`, `att.cate`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of rows (padding and unknown included).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Whether row 0 is padding (kept at zero, never updated).
    pub fn has_padding(&self) -> bool {
        self.padding
    }
    /// Row `i`.
    pub fn row(&self, i: u32) -> &[f32] {
        &self.data[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
    /// The flat row-major data.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub(crate) fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Checks that every id is a row of this table.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the table, the id and the table's size.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            return Err(Error::InvalidArgument(format!(
                "`{}` index {bad} is outside the embedding table ({} rows): the dataset does not \
                 match the model",
                self.name, self.rows
            )));
        }
        Ok(())
    }

    /// Overwrites row `i` (tests, tools).
    pub fn set_row(&mut self, i: u32, v: &[f32]) {
        let d = self.dim;
        self.data[i as usize * d..(i as usize + 1) * d].copy_from_slice(v);
    }
}

/// One field of a view: which table, and where its columns sit in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewField {
    /// Index of the table in [`Tables`].
    pub table: usize,
    /// The field.
    pub field: Field,
    /// First column of the field in the token.
    pub col: usize,
    /// Its width.
    pub dim: usize,
}

/// The tables whose concatenation is a token of a view (item ⊕ cate ⊕ pos).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSpec {
    /// Fields in token order.
    pub fields: Vec<ViewField>,
    /// Token width.
    pub width: usize,
}

impl ViewSpec {
    /// The dot-product scale of each column: `1/√d_sem` on the item and category fields and
    /// `1/√d_f` on each context field (position, time), as DARE's code scores ⟨t, e⟩ (semantic
    /// and position parts scaled separately; the time field is scaled as a part of its own);
    /// `1/√d` without context fields.
    pub fn dot_scale(&self) -> Vec<f32> {
        let sem: usize = self
            .fields
            .iter()
            .filter(|f| !f.field.is_context())
            .map(|f| f.dim)
            .sum();
        let mut s = vec![0f32; self.width];
        for f in &self.fields {
            let d = if f.field.is_context() { f.dim } else { sem };
            let v = 1.0 / (d.max(1) as f32).sqrt();
            s[f.col..f.col + f.dim].iter_mut().for_each(|x| *x = v);
        }
        s
    }
}

/// Every table of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tables {
    keys: Vec<TableKey>,
    tables: Vec<EmbeddingTable>,
    att: ViewSpec,
    rep: ViewSpec,
    user: Option<usize>,
}

impl Tables {
    /// The tables an embedding config describes, for vocabularies `vocab` and histories up to
    /// `max_len`, each drawn from its own seed (`named_seed(seed, name)`).
    pub fn new(
        cfg: &EmbeddingConfig,
        vocab: VocabSizes,
        max_len: usize,
        seed: u64,
    ) -> Result<Self> {
        let mut keys = Vec::new();
        let mut dims = Vec::new();
        let fields = |role: Role, item: usize, cate: usize, pos: usize, time: usize| {
            let mut v = vec![
                (
                    TableKey {
                        field: Field::Item,
                        role,
                    },
                    item,
                ),
                (
                    TableKey {
                        field: Field::Cate,
                        role,
                    },
                    cate,
                ),
            ];
            for (field, d) in [(Field::Pos, pos), (Field::Time, time)] {
                if d > 0 {
                    v.push((TableKey { field, role }, d));
                }
            }
            v
        };
        let pos = cfg.pos_dim;
        let time = cfg.time.as_ref().map_or(0, |t| t.dim);
        let (att, rep) = match &cfg.attention {
            None => {
                let f = fields(Role::Shared, cfg.item_dim, cfg.cate_dim, pos, time);
                (f.clone(), f)
            }
            Some(a) => (
                fields(
                    Role::Attention,
                    a.item_dim,
                    a.cate_dim,
                    if pos > 0 { a.pos_dim } else { 0 },
                    if time > 0 { a.time_dim } else { 0 },
                ),
                fields(Role::Representation, cfg.item_dim, cfg.cate_dim, pos, time),
            ),
        };
        let time_rows = match &cfg.time {
            Some(t) => crate::data::TimeBuckets::new(t.edges.clone())?.rows(),
            None => 0,
        };
        for (k, d) in att.iter().chain(&rep) {
            if !keys.contains(k) {
                keys.push(*k);
                dims.push(*d);
            }
        }
        if cfg.user_dim > 0 {
            keys.push(TableKey {
                field: Field::User,
                role: Role::Shared,
            });
            dims.push(cfg.user_dim);
        }
        let mut tables = Vec::with_capacity(keys.len());
        for (k, &d) in keys.iter().zip(&dims) {
            let rows = match k.field {
                Field::Item => vocab.items,
                Field::Cate => vocab.cates,
                Field::User => vocab.users,
                Field::Pos => max_len + 1,
                Field::Time => time_rows,
            };
            let name = k.name();
            let mut rng = ChaCha8Rng::seed_from_u64(named_seed(seed, &format!("table/{name}")));
            tables.push(EmbeddingTable::new(
                &name,
                rows,
                d,
                !k.field.is_context(),
                cfg.init,
                &mut rng,
            )?);
        }
        let spec = |list: &[(TableKey, usize)]| {
            let mut col = 0;
            let fields = list
                .iter()
                .map(|(k, d)| {
                    let f = ViewField {
                        table: keys.iter().position(|x| x == k).unwrap_or(0),
                        field: k.field,
                        col,
                        dim: *d,
                    };
                    col += d;
                    f
                })
                .collect();
            ViewSpec { fields, width: col }
        };
        let (att, rep) = (spec(&att), spec(&rep));
        let user = keys.iter().position(|k| k.field == Field::User);
        Ok(Self {
            keys,
            tables,
            att,
            rep,
            user,
        })
    }

    /// Number of tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }
    /// No tables (never for a built model).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
    /// Table `i`.
    pub fn table(&self, i: usize) -> &EmbeddingTable {
        &self.tables[i]
    }
    /// Table `i`, mutable (the trainer applies row-wise updates).
    pub fn table_mut(&mut self, i: usize) -> &mut EmbeddingTable {
        &mut self.tables[i]
    }
    /// The key of table `i`.
    pub fn key(&self, i: usize) -> TableKey {
        self.keys[i]
    }
    /// All tables.
    pub fn iter(&self) -> impl Iterator<Item = &EmbeddingTable> {
        self.tables.iter()
    }
    /// The tables of a view.
    pub fn view(&self, view: View) -> &ViewSpec {
        match view {
            View::Attention => &self.att,
            View::Representation => &self.rep,
        }
    }
    /// The user table, if any.
    pub fn user(&self) -> Option<usize> {
        self.user
    }

    /// Replaces every table's values with the `table/<name>` tensors of a checkpoint.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a missing tensor or one of another shape.
    pub fn load(&mut self, tensors: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
        for t in &mut self.tables {
            let key = format!("table/{}", t.name());
            let src = tensors
                .get(&key)
                .ok_or_else(|| Error::InvalidArgument(format!("tensor `{key}` is missing")))?;
            if src.dims() != [t.rows(), t.dim()] {
                return Err(Error::InvalidArgument(format!(
                    "tensor `{key}` has shape {:?}, expected [{}, {}]",
                    src.dims(),
                    t.rows(),
                    t.dim()
                )));
            }
            let (name, padding) = (t.name().to_string(), t.has_padding());
            *t = EmbeddingTable::from_tensor(&name, padding, src)?;
        }
        Ok(())
    }
}
