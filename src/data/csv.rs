//! CSV event logs: a `.csv` file or a directory of them, read with arrow's own CSV reader
//! (`arrow-csv`), with or without a header row, into the same [`Table`] as the parquet reader,
//! through the same checks (types, nulls), so `prepare` treats both alike.
//!
//! Column types are inferred from the first [`INFER_ROWS`] rows of each file: integers become
//! int64, anything else a string. A later row that does not parse as its column's type (a text
//! id in a numeric column) is an error naming the file and the line, as is a row with the wrong
//! number of fields.

use super::io::{
    append_array, check_columns, list_files, missing_column, Chunk, Column, ColumnSpec, Table,
};
use crate::error::{Error, Result};
use arrow_csv::reader::Format;
use arrow_schema::{Field, Schema, SchemaRef};
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per file used to infer the column types.
pub const INFER_ROWS: usize = 10_000;
const BATCH_ROWS: usize = 1 << 16;

/// How CSV event logs are laid out.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CsvOptions {
    /// Names of the columns, in file order, for files without a header row (`None`: the first
    /// line of every file is its header).
    pub columns: Option<Vec<String>>,
    /// Field delimiter (`None`: `,`).
    pub delimiter: Option<u8>,
}

/// Whether `path` is a CSV log: a file ending in `.csv`, or a directory with `*.csv` files and
/// no `*.parquet` file.
pub fn is_csv(path: &Path) -> bool {
    let ext_csv = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if path.is_dir() {
        list_files(path, "csv").is_ok() && list_files(path, "parquet").is_err()
    } else {
        ext_csv(path)
    }
}

fn format(opts: &CsvOptions) -> Format {
    let f = Format::default().with_header(opts.columns.is_none());
    match opts.delimiter {
        Some(d) => f.with_delimiter(d),
        None => f,
    }
}

/// The schema of one file: inferred types, named by its header or by `opts.columns`.
fn file_schema(path: &Path, opts: &CsvOptions) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let (inferred, _) = format(opts)
        .infer_schema(file, Some(INFER_ROWS))
        .map_err(|e| Error::corrupt(path, format!("not a readable CSV file: {e}")))?;
    let Some(names) = &opts.columns else {
        return Ok(Arc::new(inferred));
    };
    if names.len() != inferred.fields().len() {
        return Err(Error::corrupt(
            path,
            format!(
                "{} columns were named ({}) but the first line has {} fields",
                names.len(),
                names.join(","),
                inferred.fields().len()
            ),
        ));
    }
    let fields: Vec<Field> = inferred
        .fields()
        .iter()
        .zip(names)
        .map(|(f, n)| Field::new(n, f.data_type().clone(), true))
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn read_file(
    path: &Path,
    specs: &[ColumnSpec],
    opts: &CsvOptions,
) -> Result<(usize, Vec<Option<Column>>)> {
    let schema = file_schema(path, opts)?;
    let present = check_columns(path, &schema, specs)?;
    let mut out = empty_columns(specs, &schema, &present);
    let rows = each_batch(path, specs, opts, &schema, &present, |_, cols| {
        for (acc, col) in out.iter_mut().zip(cols) {
            if let (Some(acc), Some(col)) = (acc.as_mut(), col) {
                acc.append(col)
                    .map_err(|why| Error::corrupt(path, why.to_string()))?;
            }
        }
        Ok(())
    })?;
    Ok((rows, out))
}

fn empty_columns(
    specs: &[ColumnSpec],
    schema: &SchemaRef,
    present: &[bool],
) -> Vec<Option<Column>> {
    specs
        .iter()
        .zip(present)
        .map(|(spec, &p)| {
            p.then(|| {
                let ci = schema.index_of(&spec.name).unwrap_or(0);
                Column::empty(&spec.kind, schema.field(ci).data_type())
            })
        })
        .collect()
}

/// Streams the file `path` (of `schema`) in batches of [`BATCH_ROWS`] rows, converted to the
/// `specs` columns, handing each with its first row to `f`; returns the number of rows.
fn each_batch(
    path: &Path,
    specs: &[ColumnSpec],
    opts: &CsvOptions,
    schema: &SchemaRef,
    present: &[bool],
    mut f: impl FnMut(usize, Vec<Option<Column>>) -> Result<()>,
) -> Result<usize> {
    let mut projection: Vec<usize> = specs
        .iter()
        .zip(present)
        .filter(|(_, &p)| p)
        .filter_map(|(spec, _)| schema.index_of(&spec.name).ok())
        .collect();
    projection.sort_unstable();
    projection.dedup();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = arrow_csv::ReaderBuilder::new(schema.clone())
        .with_format(format(opts))
        .with_batch_size(BATCH_ROWS)
        .with_projection(projection)
        .build(file)
        .map_err(|e| Error::corrupt(path, e))?;
    let mut row = 0usize;
    for batch in reader {
        // arrow-csv's message names the line (ragged rows, values that do not parse).
        let batch = batch.map_err(|e| Error::corrupt(path, one_based_line(&e.to_string())))?;
        let mut cols = empty_columns(specs, schema, present);
        for ((spec, col), &p) in specs.iter().zip(cols.iter_mut()).zip(present) {
            let Some(col) = col.as_mut().filter(|_| p) else {
                continue;
            };
            let arr = batch
                .column_by_name(&spec.name)
                .ok_or_else(|| missing_column(path, &spec.name, schema))?;
            append_array(path, &spec.name, row, &spec.kind, arr, col)?;
        }
        f(row, cols)?;
        row += batch.num_rows();
    }
    Ok(row)
}

/// Reads the CSV log at `path` (a file, or every `*.csv` under a directory, in path order) a
/// batch of rows at a time, handing each to `f` (memory: one batch). Every file's header and
/// types are checked before the first batch. Returns the number of rows.
///
/// # Errors
/// The errors of [`read_csv_table`], and whatever `f` returns.
pub fn read_csv_chunks(
    path: &Path,
    specs: &[ColumnSpec],
    opts: &CsvOptions,
    mut f: impl FnMut(Chunk) -> Result<()>,
) -> Result<usize> {
    let files: Vec<PathBuf> = list_files(path, "csv")?;
    let schemas: Vec<SchemaRef> = files
        .par_iter()
        .map(|f| file_schema(f, opts))
        .collect::<Result<_>>()?;
    let present: Vec<Vec<bool>> = files
        .iter()
        .zip(&schemas)
        .map(|(f, s)| check_columns(f, s, specs))
        .collect::<Result<_>>()?;
    for (si, spec) in specs.iter().enumerate() {
        if spec.optional {
            let with = present.iter().position(|p| p[si]);
            let without = present.iter().position(|p| !p[si]);
            if let (Some(with), Some(without)) = (with, without) {
                return Err(Error::schema(
                    &files[without],
                    &spec.name,
                    format!("missing here but present in {}", files[with].display()),
                ));
            }
        }
        let families: Vec<(usize, &'static str)> = files
            .iter()
            .enumerate()
            .filter(|(fi, _)| present[*fi][si])
            .filter_map(|(fi, _)| {
                let ci = schemas[fi].index_of(&spec.name).ok()?;
                Some((fi, spec.kind.family(schemas[fi].field(ci).data_type())?))
            })
            .collect();
        if let Some(&(f0, fam0)) = families.first() {
            if let Some(&(fi, fam)) = families.iter().find(|(_, fam)| *fam != fam0) {
                return Err(Error::schema(
                    &files[fi],
                    &spec.name,
                    format!(
                        "holds {fam} here but {fam0} in {} (types are inferred from the first \
                         {INFER_ROWS} rows of each file)",
                        files[f0].display()
                    ),
                ));
            }
        }
    }
    let mut total = 0usize;
    for ((file, schema), present) in files.iter().zip(&schemas).zip(&present) {
        total += each_batch(file, specs, opts, schema, present, |row0, columns| {
            let rows = columns
                .iter()
                .flatten()
                .map(Column::len)
                .next()
                .unwrap_or(0);
            f(Chunk {
                file: file.clone(),
                row0,
                rows,
                columns,
            })
        })?;
    }
    Ok(total)
}

/// arrow-csv 60 reports a value that does not parse "at line N" with N the 0-based line of the
/// file (its ragged-row errors, from the `csv` crate, are 1-based): make it the 1-based line an
/// editor shows.
fn one_based_line(msg: &str) -> String {
    const AT: &str = " at line ";
    if !msg.contains("Error while parsing value") {
        return msg.to_string();
    }
    let Some(i) = msg.find(AT).map(|i| i + AT.len()) else {
        return msg.to_string();
    };
    let digits = msg[i..].bytes().take_while(u8::is_ascii_digit).count();
    match msg[i..i + digits].parse::<u64>() {
        Ok(n) => format!("{}{}{}", &msg[..i], n + 1, &msg[i + digits..]),
        Err(_) => msg.to_string(),
    }
}

/// Reads the columns `specs` of the CSV log at `path` (a file, or every `*.csv` under a
/// directory, in path order), files in parallel.
///
/// # Errors
/// Named errors: a missing path, a file that is not CSV, a missing or mistyped column, a row
/// with the wrong number of fields or a value that does not parse (file and line), nulls (file,
/// row and column).
pub fn read_csv_table(path: &Path, specs: &[ColumnSpec], opts: &CsvOptions) -> Result<Table> {
    let files: Vec<PathBuf> = list_files(path, "csv")?;
    let parts: Vec<(usize, Vec<Option<Column>>)> = files
        .par_iter()
        .map(|f| read_file(f, specs, opts))
        .collect::<Result<_>>()?;
    for (si, spec) in specs.iter().enumerate().filter(|(_, s)| s.optional) {
        let has: Vec<bool> = parts.iter().map(|(_, c)| c[si].is_some()).collect();
        if let (Some(with), Some(without)) =
            (has.iter().position(|&h| h), has.iter().position(|&h| !h))
        {
            return Err(Error::schema(
                &files[without],
                &spec.name,
                format!("missing here but present in {}", files[with].display()),
            ));
        }
    }
    let mut file_rows = Vec::with_capacity(files.len());
    let mut columns: Vec<Option<Column>> = vec![None; specs.len()];
    for ((rows, cols), file) in parts.into_iter().zip(&files) {
        file_rows.push(rows);
        for (si, col) in cols.into_iter().enumerate() {
            let Some(col) = col else { continue };
            match &mut columns[si] {
                slot @ None => *slot = Some(col),
                Some(acc) => acc
                    .append(col)
                    .map_err(|why| Error::schema(file, &specs[si].name, why))?,
            }
        }
    }
    Ok(Table {
        files,
        file_rows,
        columns,
    })
}
