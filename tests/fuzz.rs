//! Mutation fuzzing of the readers (stable toolchain, proptest): valid files with random bytes
//! overwritten, or cut short, must give a named error or a result, never a panic. Bounded: a
//! fixed number of cases on small files, so it runs in CI.

use lifelong::data::synth::SynthConfig;
use lifelong::data::{prepare, write_synth, Dataset, PrepareConfig, Split};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A small synthetic log and its prepared dataset, built once.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            users: 40,
            items: 60,
            cates: 5,
            len: 12,
            seed: 3,
        };
        let events = write_synth(&cfg, &tmp.path().join("log")).unwrap();
        let prepared = tmp.path().join("prep");
        prepare(&events, &prepared, &PrepareConfig::default()).unwrap();
        (tmp, events, prepared)
    })
}

/// `bytes` with the `edits` applied (position as a fraction of the length, new byte), then cut
/// to `keep` of its length when given.
fn mutate(
    bytes: &[u8],
    edits: &[(prop::sample::Index, u8)],
    keep: Option<prop::sample::Index>,
) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for (at, v) in edits {
        let i = at.index(b.len());
        b[i] = *v;
    }
    if let Some(k) = keep {
        b.truncate(k.index(b.len()));
    }
    b
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("vocab")).unwrap();
    for f in crate::common::PREPARED_FILES {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_event_log_prepares_or_is_a_named_error(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        keep in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (_, events, _) = fixture();
        let bytes = std::fs::read(events).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("events.parquet");
        std::fs::write(&log, mutate(&bytes, &edits, keep)).unwrap();
        let out = tmp.path().join("out");
        match prepare(&log, &out, &PrepareConfig::default()) {
            Ok(s) => prop_assert!(s.meta.n_behaviors > 0),
            Err(e) => {
                let m = e.to_string();
                prop_assert!(m.contains("events.parquet"), "error does not name the file: {m}");
                prop_assert!(!out.join("meta.json").exists());
            }
        }
    }

    #[test]
    fn a_mutated_prepared_file_opens_or_is_a_named_error(
        which in 0usize..5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        keep in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (_, _, prepared) = fixture();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("prep");
        copy_dir(prepared, &dir);
        let name = ["users.parquet", "train.parquet", "test.parquet", "vocab/item.parquet", "meta.json"][which];
        let bytes = std::fs::read(dir.join(name)).unwrap();
        std::fs::write(dir.join(name), mutate(&bytes, &edits, keep)).unwrap();
        let r = Dataset::open(&dir).and_then(|ds| {
            ds.load_split(Split::Train)?;
            ds.load_split(Split::Test)?;
            ds.item_cates()?;
            Ok(())
        });
        if let Err(e) = r {
            let m = e.to_string();
            let file = name.rsplit('/').next().unwrap_or(name);
            prop_assert!(m.contains(file), "error does not name {file}: {m}");
        }
    }
}
