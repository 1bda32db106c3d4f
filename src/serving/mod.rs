//! Serving: every user's [`crate::model::UserEncoding`] precomputed offline (`lifelong encode`)
//! into encodings files, read by the serving [`Scorer`], and folded forward with new events
//! without the history (`lifelong encode --update`).
//!
//! An encodings directory holds
//! - `part-IIIII-of-NNNNN.parquet`: one row per user of shard `I` of `N` (users are split by a
//!   hash of their raw id, [`shard_of`], so `N` processes can encode a dataset side by side);
//! - `vocab/{user,item,cate}.parquet`: the vocabularies the model was trained with (copied from
//!   the prepared dataset), so serving maps raw ids exactly as training did.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `user_id` | int64 or utf8 | the raw user id |
//! | `user` | int32 | its vocabulary index (1 = unseen at prepare time) |
//! | `last_ts` | int64, nullable | the newest behavior's timestamp (null: no behavior) |
//! | `items`, `cates` | list\<int32\> | the last `max_len` behaviors' indices, oldest first |
//! | `codes` | list\<uint64\> | the Hamming search's SimHash codes, `words` per behavior (only for a Hamming search) |
//! | `buckets_<i>` | list\<float32\> | SDIM aggregation `i`'s bucket sums, dense `[G][2^τ][d]` row-major, empty buckets 0 (only for SDIM aggregations) |
//!
//! The footer's key-value metadata holds `lifelong.encodings_format`, `lifelong.model` (the
//! fingerprint of the weights, [`crate::checkpoint::model_fingerprint`]: encodings of other
//! weights are refused), `lifelong.layout` (JSON [`crate::model::EncodingLayout`]) and `lifelong.shard`.
//! Every file is written atomically and streamed: memory is a batch of users, not the file.
//!
//! | file | what |
//! |---|---|
//! | [`format`](mod@format) | the file format: columns, footer keys, shards |
//! | [`reader`] | an encodings directory checked and read (the server's loader) |
//! | `writer.rs` | the part-file writer thread, vocabularies beside the parts |
//! | [`encode`] | offline encode of a prepared dataset or an event log |
//! | [`batches`] | encode Arrow batches in memory (Spark, Ray, Python) and write them as a part file |
//! | [`update`](mod@update) | the incremental update (`encode --update`) |
//! | [`scorer`] | the [`Scorer`]: a checkpoint and its encodings (in memory, one shard, f16 sums), scoring from any thread |
//! | [`store`] | encodings beyond RAM: a memory-mapped flat file built from the parts |
//! | [`json`] | the JSON request format the HTTP service speaks |
//! | [`http`] | `lifelong serve`: the HTTP service (axum), its limits, health, readiness and metrics |

pub mod batches;
pub mod encode;
pub mod format;
pub mod http;
pub mod json;
pub mod reader;
pub mod scorer;
pub mod store;
pub mod update;
pub(crate) mod writer;

pub use batches::{shards_of, BatchEncoder, PartWriter, StreamEncoder};
pub use encode::{encode_dataset, encode_events, EncodeSummary};
pub use format::{check_footer, shard_of, EncodedUser, Shard, FORMAT};
pub use http::{serve, ServeConfig};
pub use reader::{for_each_in_shard, load_all, load_shard, parts, read_part};
pub use scorer::{Candidate, Scorer, StoreOptions, User, MAX_CANDIDATES, MAX_HISTORY};
pub use store::{MappedStore, Precision};
pub use update::{update, UpdateSummary};
