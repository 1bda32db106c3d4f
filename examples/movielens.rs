//! Converts the MovieLens-1M files into the event-log parquet that `lifelong prepare` reads.
//!
//! ```text
//! cargo run --release --example movielens -- \
//!     --input ../shared/data/movielens-1m-users1-2999 --out /tmp/ml/events.parquet
//! ```
//!
//! Input (in `--input`):
//! - `ratings.dat.gz` (or `ratings.dat`): `UserID::MovieID::Rating::Timestamp` per line;
//! - `movies.dat`: `MovieID::Title::Genres`, Latin-1 encoded, genres `|`-separated.
//!
//! Output: one row per rating, in the input's order (every rating is a behavior, a positive):
//!
//! | column    | type  | value                                   |
//! |-----------|-------|-----------------------------------------|
//! | `user_id` | int64 | UserID                                  |
//! | `item_id` | int64 | MovieID                                 |
//! | `cate_id` | utf8  | the movie's first genre (e.g. `Comedy`) |
//! | `ts`      | int64 | Timestamp (Unix seconds)                |
//!
//! The file is written atomically. A malformed line stops the conversion with the file and the
//! 1-based line number. The MovieLens license forbids redistribution: keep the output private.

use anyhow::{bail, Context, Result};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use clap::Parser;
use flate2::read::GzDecoder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(about = "Convert MovieLens-1M (ratings.dat.gz + movies.dat) into a lifelong event log")]
struct Args {
    /// Directory holding `ratings.dat.gz` (or `ratings.dat`) and `movies.dat`.
    #[arg(long)]
    input: PathBuf,
    /// Output parquet file (its directory is created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Splits a `::`-separated line into exactly `N` fields.
fn fields<'a, const N: usize>(line: &'a str, path: &Path, lineno: usize) -> Result<[&'a str; N]> {
    let parts: Vec<&str> = line.split("::").collect();
    <[&str; N]>::try_from(parts).map_err(|parts| {
        anyhow::anyhow!(
            "{}:{lineno}: expected {N} `::`-separated fields, found {}: {line:?}",
            path.display(),
            parts.len()
        )
    })
}

/// Parses one integer field, naming the file, line and field on failure.
fn int<T: std::str::FromStr>(s: &str, what: &str, path: &Path, lineno: usize) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{}:{lineno}: bad {what} {s:?}: {e}", path.display()))
}

/// Reads `movies.dat` (Latin-1) into MovieID → first genre.
fn read_movies(path: &Path) -> Result<HashMap<i64, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Latin-1 maps each byte to the code point of the same value.
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    let mut movies = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        // Split off the id and the genres only: a title could itself contain `::`.
        let parse = || -> Option<(&str, &str)> {
            let (id, rest) = line.split_once("::")?;
            let (_title, genres) = rest.rsplit_once("::")?;
            Some((id, genres))
        };
        let Some((id, genres)) = parse() else {
            bail!(
                "{}:{lineno}: expected `MovieID::Title::Genres`: {line:?}",
                path.display()
            );
        };
        let id: i64 = int(id, "MovieID", path, lineno)?;
        let first = genres.split('|').next().unwrap_or("").trim();
        if first.is_empty() {
            bail!("{}:{lineno}: movie {id} has no genre", path.display());
        }
        if movies.insert(id, first.to_string()).is_some() {
            bail!("{}:{lineno}: movie {id} listed twice", path.display());
        }
    }
    Ok(movies)
}

/// The event-log columns, one entry per rating.
#[derive(Default)]
struct Events {
    user: Vec<i64>,
    item: Vec<i64>,
    cate: Vec<String>,
    ts: Vec<i64>,
}

/// Reads the ratings (gzip if the name ends in `.gz`), in file order.
fn read_ratings(path: &Path, movies: &HashMap<i64, String>) -> Result<Events> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut ev = Events::default();
    let mut buf = Vec::new();
    let mut lineno = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}:{}: read error", path.display(), lineno + 1))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        let line = std::str::from_utf8(&buf)
            .with_context(|| format!("{}:{lineno}: not ASCII text", path.display()))?
            .trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let [user, movie, rating, ts] = fields::<4>(line, path, lineno)?;
        let user: i64 = int(user, "UserID", path, lineno)?;
        let movie: i64 = int(movie, "MovieID", path, lineno)?;
        let rating: u8 = int(rating, "Rating", path, lineno)?;
        let ts: i64 = int(ts, "Timestamp", path, lineno)?;
        if !(1..=5).contains(&rating) {
            bail!("{}:{lineno}: rating {rating} outside 1..=5", path.display());
        }
        let Some(cate) = movies.get(&movie) else {
            bail!(
                "{}:{lineno}: movie {movie} is not in movies.dat",
                path.display()
            );
        };
        ev.user.push(user);
        ev.item.push(movie);
        ev.cate.push(cate.clone());
        ev.ts.push(ts);
    }
    Ok(ev)
}

/// Encodes the events as one zstd-compressed parquet file in memory.
fn to_parquet(ev: Events) -> Result<Vec<u8>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("cate_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ev.user)),
        Arc::new(Int64Array::from(ev.item)),
        Arc::new(StringArray::from(ev.cate)),
        Arc::new(Int64Array::from(ev.ts)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    // ArrowWriter needs a `Send` sink, which the atomic writer's `&mut dyn Write` is not: encode
    // into memory (a few MB for ML-1M) and write the bytes atomically.
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props))?;
    writer.write(&batch)?;
    Ok(writer.into_inner()?)
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Converts, writes and prints the counts.
fn run(args: Args) -> Result<()> {
    let movies_path = args.input.join("movies.dat");
    let ratings_path = ["ratings.dat.gz", "ratings.dat"]
        .iter()
        .map(|f| args.input.join(f))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no ratings.dat.gz or ratings.dat in {}",
                args.input.display()
            )
        })?;

    let movies = read_movies(&movies_path)?;
    let ev = read_ratings(&ratings_path, &movies)?;
    let rows = ev.user.len();
    let users = ev.user.iter().collect::<HashSet<_>>().len();
    let items = ev.item.iter().collect::<HashSet<_>>().len();
    let cates = ev.cate.iter().collect::<HashSet<_>>().len();

    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = to_parquet(ev)?;
    lifelong::atomic::atomic_write_bytes(&args.out, &bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {rows} ratings, {users} users, {items} movies, {cates} categories ({} movies in movies.dat)",
        args.out.display(),
        movies.len()
    );
    Ok(())
}
