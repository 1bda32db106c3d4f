//! Per-user history tables read as the event log they collect.
//!
//! Spark users often hold one row per user with the history in list columns, as
//! `groupBy("user_id").agg(collect_list(struct("ts", "item_id", "cate_id")).alias("history"))`
//! writes, or as three parallel lists (`item_id`, `cate_id`, `ts` each a list). Such a table is
//! *exploded* batch by batch: every list element becomes an event row, the row's other columns
//! (the user) are repeated, and the fields of a list of structs become columns. All lists of one
//! row must have the same length. Only lists that hold a column the reader asks for count: an
//! event log with an unrelated list column (tags, say) is read as it is, the list ignored. What comes out goes through the event-log reader's checks.
//! `collect_list` does not promise an order, which is why the timestamps decide and ties keep
//! the list order.

use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, OffsetSizeTrait, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::path::Path;
use std::sync::Arc;

fn list_child(dt: &DataType) -> Option<&Field> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) => Some(f.as_ref()),
        _ => None,
    }
}

/// Whether list column `f` holds one of the `wanted` columns: it is named like one, or it is a
/// list of structs with a field named like one.
fn holds_wanted(f: &Field, wanted: &[String]) -> bool {
    match list_child(f.data_type()) {
        Some(child) => match child.data_type() {
            DataType::Struct(inner) => inner.iter().any(|g| wanted.iter().any(|w| w == g.name())),
            _ => wanted.iter().any(|w| w == f.name()),
        },
        None => false,
    }
}

/// The schema of the exploded table when `schema` is a history table (one of the `wanted`
/// columns is in a list, or in a list of structs), else `None`. A list's element type becomes
/// the column's type; a list of structs contributes one column per struct field; other list
/// columns (tags, say) are dropped, and the remaining columns repeat per element.
pub fn exploded_schema(schema: &SchemaRef, wanted: &[String]) -> Option<SchemaRef> {
    if !schema.fields().iter().any(|f| holds_wanted(f, wanted)) {
        return None;
    }
    let mut fields = Vec::new();
    for f in schema.fields() {
        match list_child(f.data_type()) {
            Some(_) if !holds_wanted(f, wanted) => {}
            Some(child) => match child.data_type() {
                DataType::Struct(inner) => {
                    fields.extend(inner.iter().map(|g| g.as_ref().clone().with_nullable(true)))
                }
                dt => fields.push(Field::new(f.name(), dt.clone(), true)),
            },
            None => fields.push(f.as_ref().clone()),
        }
    }
    Some(Arc::new(Schema::new(fields)))
}

/// Row offsets of a list column, and its values (only the referenced range).
fn offsets_and_values<O: OffsetSizeTrait>(arr: &ArrayRef) -> (Vec<usize>, ArrayRef) {
    let l = arr.as_list::<O>();
    let off: Vec<usize> = l.offsets().iter().map(|o| o.as_usize()).collect();
    let (a, b) = (off[0], off[off.len() - 1]);
    let values = l.values().slice(a, b - a);
    (off.iter().map(|o| o - a).collect(), values)
}

/// Explodes one batch of a history table (rows `row0..` of `file`, 0-based) into event rows
/// with the columns of [`exploded_schema`], and the batch row each event comes from.
///
/// # Errors
/// [`Error::Value`] naming the file, row and column for a null list or for lists of one row
/// that differ in length.
pub fn explode(
    file: &Path,
    row0: usize,
    batch: &RecordBatch,
    wanted: &[String],
) -> Result<(RecordBatch, Vec<u32>)> {
    let schema = batch.schema();
    let Some(out_schema) = exploded_schema(&schema, wanted) else {
        return Ok((batch.clone(), (0..batch.num_rows() as u32).collect()));
    };
    // Every list column's offsets (they must agree row by row) and values.
    let mut lists: Vec<(usize, Vec<usize>, ArrayRef)> = Vec::new();
    for (ci, f) in schema.fields().iter().enumerate() {
        if !holds_wanted(f, wanted) {
            continue;
        }
        let arr = batch.column(ci);
        let (off, values) = match f.data_type() {
            DataType::List(_) => offsets_and_values::<i32>(arr),
            DataType::LargeList(_) => offsets_and_values::<i64>(arr),
            _ => continue,
        };
        if let Some(r) = (0..arr.len()).find(|&r| arr.is_null(r)) {
            return Err(Error::value(
                file,
                row0 + r,
                f.name(),
                "null history list (use an empty list for a user without behaviors)",
            ));
        }
        if values.data_type().is_nested() && values.null_count() > 0 {
            return Err(Error::value(
                file,
                row0,
                f.name(),
                "a null element in a history list of structs",
            ));
        }
        if let Some((first, off0, _)) = lists.first() {
            if let Some(r) = (0..arr.len()).find(|&r| off[r + 1] - off[r] != off0[r + 1] - off0[r])
            {
                return Err(Error::value(
                    file,
                    row0 + r,
                    f.name(),
                    format!(
                        "list of {} elements but `{}` has {} in this row",
                        off[r + 1] - off[r],
                        schema.field(*first).name(),
                        off0[r + 1] - off0[r]
                    ),
                ));
            }
        }
        lists.push((ci, off, values));
    }
    let off = &lists[0].1;
    let n = off[off.len() - 1];
    let repeat: UInt32Array = (0..batch.num_rows())
        .flat_map(|r| std::iter::repeat_n(r as u32, off[r + 1] - off[r]))
        .collect();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(out_schema.fields().len());
    for (ci, f) in schema.fields().iter().enumerate() {
        if list_child(f.data_type()).is_some() && !holds_wanted(f, wanted) {
            continue;
        }
        match lists.iter().find(|(c, _, _)| *c == ci) {
            Some((_, _, values)) => match values.data_type() {
                DataType::Struct(_) => {
                    let s = values.as_struct();
                    cols.extend(s.columns().iter().cloned());
                }
                _ => cols.push(values.clone()),
            },
            None => {
                let col = arrow_select::take::take(batch.column(ci), &repeat, None)
                    .map_err(|e| Error::corrupt(file, format!("column `{}`: {e}", f.name())))?;
                cols.push(col);
            }
        }
    }
    debug_assert!(cols.iter().all(|c| c.len() == n));
    let batch = RecordBatch::try_new(out_schema, cols)
        .map_err(|e| Error::corrupt(file, format!("exploding the history lists: {e}")))?;
    Ok((batch, repeat.values().to_vec()))
}

/// An error about event `k` of an exploded batch, re-pointed at its row in the file
/// (`row0 + source[k]`): errors of a history table name the user's row.
pub fn locate(err: Error, row0: usize, source: &[u32]) -> Error {
    let at = |k: usize| row0 + source.get(k).copied().unwrap_or(0) as usize;
    match err {
        Error::Value {
            path,
            row,
            column,
            reason,
        } => Error::Value {
            path,
            row: at(row),
            column,
            reason,
        },
        Error::IdOutOfRange {
            path,
            row,
            field,
            id,
            vocab,
        } => Error::IdOutOfRange {
            path,
            row: at(row),
            field,
            id,
            vocab,
        },
        other => other,
    }
}
