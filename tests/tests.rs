//! The one integration-test binary (one link step keeps CI short). One module per area.

mod common;

// Configs: presets, merging, misspelt keys, validation, per-table seeds.
mod config;
// Metrics against hand-computed values (ties included).
mod metrics;
// Checkpoints: round trip, corruption, atomic writes.
mod checkpoint;
// Event log → prepared dataset, readers and their named errors.
mod data;
// prepare within a memory budget: partitioned runs equal in-memory ones; cross-file checks.
mod prepare_scale;
// prepare --impressions: hand-computed import, split column, named errors.
mod impressions;
// Collation and the batcher: hand-computed batches, shuffling, the mid-epoch skip.
mod batcher;
// Mutation fuzzing of the readers: a named error or a result, never a panic.
mod fuzz;
// Model pieces: Dice, DIN, BCE against references; every preset's gradient check, padding
// invariance, DARE's decoupling.
mod models;
// The generic path (candle ops, any device) against the fused CPU ops, every preset; devices.
mod generic;
// SimHash, top-k, SDIM buckets and full-attention pooling against brute force.
mod search;
// The kernel ops' CPU twins against brute force; every kernel source through NVRTC.
mod kernels;
// Sparse row-wise optimisers against dense Adam and hand-computed updates.
mod optim;
// Training end to end: planted-signal AUC floor, resume, NaN guard, corrupt checkpoints.
mod train;
// The recipes' MLP options: BatchNorm and dropout against hand-computed values, dense L2,
// checkpoints, resumes and AUC floors with them.
mod recipe;
// The `lifelong` binary end to end: pipeline, --help, bad input → status 2 with a named error.
mod cli;
// `lifelong sweep`: grid parsing and expansion, sampling, the resume spec, the results table;
// end to end with parallel trials, resume, a failing trial and refused configs.
mod sweep;
// Serving from encodings: equal to eval for every model; incremental encodings.
mod serving;
// `lifelong encode` (shards, --update) and the serving Scorer against eval, end to end.
mod encode;
// `lifelong serve` on loopback: answers, refusals, metrics, limits, load and faults.
mod serve;
// The serving side's untested paths: trimmed encodings, the reader's refusals, request options,
// reload under load, score/extend errors.
mod serving_paths;
// The time-interval field: prepare's impression times, bucketed gaps against a loop, a signal
// only the gaps carry, serving and extending timed encodings, data without timestamps refused.
mod time;
