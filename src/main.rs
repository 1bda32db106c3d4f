//! The `lifelong` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lifelong::checkpoint::ModelFile;
use lifelong::config::Config;
use lifelong::data::{self, ColumnNames, PrepareConfig, Split, SynthConfig};
use lifelong::plot;
use lifelong::sweep;
use lifelong::{eval, serving};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// Reuses freed large buffers instead of returning them to the OS each step (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lifelong user-behavior sequence models for CTR prediction.
#[derive(Parser, Debug)]
#[command(name = "lifelong", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The columns of an event log.
#[derive(clap::Args, Debug)]
struct LogArgs {
    /// User id column.
    #[arg(long, default_value = "user_id")]
    user_col: String,
    /// Item id column.
    #[arg(long, default_value = "item_id")]
    item_col: String,
    /// Category id column.
    #[arg(long, default_value = "cate_id")]
    cate_col: String,
    /// Timestamp column.
    #[arg(long, default_value = "ts")]
    ts_col: String,
    /// Label column (optional in the file; 0 = shown and not clicked).
    #[arg(long, default_value = "label")]
    label_col: String,
    /// CSV without a header row: the names of its columns, in order, comma-separated
    /// (e.g. `user_id,item_id,cate_id,behavior_type,ts`). Without it the first line is the
    /// header.
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// CSV field delimiter (one character; default `,`).
    #[arg(long)]
    delimiter: Option<char>,
}

impl LogArgs {
    fn config(self) -> Result<PrepareConfig> {
        let delimiter = match self.delimiter {
            Some(c) if c.is_ascii() => Some(c as u8),
            Some(c) => anyhow::bail!("--delimiter {c:?}: must be one ASCII character"),
            None => None,
        };
        Ok(PrepareConfig {
            columns: ColumnNames {
                user: self.user_col,
                item: self.item_col,
                cate: self.cate_col,
                ts: self.ts_col,
                label: self.label_col,
            },
            csv: data::csv::CsvOptions {
                columns: self.columns,
                delimiter,
            },
            ..PrepareConfig::default()
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a synthetic event log with a planted, learnable signal (DIR/events.parquet).
    Synth {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of users.
        #[arg(long, default_value_t = SynthConfig::default().users)]
        users: usize,
        /// Number of items.
        #[arg(long, default_value_t = SynthConfig::default().items)]
        items: usize,
        /// Number of categories.
        #[arg(long, default_value_t = SynthConfig::default().cates)]
        cates: usize,
        /// Maximum history length per user (lengths are uniform in [len/2, len]).
        #[arg(long, default_value_t = SynthConfig::default().len)]
        len: usize,
        /// Seed.
        #[arg(long, default_value_t = SynthConfig::default().seed)]
        seed: u64,
    },
    /// Turn an event log (parquet or CSV, a file or a directory) into a prepared dataset.
    Prepare {
        /// Event log: a parquet or .csv file, or a directory (every *.parquet under it, else
        /// every *.csv), or a per-user history table (list columns).
        #[arg(
            long,
            required_unless_present = "impressions",
            conflicts_with = "impressions"
        )]
        events: Option<PathBuf>,
        /// Instead of an event log, an impression dataset (one row per impression with label,
        /// user, target and the history as lists): a directory with train, valid and test
        /// (files or directories), or one table with --split-col.
        #[arg(long)]
        impressions: Option<PathBuf>,
        /// Impressions: the list column of the history's item ids.
        #[arg(long, default_value = "hist_item_ids")]
        hist_item_col: String,
        /// Impressions: the list column of the history's category ids.
        #[arg(long, default_value = "hist_cate_ids")]
        hist_cate_col: String,
        /// Impressions: a column naming each row's split (train/valid/test or 0/1/2).
        #[arg(long)]
        split_col: Option<String>,
        /// Output directory of the prepared dataset.
        #[arg(long)]
        out: PathBuf,
        /// Sampled negatives per positive (default: 1 without a label column, 0 with one).
        #[arg(long)]
        negatives: Option<usize>,
        /// Seed of the negative sampler.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// A positive needs at least this many earlier behaviors to become an impression.
        #[arg(long, default_value_t = 1)]
        min_history: usize,
        /// Every n-th earlier behavior becomes a training positive.
        #[arg(long, default_value_t = 1)]
        stride: usize,
        #[command(flatten)]
        log: LogArgs,
        /// Keep only rows whose COLUMN equals VALUE (repeatable; all must hold), e.g.
        /// `--keep behavior_type=pv`.
        #[arg(long, value_name = "COLUMN=VALUE", value_parser = parse_keep)]
        keep: Vec<(String, String)>,
        /// Memory budget (bytes, or with a K/M/G suffix, powers of 1024): a log larger than
        /// this is spilled to scratch files and built in partitions of users that fit. The
        /// output does not depend on it.
        #[arg(long, default_value = "2G", value_parser = parse_bytes)]
        memory_budget: u64,
        /// Scratch directory for spilled rows (default: a temporary directory inside --out,
        /// removed when done). Needs about 21 bytes per event, twice, when the log does not fit.
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Train a model.
    Train {
        /// TOML config (see examples/din.toml).
        #[arg(long)]
        config: PathBuf,
        /// Prepared dataset directory (overrides the config's data.dir).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Run directory for checkpoints and metrics (overrides the config's train.out).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from RUN_DIR/last.safetensors (mid-epoch included).
        #[arg(long)]
        resume: bool,
        /// Override a config key before the preset is applied: `--set train.seed=3
        /// --set model.search.k=50 --set 'model.aggregate.1.window={ recent = 20 }'` (a number
        /// selects a list element; values are TOML). Repeatable.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Where to compute: cpu, cuda or cuda:N (overrides the config's train.device; a build
        /// without the `cuda` feature refuses CUDA by name).
        #[arg(long)]
        device: Option<lifelong::device::DeviceSpec>,
    },
    /// Score a split with a checkpoint and report AUC, GAUC and logloss.
    Eval {
        /// Run directory (its best checkpoint) or a checkpoint file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Prepared dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Split to score.
        #[arg(long, value_enum, default_value_t = Split::Test)]
        split: Split,
        /// Print one JSON object on the last line: auc, gauc, logloss, n.
        #[arg(long)]
        json: bool,
        /// Write per-row predictions to this parquet file.
        #[arg(long)]
        predictions: Option<PathBuf>,
        /// Where to compute: cpu, cuda or cuda:N (a build without the `cuda` feature refuses
        /// CUDA by name).
        #[arg(long, default_value = "cpu")]
        device: lifelong::device::DeviceSpec,
    },
    /// Precompute every user's sequence encoding (SDIM's bucket sums, the search's SimHash
    /// codes, the recent window) for serving: from a prepared dataset (`--data`), from an event
    /// log with a dataset's vocabularies (`--data DIR --events LOG`), or fold new events into
    /// existing encodings (`--update DIR --events LOG`).
    Encode {
        /// Run directory (its best checkpoint) or a checkpoint file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Prepared dataset whose users to encode (with `--events`: whose vocabularies to use
        /// for the users of that log instead).
        #[arg(long, required_unless_present = "update", conflicts_with = "update")]
        data: Option<PathBuf>,
        /// Encodings directory to write (for `--update`: default the updated directory itself,
        /// each file replaced atomically).
        #[arg(long, required_unless_present = "update")]
        out: Option<PathBuf>,
        /// Encode only shard I of N (users split by a hash of their raw id), into
        /// OUT/part-I-of-N.parquet: run N processes (or N tasks of a Spark/Ray job) side by side.
        #[arg(long, default_value = "0/1")]
        shard: String,
        /// Existing encodings directory to fold `--events` into.
        #[arg(long, requires = "events")]
        update: Option<PathBuf>,
        /// An event log (as `prepare` reads it): the new events for `--update`, or with `--data`
        /// the users to encode from their behaviors in it.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Where to compute: cpu, cuda or cuda:N (a build without the `cuda` feature refuses
        /// CUDA by name).
        #[arg(long, default_value = "cpu")]
        device: lifelong::device::DeviceSpec,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Serve a checkpoint and its encodings over HTTP: POST /score and /reload, GET /health,
    /// /ready and /metrics (Prometheus). Stops on SIGTERM after the requests in flight.
    Serve {
        /// Run directory (its best checkpoint) or a checkpoint file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Encodings directory written by `lifelong encode` for this checkpoint.
        #[arg(long)]
        encodings: PathBuf,
        /// Address to listen on (port 0: any free port; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Threads scoring requests (their own pool, never the HTTP workers).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Requests scored or waiting at once; beyond, 503 with Retry-After.
        #[arg(long, default_value_t = 64)]
        max_in_flight: usize,
        /// A request not answered within this many milliseconds gets 504.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
        /// Largest request body accepted, in bytes; beyond, 413.
        #[arg(long, default_value_t = 1 << 20)]
        max_body: usize,
        /// Serve only shard I of N of the users (CRC-32 of the raw user id modulo N, the rule
        /// `encode --shard` splits parts by): N replicas serve N times the users, and a request
        /// for a user of another shard is refused with its shard named.
        #[arg(long, default_value = "0/1")]
        shard: String,
        /// SDIM's bucket sums in memory: f32 (as encoded) or f16 (half the memory).
        #[arg(long, default_value = "f32")]
        bucket_precision: String,
        /// Serve from a memory-mapped file in this directory instead of holding every user in
        /// memory: resident memory follows the users requested. The file is built from the
        /// encodings on first start and whenever they change (a reload builds a new one).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Where to compute: cpu, cuda or cuda:N (a build without the `cuda` feature refuses
        /// CUDA by name).
        #[arg(long, default_value = "cpu")]
        device: lifelong::device::DeviceSpec,
    },
    /// Describe a checkpoint: model and parts, config, vocabularies, parameter counts, step and
    /// best validation.
    Inspect {
        /// Run directory (its best checkpoint, else last) or a checkpoint file.
        path: PathBuf,
        /// Print the description as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Draw training curves (training loss, validation AUC, GAUC, logloss against steps) of one
    /// or more runs into one SVG.
    Plot {
        /// Run directories (each with its metrics.jsonl).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output SVG (default: RUN/curves.svg for one run, curves.svg here for several).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Hyperparameter search: train the config under every combination of the `--grid` values
    /// (or `--random N` of them), each trial a run directory OUT/trial-NNN trained by a `lifelong
    /// train` process; ranks them by best validation AUC into OUT/results.tsv and draws their
    /// curves into OUT/curves.svg. Rerunning the same command continues an interrupted sweep.
    Sweep {
        /// The base TOML config.
        #[arg(long)]
        config: PathBuf,
        /// A key and its values: `--grid train.sparse_lr=0.01,0.03,0.1`; values are TOML as for
        /// `--set` and split on top-level commas only (`--grid 'model.head.hidden=[200, 80],[64]'`
        /// has two). Repeatable: the trials are the Cartesian product.
        #[arg(long = "grid", value_name = "PATH=V1,V2,...", required = true)]
        grid: Vec<String>,
        /// Override a key of every trial (as `train --set`). Repeatable.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Run N trials sampled (without replacement, seeded) from the grid instead of all.
        #[arg(long, value_name = "N")]
        random: Option<usize>,
        /// Seed of --random (default 0).
        #[arg(long, requires = "random")]
        seed: Option<u64>,
        /// Trials trained at a time (each with RAYON_NUM_THREADS = cores / jobs).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// The sweep's directory.
        #[arg(long)]
        out: PathBuf,
        /// Prepared dataset directory (overrides the config's data.dir).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where every trial computes: cpu, cuda or cuda:N.
        #[arg(long)]
        device: Option<lifelong::device::DeviceSpec>,
    },
    /// The whole pipeline on the bundled sample: prepare data/sample, train examples/din.toml,
    /// evaluate on the test split. Paths are relative to --root (default: the current
    /// directory, so run it from a checkout): it reads ROOT/data/sample/events.parquet and
    /// ROOT/examples/din.toml and writes ROOT/data/prepared/sample and ROOT/runs/demo.
    Demo {
        /// The repository checkout to run in.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    lifelong::tune_runtime();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Synth {
            out,
            users,
            items,
            cates,
            len,
            seed,
        } => {
            let cfg = SynthConfig {
                users,
                items,
                cates,
                len,
                seed,
            };
            let path = data::write_synth(&cfg, &out).doing("writing a synthetic log into", &out)?;
            println!("wrote {}", path.display());
        }
        Command::Prepare {
            events,
            out,
            negatives,
            seed,
            min_history,
            stride,
            log,
            keep,
            memory_budget,
            scratch,
            impressions,
            hist_item_col,
            hist_cate_col,
            split_col,
        } => {
            let cfg = PrepareConfig {
                negatives,
                seed,
                min_history,
                stride,
                keep,
                memory_budget,
                scratch,
                ..log.config()?
            };
            match (events, impressions) {
                (_, Some(input)) => {
                    let cols = data::ImpressionColumns {
                        hist_item: hist_item_col,
                        hist_cate: hist_cate_col,
                        split: split_col.unwrap_or_default(),
                    };
                    let s = data::prepare_impressions(&input, &out, &cfg, &cols)
                        .doing("preparing the impressions of", &input)?;
                    report_prepared(&out, &s.meta);
                }
                (Some(events), None) => prepare(&events, &out, &cfg)?,
                (None, None) => anyhow::bail!("--events or --impressions is required"),
            }
        }
        Command::Train {
            config,
            data,
            out,
            resume,
            set,
            device,
        } => {
            let mut cfg = Config::load_with(&config, &set)?;
            if let Some(d) = data {
                cfg.data.dir = d;
            }
            if let Some(o) = out {
                cfg.train.out = o;
            }
            if let Some(d) = device {
                cfg.train.device = d;
            }
            train_cmd(cfg, resume)?;
        }
        Command::Eval {
            checkpoint,
            data,
            split,
            json,
            predictions,
            device,
        } => {
            let device = device.open()?;
            eval_cmd(
                &checkpoint,
                &data,
                split,
                json,
                predictions.as_deref(),
                &device,
            )?;
        }
        Command::Encode {
            checkpoint,
            data,
            out,
            shard,
            update,
            events,
            device,
            log,
        } => encode_cmd(
            &checkpoint,
            data,
            out,
            &shard,
            update,
            events,
            log,
            &device.open()?,
        )?,
        Command::Serve {
            checkpoint,
            encodings,
            addr,
            threads,
            max_in_flight,
            deadline_ms,
            max_body,
            shard,
            bucket_precision,
            store,
            device,
        } => {
            serving::serve(serving::ServeConfig {
                checkpoint,
                encodings,
                addr,
                threads,
                max_in_flight,
                deadline: std::time::Duration::from_millis(deadline_ms),
                max_body,
                store: serving::StoreOptions {
                    shard: serving::Shard::parse(&shard)?,
                    buckets: bucket_precision.parse()?,
                    mapped: store,
                    device,
                },
            })?;
        }
        Command::Inspect { path, json } => {
            let i = lifelong::inspect::inspect(&path)?;
            if json {
                println!("{}", serde_json::to_string(&i)?);
            } else {
                println!("{i}");
            }
        }
        Command::Plot { runs, out } => {
            let out = out.unwrap_or_else(|| match runs.as_slice() {
                [one] => one.join("curves.svg"),
                _ => PathBuf::from("curves.svg"),
            });
            let curves = runs
                .iter()
                .map(|r| plot::read_run(r))
                .collect::<lifelong::Result<Vec<_>>>()?;
            plot::plot_runs(&curves, &out)?;
            println!("wrote {}", out.display());
        }
        Command::Sweep {
            config,
            grid,
            set,
            random,
            seed,
            jobs,
            out,
            data,
            device,
        } => sweep_cmd(sweep::SweepOptions {
            config,
            data,
            device,
            sets: set,
            grid,
            random,
            seed,
            jobs,
            out,
            exe: std::env::current_exe().context("locating the lifelong executable")?,
        })?,
        Command::Demo { root } => demo(&root)?,
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn encode_cmd(
    checkpoint: &Path,
    data: Option<PathBuf>,
    out: Option<PathBuf>,
    shard: &str,
    update: Option<PathBuf>,
    events: Option<PathBuf>,
    log: LogArgs,
    device: &candle_core::Device,
) -> Result<()> {
    let mf = ModelFile::open(checkpoint, device)?;
    let t0 = std::time::Instant::now();
    match (data, update, events) {
        (Some(data), None, None) => {
            let out = out.context("--out is required")?;
            let shard = serving::Shard::parse(shard)?;
            let s =
                serving::encode_dataset(&mf, &data, &out, shard, true).doing("encoding", &data)?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "encoded {} users ({} behaviors) into {} in {secs:.1} s: {:.0} users/s, {:.0} behaviors/s",
                s.users,
                s.behaviors,
                s.file.display(),
                s.users as f64 / secs,
                s.behaviors as f64 / secs
            );
        }
        (Some(data), None, Some(events)) => {
            let out = out.context("--out is required")?;
            let shard = serving::Shard::parse(shard)?;
            let s = serving::encode_events(&mf, &data, &events, &log.config()?, &out, shard)
                .doing("encoding the users of", &events)?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "encoded {} users ({} events) of {} into {} in {secs:.1} s: {:.0} events/s",
                s.users,
                s.events,
                events.display(),
                out.display(),
                s.events as f64 / secs
            );
        }
        (None, Some(dir), Some(events)) => {
            let out = out.unwrap_or_else(|| dir.clone());
            let s = serving::update(&mf, &dir, &events, &log.config()?, &out)
                .with_context(|| format!("updating {} with {}", dir.display(), events.display()))?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "folded {} events into {} users ({} new; {} in all) in {secs:.1} s: {:.0} events/s; wrote {}",
                s.events,
                s.updated + s.added,
                s.added,
                s.users,
                s.events as f64 / secs,
                out.display()
            );
        }
        _ => anyhow::bail!("give --data (encode a dataset) or --update DIR --events LOG"),
    }
    Ok(())
}

/// A byte count: digits with an optional K, M, G or T suffix (powers of 1024; `B`, `iB` and
/// lower case accepted: `512M`, `2GiB`, `1g`).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number of bytes such as 2G or 512M"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{s}`: must be between 1 byte and 16 EiB"))
}

/// Context for a library error: "VERB PATH: error", or "VERB: error" when the error already
/// names that path (errors name their file; it should not appear twice).
trait Doing<T> {
    fn doing(self, verb: &str, path: &Path) -> Result<T>;
}

impl<T> Doing<T> for lifelong::Result<T> {
    fn doing(self, verb: &str, path: &Path) -> Result<T> {
        self.map_err(|e| {
            let p = path.display().to_string();
            let what = if e.to_string().contains(&p) {
                verb.to_string()
            } else {
                format!("{verb} {p}")
            };
            anyhow::Error::new(e).context(what)
        })
    }
}

/// `COLUMN=VALUE` of `--keep`.
fn parse_keep(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}`: expected COLUMN=VALUE")),
    }
}

fn prepare(events: &Path, out: &Path, cfg: &PrepareConfig) -> Result<()> {
    let s = data::prepare(events, out, cfg).doing("preparing", events)?;
    report_prepared(out, &s.meta);
    Ok(())
}

fn report_prepared(out: &Path, m: &data::Meta) {
    println!(
        "prepared {}: {} users, {} items, {} categories, {} behaviors; train {} / valid {} / test {} rows",
        out.display(),
        m.n_users - 2,
        m.n_items - 2,
        m.n_cates - 2,
        m.n_behaviors,
        m.n_train,
        m.n_valid,
        m.n_test
    );
}

fn train_cmd(cfg: Config, resume: bool) -> Result<()> {
    let run_dir = cfg.train.out.clone();
    let data_dir = cfg.data.dir.clone();
    let (verb, at) = match resume {
        true => ("resuming from", &run_dir),
        false => ("training on", &data_dir),
    };
    let device = cfg.train.device.open()?;
    let s = lifelong::train::run(cfg, resume, &device).doing(verb, at)?;
    println!(
        "trained {} steps ({} samples in {:.1}s, {:.0} samples/s); best valid AUC {} at step {}; checkpoints in {}",
        s.state.step,
        s.samples,
        s.train_secs,
        s.samples_per_sec(),
        s.state.best_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
        s.state.best_step,
        run_dir.display()
    );
    // The run's curves beside its checkpoints (a run without a validation has none to draw).
    if plot::metrics_file(&run_dir).exists() {
        let svg = run_dir.join("curves.svg");
        match plot::read_run(&run_dir).and_then(|c| plot::plot_runs(&[c], &svg)) {
            Ok(()) => println!("curves in {}", svg.display()),
            Err(e) => tracing::warn!("no curves drawn: {e}"),
        }
    }
    Ok(())
}

fn sweep_cmd(opts: sweep::SweepOptions) -> Result<()> {
    let r = sweep::run(&opts)?;
    print!("\n{}", sweep::format_pretty(&r.axes, &r.rows));
    println!("results in {}", r.table.display());
    if let Some(c) = &r.curves {
        println!("curves in {}", c.display());
    }
    match r.best() {
        Some(b) => println!(
            "best: {} (valid AUC {:.4}) with {} in {}",
            b.trial.name,
            b.best_auc.unwrap_or(f64::NAN),
            b.trial.overrides.join(" "),
            b.dir.display()
        ),
        None => println!("best: none (no trial finished with a validation AUC)"),
    }
    let failed = r.failed();
    anyhow::ensure!(
        failed < r.rows.len(),
        "all {failed} trials failed; their logs are OUT/trial-NNN/{} (see {})",
        sweep::LOG_FILE,
        r.table.display()
    );
    if failed > 0 {
        println!(
            "{failed} of {} trials failed (see the status column)",
            r.rows.len()
        );
    }
    Ok(())
}

fn eval_cmd(
    checkpoint: &Path,
    data_dir: &Path,
    split: Split,
    json: bool,
    predictions: Option<&Path>,
    device: &candle_core::Device,
) -> Result<()> {
    let ev = eval::evaluate_checkpoint_on(checkpoint, data_dir, split, device)
        .doing("evaluating on", data_dir)?;
    if let Some(p) = predictions {
        eval::write_predictions(p, &ev.data, &ev.impressions, &ev.logits)?;
    }
    let (m, ds, mf) = (&ev.metrics, &ev.data, &ev.model);
    let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    println!(
        "{} {} ({} rows) with {}: AUC {}  GAUC {}  logloss {:.4}",
        ds.dir.display(),
        split.name(),
        m.n,
        mf.file.display(),
        f(m.auc),
        f(m.gauc),
        m.logloss
    );
    if json {
        let obj = serde_json::json!({"auc": m.auc, "gauc": m.gauc, "logloss": m.logloss, "n": m.n, "ne": m.ne, "calibration": m.calibration});
        println!("{obj}");
    }
    Ok(())
}

fn demo(root: &Path) -> Result<()> {
    let root = &std::path::absolute(root).with_context(|| format!("--root {}", root.display()))?;
    let events = root.join("data/sample/events.parquet");
    let prepared = root.join("data/prepared/sample");
    let config = root.join("examples/din.toml");
    anyhow::ensure!(
        config.exists(),
        "{} is missing: run `lifelong demo` from the repository checkout, or pass --root CHECKOUT",
        config.display()
    );
    anyhow::ensure!(
        events.exists(),
        "{} is missing: regenerate it with `lifelong synth --out {}`",
        events.display(),
        root.join("data/sample").display()
    );
    prepare(&events, &prepared, &PrepareConfig::default())?;
    let mut cfg = Config::load(&config)?;
    cfg.data.dir = prepared.clone();
    cfg.train.out = root.join("runs/demo");
    train_cmd(cfg.clone(), false)?;
    eval_cmd(
        &cfg.train.out,
        &prepared,
        Split::Test,
        false,
        None,
        &candle_core::Device::Cpu,
    )
}
