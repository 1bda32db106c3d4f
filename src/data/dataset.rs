//! The prepared dataset in memory: every user's history stored once (jagged), and the impression
//! rows of each split pointing into it by `(user, seq_len)`.

use crate::data::io::{self, Column, ColumnSpec, Kind, ListColumn};
use crate::data::vocab::Vocab;
use crate::data::FORMAT_VERSION;
use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A split of the prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training impressions.
    Train,
    /// Validation impressions (each user's second-to-last behavior).
    Valid,
    /// Test impressions (each user's last behavior).
    Test,
}

impl Split {
    /// `"train"`, `"valid"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// `meta.json` of a prepared dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Layout version ([`crate::data::FORMAT_VERSION`]).
    pub format_version: u32,
    /// Vocabulary sizes, padding (0) and unknown (1) included: `user`, `item`, `cate`.
    pub n_users: usize,
    /// Item vocabulary size (padding and unknown included).
    pub n_items: usize,
    /// Category vocabulary size (padding and unknown included).
    pub n_cates: usize,
    /// Total number of behaviors stored in `users.parquet`.
    pub n_behaviors: usize,
    /// Rows per split.
    pub n_train: usize,
    /// Rows per split.
    pub n_valid: usize,
    /// Rows per split.
    pub n_test: usize,
    /// Longest history.
    pub max_history: usize,
    /// Rows of `users.parquet`'s index space: the users (`n_users`), then histories that belong
    /// to no single user row (imported impressions whose histories are not prefixes of one
    /// another). 0 (absent) = `n_users`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_histories: usize,
    /// Whether the behaviors' `ts` are real times and every split row carries its own time
    /// (`ts`): an event log's dataset. Imported impressions have neither (their `ts` are
    /// positions), so the time-interval field refuses them.
    #[serde(default)]
    pub timestamps: bool,
    /// The options `prepare` ran with (free-form, for provenance).
    #[serde(default)]
    pub prepare: serde_json::Value,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

impl Meta {
    /// Rows of the history index space (at least `n_users`).
    pub fn history_rows(&self) -> usize {
        self.n_histories.max(self.n_users)
    }
}

/// Every user's chronological history, stored once (jagged, CSR-like).
///
/// User `u`'s behaviors are `items[offsets[u]..offsets[u+1]]` (and the same range of `cates`,
/// `ts`), oldest first. Indexed by the *user vocabulary index*: rows 0 (padding) and 1 (unknown)
/// are empty, so `offsets.len() == n_users + 1`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histories {
    /// `n_users + 1` offsets into the flat arrays.
    pub offsets: Vec<u64>,
    /// Item indices.
    pub items: Vec<u32>,
    /// Category indices (same length as `items`).
    pub cates: Vec<u32>,
    /// Timestamps (same length as `items`).
    pub ts: Vec<i64>,
}

impl Histories {
    /// Number of user rows (the user vocabulary size).
    pub fn n_users(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// The item and category history of user `u`, oldest first.
    pub fn get(&self, u: u32) -> (&[u32], &[u32]) {
        let (s, e) = (
            self.offsets[u as usize] as usize,
            self.offsets[u as usize + 1] as usize,
        );
        (&self.items[s..e], &self.cates[s..e])
    }
    /// Length of user `u`'s history.
    pub fn len_of(&self, u: u32) -> usize {
        (self.offsets[u as usize + 1] - self.offsets[u as usize]) as usize
    }
}

/// The impression rows of one split (struct of arrays).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impressions {
    /// 1.0 = click, 0.0 = no click.
    pub label: Vec<f32>,
    /// User vocabulary index.
    pub user: Vec<u32>,
    /// Target item index.
    pub item: Vec<u32>,
    /// Target category index.
    pub cate: Vec<u32>,
    /// How many of the user's behaviors precede this impression: its history is
    /// `Histories::get(history)[..seq_len]`.
    pub seq_len: Vec<u32>,
    /// The history row of each impression; empty when every row's history is its user's (what
    /// `prepare` writes for an event log). Imported impressions whose histories are not
    /// prefixes of one another point at rows past the users ([`Meta::n_histories`]).
    pub history: Vec<u32>,
    /// Each impression's time (the time-interval field's "now"); empty for data without
    /// timestamps ([`Meta::timestamps`]).
    pub ts: Vec<i64>,
}

impl Impressions {
    /// The history row of impression `r`.
    #[inline]
    pub fn history_of(&self, r: usize) -> u32 {
        self.history.get(r).copied().unwrap_or(self.user[r])
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.label.len()
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }
}

/// A prepared dataset directory, opened: meta and histories in memory, splits loaded on demand.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The directory.
    pub dir: PathBuf,
    /// `meta.json`.
    pub meta: Meta,
    /// `users.parquet`, validated against the vocabulary sizes (shared: the batchers, the
    /// evaluation and the encoder read the one copy).
    pub histories: Arc<Histories>,
}

impl Dataset {
    /// Opens a prepared dataset: reads and validates `meta.json` and `users.parquet`.
    ///
    /// # Errors
    /// Named errors for a missing directory/file, a wrong format version, a corrupt file, a
    /// missing or mistyped column, nulls, and indices outside the vocabularies.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = read_meta(dir)?;
        let meta_path = dir.join("meta.json");
        for (field, n) in [
            ("user", meta.n_users),
            ("item", meta.n_items),
            ("cate", meta.n_cates),
        ] {
            let path = dir.join("vocab").join(format!("{field}.parquet"));
            let rows = io::parquet_num_rows(&path)?;
            if rows + 2 != n {
                return Err(Error::corrupt(
                    &path,
                    format!(
                        "holds {rows} ids but meta.json says n_{field}s = {n} ({} ids plus padding and unknown); \
                         the files come from different `prepare` runs",
                        n.saturating_sub(2)
                    ),
                ));
            }
        }
        let histories = read_histories(&dir.join("users.parquet"), &meta)?;
        if histories.items.len() != meta.n_behaviors {
            return Err(Error::corrupt(
                &meta_path,
                format!(
                    "n_behaviors = {} but users.parquet holds {} behaviors; the files come from \
                     different `prepare` runs",
                    meta.n_behaviors,
                    histories.items.len()
                ),
            ));
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            meta,
            histories: Arc::new(histories),
        })
    }

    /// The file of `split`: `DIR/<split>.parquet`.
    pub fn split_path(&self, split: Split) -> PathBuf {
        self.dir.join(format!("{}.parquet", split.name()))
    }

    /// Reads and validates one split: every index within its vocabulary, every `seq_len` within
    /// the user's history length, labels 0/1.
    ///
    /// # Errors
    /// [`crate::Error::IdOutOfRange`] (file, row, field) for an index outside a table; other
    /// named errors for schema problems and nulls.
    pub fn load_split(&self, split: Split) -> Result<Impressions> {
        let path = self.split_path(split);
        let m = &self.meta;
        let specs = [
            ColumnSpec::new("label", Kind::Label),
            ColumnSpec::new("user", Kind::index("user", m.n_users)),
            ColumnSpec::new("item", Kind::index("item", m.n_items)),
            ColumnSpec::new("cate", Kind::index("cate", m.n_cates)),
            ColumnSpec::new("seq_len", Kind::Count),
            ColumnSpec::optional("history", Kind::index("history", m.history_rows())),
            ColumnSpec::optional("ts", Kind::Timestamp),
        ];
        let mut t = io::read_table(&path, &specs)?;
        let label = t.take(0).and_then(Column::into_u8).unwrap_or_default();
        let user = t.take(1).and_then(Column::into_u32).unwrap_or_default();
        let item = t.take(2).and_then(Column::into_u32).unwrap_or_default();
        let cate = t.take(3).and_then(Column::into_u32).unwrap_or_default();
        let seq_len = t.take(4).and_then(Column::into_u32).unwrap_or_default();
        let history = t.take(5).and_then(Column::into_u32).unwrap_or_default();
        let ts = t.take(6).and_then(Column::into_i64).unwrap_or_default();
        if m.timestamps && ts.is_empty() && !label.is_empty() {
            return Err(Error::corrupt(
                &path,
                "meta.json says the data has timestamps but this split has no `ts` column; \
                 the files come from different `prepare` runs",
            ));
        }
        let imp = Impressions {
            label: label.into_iter().map(f32::from).collect(),
            user,
            item,
            cate,
            seq_len,
            history,
            ts: if m.timestamps { ts } else { Vec::new() },
        };
        let bad = (0..imp.len())
            .into_par_iter()
            .position_first(|r| imp.seq_len[r] as usize > self.histories.len_of(imp.history_of(r)));
        if let Some(r) = bad {
            let (file, row) = t.locate(r);
            let h = imp.history_of(r);
            return Err(Error::value(
                file,
                row,
                "seq_len",
                format!(
                    "seq_len {} is longer than history {h}'s length ({} behaviors in users.parquet)",
                    imp.seq_len[r],
                    self.histories.len_of(h)
                ),
            ));
        }
        Ok(imp)
    }

    /// The item → category table from `vocab/item.parquet`: entry `i` is the category index of
    /// item index `i` (the category of the item's first occurrence in the event log); entries 0
    /// (padding) and 1 (unknown) map to [`crate::data::PAD`] and [`crate::data::UNKNOWN`]. Length `meta.n_items`.
    ///
    /// # Errors
    /// Named errors for a missing or corrupt file, and [`Error::Corrupt`] if its length
    /// disagrees with `meta.json`.
    pub fn item_cates(&self) -> Result<Vec<u32>> {
        let path = self.dir.join("vocab").join("item.parquet");
        let t = Vocab::read_item_cates(&path, self.meta.n_cates)?;
        if t.len() != self.meta.n_items {
            return Err(Error::corrupt(
                &path,
                format!(
                    "holds {} entries but meta.json says n_items = {}",
                    t.len(),
                    self.meta.n_items
                ),
            ));
        }
        Ok(t)
    }

    /// The vocabulary of `field` (`"user"`, `"item"` or `"cate"`) from `vocab/<field>.parquet`,
    /// to map raw ids to indices when serving.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another field name; named read errors.
    pub fn vocab(&self, field: &str) -> Result<Vocab> {
        if !matches!(field, "user" | "item" | "cate") {
            return Err(Error::InvalidArgument(format!(
                "no vocabulary `{field}` (expected user, item or cate)"
            )));
        }
        Vocab::read(&self.dir.join("vocab").join(format!("{field}.parquet")))
    }
}

/// Reads `DIR/meta.json`, checking the format version before anything else.
///
/// # Errors
/// [`Error::Io`] if missing, [`Error::Corrupt`] if not valid JSON, of another format version,
/// or with vocabulary sizes below 2.
pub fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt(&path, format!("not valid JSON: {e}")))?;
    match value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(Error::corrupt(
                &path,
                format!(
                "format_version {v} is not supported (this build reads version {FORMAT_VERSION}); \
                     run `lifelong prepare` again"
            ),
            ))
        }
        None => return Err(Error::corrupt(&path, "no integer `format_version` field")),
    }
    let meta: Meta = serde_json::from_value(value)
        .map_err(|e| Error::corrupt(&path, format!("invalid meta.json: {e}")))?;
    for (name, n) in [
        ("n_users", meta.n_users),
        ("n_items", meta.n_items),
        ("n_cates", meta.n_cates),
    ] {
        if n < 2 {
            return Err(Error::corrupt(
                &path,
                format!("{name} = {n}, but every vocabulary has at least 2 entries (padding and unknown)"),
            ));
        }
    }
    Ok(meta)
}

/// The columns of `users.parquet`, typed and bounded by the vocabularies.
fn users_specs(meta: &Meta) -> [ColumnSpec; 4] {
    [
        ColumnSpec::new("user", Kind::index("user", meta.history_rows())),
        ColumnSpec::new("items", Kind::index_list("item", meta.n_items)),
        ColumnSpec::new("cates", Kind::index_list("cate", meta.n_cates)),
        ColumnSpec::new("ts", Kind::IntList),
    ]
}

/// Rows of `users.parquet`: each user's index and chronological lists.
#[derive(Debug, Default)]
pub(crate) struct UserRows {
    /// User indices.
    pub users: Vec<u32>,
    /// Item indices per row.
    pub items: ListColumn<u32>,
    /// Category indices per row.
    pub cates: ListColumn<u32>,
    /// Timestamps per row.
    pub ts: ListColumn<i64>,
    /// The file of a streamed chunk and the row of its first row there.
    pub at: (PathBuf, usize),
}

impl UserRows {
    fn from_columns(mut take: impl FnMut(usize) -> Option<Column>) -> Self {
        Self {
            users: take(0).and_then(Column::into_u32).unwrap_or_default(),
            items: take(1).and_then(Column::into_u32_list).unwrap_or_default(),
            cates: take(2).and_then(Column::into_u32_list).unwrap_or_default(),
            ts: take(3).and_then(Column::into_i64_list).unwrap_or_default(),
            at: Default::default(),
        }
    }

    /// Checks every row: a user index of a real user, seen once (`seen[u]`: the global row
    /// where user `u` was first seen, `base` the global row of these rows' first), lists of
    /// equal length, chronological timestamps. `locate` names a row's file and row.
    fn check(
        &self,
        seen: &mut [usize],
        base: usize,
        locate: impl Fn(usize) -> (PathBuf, usize),
    ) -> Result<()> {
        let (users, items, cates, ts) = (&self.users, &self.items, &self.cates, &self.ts);
        for (r, &u) in users.iter().enumerate() {
            let here = |col: &str, why: String| {
                let (file, row) = locate(r);
                Error::value(file, row, col, why)
            };
            if u < 2 {
                return Err(here(
                    "user",
                    format!("user index {u} is reserved (0 = padding, 1 = unknown)"),
                ));
            }
            if seen[u as usize] != usize::MAX {
                return Err(here(
                    "user",
                    format!("user {u} appears twice (first at row {})", seen[u as usize]),
                ));
            }
            seen[u as usize] = base + r;
            let n = items.row(r).len();
            if cates.row(r).len() != n {
                return Err(here(
                    "cates",
                    format!("{} entries but `items` has {n}", cates.row(r).len()),
                ));
            }
            let tr = ts.row(r);
            if tr.len() != n {
                return Err(here(
                    "ts",
                    format!("{} entries but `items` has {n}", tr.len()),
                ));
            }
            if let Some(k) = tr.windows(2).position(|w| w[1] < w[0]) {
                return Err(here(
                    "ts",
                    format!(
                        "not chronological: position {} ({}) is earlier than position {k} ({})",
                        k + 1,
                        tr[k + 1],
                        tr[k]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Streams `users.parquet` a row group at a time, each validated as [`Dataset::open`] validates
/// the whole file (one reader for both); memory is one row group.
///
/// # Errors
/// The named errors of [`Dataset::open`] for the file, and whatever `f` returns.
pub(crate) fn read_user_chunks(
    path: &Path,
    meta: &Meta,
    mut f: impl FnMut(UserRows) -> Result<()>,
) -> Result<()> {
    let mut seen = vec![usize::MAX; meta.history_rows()];
    let mut base = 0;
    io::read_chunks(path, &users_specs(meta), 1, false, |mut chunk| {
        let mut rows = UserRows::from_columns(|i| chunk.take(i));
        rows.at = (chunk.file.clone(), chunk.row0);
        rows.check(&mut seen, base, |r| (rows.at.0.clone(), rows.at.1 + r))?;
        base += rows.users.len();
        f(rows)
    })?;
    Ok(())
}

/// Reads and validates `users.parquet` into [`Histories`] indexed by user index.
fn read_histories(path: &Path, meta: &Meta) -> Result<Histories> {
    let mut t = io::read_table(path, &users_specs(meta))?;
    let rows = UserRows::from_columns(|i| t.take(i));
    let n_users = meta.history_rows();
    let mut row_of = vec![usize::MAX; n_users];
    rows.check(&mut row_of, 0, |r| t.locate(r))?;
    let UserRows {
        users,
        items,
        cates,
        ts,
        ..
    } = rows;
    // Common case (what `prepare` writes): one row per user 2.., in order: no copy.
    if users.len() + 2 == n_users && users.iter().enumerate().all(|(r, &u)| u as usize == r + 2) {
        let mut offsets = Vec::with_capacity(n_users + 1);
        offsets.extend([0u64, 0u64]);
        offsets.extend_from_slice(&items.offsets);
        return Ok(Histories {
            offsets,
            items: items.values,
            cates: cates.values,
            ts: ts.values,
        });
    }
    // General case: any order, users may be missing (empty history).
    let mut h = Histories {
        offsets: Vec::with_capacity(n_users + 1),
        ..Histories::default()
    };
    h.offsets.push(0);
    h.items.reserve(items.values.len());
    h.cates.reserve(items.values.len());
    h.ts.reserve(items.values.len());
    for &r in &row_of {
        if r != usize::MAX {
            h.items.extend_from_slice(items.row(r));
            h.cates.extend_from_slice(cates.row(r));
            h.ts.extend_from_slice(ts.row(r));
        }
        h.offsets.push(h.items.len() as u64);
    }
    Ok(h)
}
