//! The serving [`Scorer`]: a checkpoint and a directory of encodings in memory, scoring
//! candidates for a user in one call, from any number of threads.
//!
//! ```no_run
//! use lifelong::serving::{Candidate, Scorer, User};
//! use lifelong::data::RawId;
//! # fn main() -> lifelong::Result<()> {
//! let scorer = Scorer::open("runs/sdim".as_ref(), "encodings/sdim".as_ref())?;
//! let cands = [Candidate::item(RawId::Int(17)), Candidate::item(RawId::Int(4))];
//! let probs = scorer.score(&User::Id(RawId::Int(42)), &cands)?;
//! # Ok(()) }
//! ```
//!
//! - The user is given by raw id (its encoding is looked up) or by a raw recent history (encoded
//!   for the request: what scoring costs without offline encoding).
//! - Raw ids unseen in training map to the unknown index, as in training; a candidate's category
//!   is the item's (from the training vocabulary) unless the request gives one.
//! - The user-side work is done once per request and shared by its candidates
//!   ([`CtrModel::score_encoded`]); nothing per call but the request's own tensors: no batcher
//!   thread, no gradient leaves, no global state.
//! - [`Scorer::reload`] swaps in new encodings (another `encode` run, an `--update`) while other
//!   threads keep scoring: readers never wait on it.
//! - [`Scorer::handle_json`] answers one JSON request (the format of `examples/serve.rs`) with a
//!   status and a JSON body, and never panics.

use super::format::{shard_of, Shard};
use super::reader as encodings;
use super::store::{MappedStore, Precision};
use crate::checkpoint::vocab::check_vocab_dir;
use crate::checkpoint::{self, Metadata, ModelFile};
use crate::data::vocab::{RawId, Vocab, UNKNOWN};
use crate::model::{CtrModel, UserEncoding};
use crate::{Error, Result};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Candidates one request may score at most.
pub const MAX_CANDIDATES: usize = 100_000;
/// Behaviors a raw-history request may carry at most.
pub const MAX_HISTORY: usize = 1_000_000;

/// Who to score for.
#[derive(Debug, Clone, PartialEq)]
pub enum User {
    /// A user with an encoding, by raw id.
    Id(RawId),
    /// A user given by a raw history, oldest first (categories: the items' own unless given).
    History {
        /// The raw user id, if known (for models with a user field).
        id: Option<RawId>,
        /// Raw item ids.
        items: Vec<RawId>,
        /// Raw category ids, one per item.
        cates: Option<Vec<RawId>>,
        /// The behaviors' times, one per item, chronological (a model with a time field needs
        /// them; one without ignores them).
        ts: Option<Vec<i64>>,
    },
}

/// One candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Raw item id.
    pub item: RawId,
    /// Raw category id (default: the item's category in the training vocabulary).
    pub cate: Option<RawId>,
}

impl Candidate {
    /// A candidate by item id alone.
    pub fn item(item: RawId) -> Self {
        Self { item, cate: None }
    }
}

/// How a [`Scorer`] holds its encodings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Serve only the users of this shard ([`Shard::owns`]: the CRC-32 rule `encode` splits
    /// parts by); requests for other users are refused by name. Default: every user.
    pub shard: Shard,
    /// SDIM's bucket sums in memory (or in the mapped file). Default: f32.
    pub buckets: Precision,
    /// Serve from a memory-mapped flat file in this directory ([`MappedStore`]: built from the
    /// parquet parts when missing or stale) instead of holding every encoding in memory.
    pub mapped: Option<PathBuf>,
    /// Where the model scores (`--device`). Default: the CPU.
    pub device: crate::device::DeviceSpec,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            shard: Shard::ALL,
            buckets: Precision::F32,
            mapped: None,
            device: Default::default(),
        }
    }
}

/// One user's encoding as held: as encoded, or with the bucket sums in f16 beside it.
#[derive(Debug)]
struct Held {
    /// The encoding (its `buckets` empty when `half` holds them).
    enc: Arc<UserEncoding>,
    half: Option<Vec<Vec<half::f16>>>,
}

impl Held {
    fn new(mut enc: UserEncoding, precision: Precision) -> Self {
        let half = match precision {
            Precision::F16 if enc.buckets.iter().any(|b| !b.is_empty()) => {
                use half::slice::HalfFloatSliceExt;
                let h = enc
                    .buckets
                    .iter_mut()
                    .map(|b| {
                        let mut out = vec![half::f16::ZERO; b.len()];
                        out.convert_from_f32_slice(b);
                        *b = Vec::new();
                        out
                    })
                    .collect();
                Some(h)
            }
            _ => None,
        };
        Self {
            enc: Arc::new(enc),
            half,
        }
    }

    /// The encoding to score with (the f16 sums widened back).
    fn encoding(&self) -> Arc<UserEncoding> {
        match &self.half {
            None => self.enc.clone(),
            Some(h) => {
                use half::slice::HalfFloatSliceExt;
                let buckets = h
                    .iter()
                    .map(|b| {
                        let mut out = vec![0f32; b.len()];
                        b.convert_to_f32_slice(&mut out);
                        out
                    })
                    .collect();
                Arc::new(UserEncoding {
                    buckets,
                    ..(*self.enc).clone()
                })
            }
        }
    }
}

/// The users' encodings: in memory, or in a mapped file.
#[derive(Debug)]
enum Users {
    Memory(HashMap<RawId, Held>),
    Mapped(MappedStore),
}

impl Users {
    fn len(&self) -> usize {
        match self {
            Users::Memory(m) => m.len(),
            Users::Mapped(s) => s.len(),
        }
    }
    fn contains(&self, id: &RawId) -> bool {
        match self {
            Users::Memory(m) => m.contains_key(id),
            Users::Mapped(s) => s.contains(id),
        }
    }
    fn get(&self, id: &RawId) -> Result<Option<Arc<UserEncoding>>> {
        match self {
            Users::Memory(m) => Ok(m.get(id).map(Held::encoding)),
            Users::Mapped(s) => Ok(s.get(id)?.map(Arc::new)),
        }
    }
}

/// The encodings served and where they came from.
#[derive(Debug)]
struct Store {
    dir: PathBuf,
    users: Users,
}

#[derive(Debug)]
struct Inner {
    model: CtrModel,
    checkpoint: PathBuf,
    metadata: Metadata,
    fingerprint: String,
    users: Vocab,
    items: Vocab,
    item_cates: Vec<u32>,
    cates: Vocab,
    options: StoreOptions,
    store: ArcSwap<Store>,
}

/// A loaded model and encodings; cheap to clone (an `Arc` inside), `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Scorer {
    inner: Arc<Inner>,
}

fn normalize(vocab: &Vocab, id: &RawId) -> RawId {
    match (id, vocab.is_string()) {
        (RawId::Int(x), true) => RawId::Str(x.to_string()),
        (RawId::Str(s), false) => s.parse().map(RawId::Int).unwrap_or_else(|_| id.clone()),
        _ => id.clone(),
    }
}

impl Scorer {
    /// Opens a run directory (its best checkpoint) or checkpoint file, and an encodings
    /// directory written by `lifelong encode` for it.
    ///
    /// # Errors
    /// Named errors for a bad checkpoint, encodings of other weights or another layout, a
    /// missing shard, a truncated or corrupt encodings file.
    pub fn open(checkpoint: &Path, encodings: &Path) -> Result<Self> {
        Self::open_with(checkpoint, encodings, StoreOptions::default())
    }

    /// [`Scorer::open`] holding the encodings as `options` say: one shard of the users, the
    /// bucket sums in f16. [`Scorer::reload`] keeps the options.
    ///
    /// # Errors
    /// As [`Scorer::open`].
    pub fn open_with(checkpoint: &Path, encodings: &Path, options: StoreOptions) -> Result<Self> {
        let mf = ModelFile::open(checkpoint, &options.device.open()?)?;
        mf.check_vocab_dir(encodings)?;
        let vocab = |f: &str| Vocab::read(&encodings.join("vocab").join(format!("{f}.parquet")));
        let (users, cates) = (vocab("user")?, vocab("cate")?);
        let item_path = encodings.join("vocab").join("item.parquet");
        let (items, item_cates) = Vocab::read_with_cates(&item_path, mf.model.vocab().cates)?;
        if item_cates.len() > mf.model.vocab().items {
            return Err(Error::corrupt(
                &item_path,
                format!(
                    "{} items but the checkpoint's table has {} rows",
                    item_cates.len(),
                    mf.model.vocab().items
                ),
            ));
        }
        let fingerprint = checkpoint::model_fingerprint(&mf.model)?;
        let store = Store {
            dir: encodings.to_path_buf(),
            users: load(encodings, &mf.model, &options)?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                model: mf.model,
                checkpoint: mf.file,
                metadata: mf.metadata,
                fingerprint,
                users,
                items,
                item_cates,
                cates,
                options,
                store: ArcSwap::from_pointee(store),
            }),
        })
    }

    /// Replaces the encodings with those of `dir` (for the same checkpoint). Scoring goes on in
    /// other threads meanwhile; each request sees either the old or the new encodings.
    /// Returns the number of users now served.
    ///
    /// # Errors
    /// As [`Scorer::open`]; on error the old encodings stay.
    pub fn reload(&self, dir: &Path) -> Result<usize> {
        check_vocab_dir(&self.inner.metadata, &self.inner.checkpoint, dir)?;
        let users = load(dir, &self.inner.model, &self.inner.options)?;
        let n = users.len();
        self.inner.store.store(Arc::new(Store {
            dir: dir.to_path_buf(),
            users,
        }));
        Ok(n)
    }

    /// The model.
    pub fn model(&self) -> &CtrModel {
        &self.inner.model
    }
    /// The checkpoint file served.
    pub fn checkpoint(&self) -> &Path {
        &self.inner.checkpoint
    }
    /// The weights' fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }
    /// How the encodings are held.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }
    /// Users with an encoding (of this shard).
    pub fn num_users(&self) -> usize {
        self.inner.store.load().users.len()
    }
    /// The encodings directory served.
    pub fn encodings_dir(&self) -> PathBuf {
        self.inner.store.load().dir.clone()
    }

    /// The encoding of a raw user id, if there is one (in this shard).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a record of a mapped store that cannot be read.
    pub fn try_encoding(&self, id: &RawId) -> Result<Option<Arc<UserEncoding>>> {
        let id = normalize(&self.inner.users, id);
        self.inner.store.load().users.get(&id)
    }

    /// [`Scorer::try_encoding`], with an unreadable record as none.
    pub fn encoding(&self, id: &RawId) -> Option<Arc<UserEncoding>> {
        self.try_encoding(id).ok().flatten()
    }

    /// Whether the user has an encoding here (cheaper than [`Scorer::encoding`] with f16 sums).
    pub fn has_encoding(&self, id: &RawId) -> bool {
        let id = normalize(&self.inner.users, id);
        self.inner.store.load().users.contains(&id)
    }

    /// For a user of another shard than this scorer's, the message saying which.
    pub(crate) fn misrouted(&self, id: &RawId) -> Option<String> {
        let shard = self.inner.options.shard;
        let home = shard_of(&normalize(&self.inner.users, id), shard.count);
        (home != shard.index).then(|| {
            format!(
                "user {id} belongs to shard {home}/{n}; this scorer serves shard {}/{n} \
                 (route by CRC-32 of the raw id modulo {n})",
                shard.index,
                n = shard.count
            )
        })
    }

    fn item_index(&self, c: &Candidate) -> (u32, u32) {
        let i = &self.inner;
        let item = i.items.lookup(&normalize(&i.items, &c.item));
        let cate = match &c.cate {
            Some(k) => i.cates.lookup(&normalize(&i.cates, k)),
            None => i.item_cates.get(item as usize).copied().unwrap_or(UNKNOWN),
        };
        (item, cate)
    }

    /// The user's encoding: looked up, or computed from a raw history.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a user without an encoding, or a malformed history.
    pub fn user_encoding(&self, user: &User) -> Result<Arc<UserEncoding>> {
        let i = &self.inner;
        match user {
            User::Id(id) => self.try_encoding(id)?.ok_or_else(|| {
                Error::InvalidArgument(
                    self.misrouted(id)
                        .unwrap_or_else(|| format!("unknown user {id}: no encoding for it")),
                )
            }),
            User::History {
                id,
                items,
                cates,
                ts,
            } => {
                if items.len() > MAX_HISTORY {
                    return Err(Error::InvalidArgument(format!(
                        "{} behaviors in the history (at most {MAX_HISTORY})",
                        items.len()
                    )));
                }
                if let Some(c) = cates.as_ref().filter(|c| c.len() != items.len()) {
                    return Err(Error::InvalidArgument(format!(
                        "history: {} items but {} categories",
                        items.len(),
                        c.len()
                    )));
                }
                let (ii, cc): (Vec<u32>, Vec<u32>) = items
                    .iter()
                    .enumerate()
                    .map(|(j, it)| {
                        self.item_index(&Candidate {
                            item: it.clone(),
                            cate: cates.as_ref().map(|c| c[j].clone()),
                        })
                    })
                    .unzip();
                let u = id
                    .as_ref()
                    .map_or(UNKNOWN, |x| i.users.lookup(&normalize(&i.users, x)));
                Ok(Arc::new(i.model.encode_user_at(
                    u,
                    &ii,
                    &cc,
                    ts.as_deref(),
                )?))
            }
        }
    }

    /// Click probabilities of `candidates` for `user`, in order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown user, no candidates or too many.
    pub fn score(&self, user: &User, candidates: &[Candidate]) -> Result<Vec<f32>> {
        self.score_at(user, candidates, None)
    }

    /// [`Scorer::score`] at the request's time `time` (a model with a time field: the gaps of
    /// the behaviors a request reads are seen from it; `None` = the encoding's newest
    /// behavior's time). Precomputed parts stay as of that newest behavior (see
    /// [`crate::model::encoding`]).
    ///
    /// # Errors
    /// As [`Scorer::score`].
    pub fn score_at(
        &self,
        user: &User,
        candidates: &[Candidate],
        time: Option<i64>,
    ) -> Result<Vec<f32>> {
        if candidates.is_empty() {
            return Err(Error::InvalidArgument("no candidates to score".into()));
        }
        if candidates.len() > MAX_CANDIDATES {
            return Err(Error::InvalidArgument(format!(
                "{} candidates (at most {MAX_CANDIDATES} per request)",
                candidates.len()
            )));
        }
        let enc = self.user_encoding(user)?;
        let (items, cates): (Vec<u32>, Vec<u32>) =
            candidates.iter().map(|c| self.item_index(c)).unzip();
        let logits = self
            .inner
            .model
            .score_encoded_at(&enc, &items, &cates, time)?;
        Ok(logits.into_iter().map(crate::metrics::sigmoid).collect())
    }
}

/// An encodings directory loaded as `options` say.
fn load(dir: &Path, model: &CtrModel, options: &StoreOptions) -> Result<Users> {
    Ok(match &options.mapped {
        None => Users::Memory(encodings::load_shard(dir, model, options.shard, |e| {
            Held::new(e, options.buckets)
        })?),
        Some(at) => Users::Mapped(MappedStore::open_or_build(
            at,
            dir,
            model,
            options.shard,
            options.buckets,
        )?),
    })
}

/// Compile-time check: a `Scorer` may be shared by and sent to any thread.
#[allow(dead_code)]
fn scorer_is_send_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Scorer>();
}
