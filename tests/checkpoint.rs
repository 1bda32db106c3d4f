//! Checkpoints: exact round trip, interoperability with plain safetensors readers, named errors
//! for truncated / corrupt / foreign files (never a panic), and atomic writes.

use candle_core::{DType, Device, IndexOp, Tensor};
use lifelong::checkpoint::{self, load, read_metadata, save, CHECKPOINT_FORMAT, RESERVED_KEYS};
use lifelong::Error;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A checkpoint with every saved dtype, odd shapes (scalar, empty) and odd layouts (a transposed
/// view, a narrowed view with a non-zero storage offset).
fn sample_tensors() -> Vec<(String, Tensor)> {
    let cpu = Device::Cpu;
    let f32s = Tensor::arange(0f32, 12.0, &cpu)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    vec![
        ("dense.weight".into(), f32s.clone()),
        ("dense.weight_t".into(), f32s.t().unwrap()), // not contiguous
        ("dense.rows".into(), f32s.i(1..3).unwrap()), // storage offset 4
        (
            "emb.item".into(),
            Tensor::new(&[[1.5f64, -2.25], [1e300, -0.0]], &cpu).unwrap(),
        ),
        (
            "step".into(),
            Tensor::new(&[7u32, u32::MAX, 0], &cpu).unwrap(),
        ),
        (
            "row_steps".into(),
            Tensor::new(&[i64::MIN, -1, i64::MAX], &cpu).unwrap(),
        ),
        (
            "mask".into(),
            Tensor::new(&[0u8, 1, 255, 3, 4], &cpu).unwrap(),
        ),
        ("scalar".into(), Tensor::new(3.5f32, &cpu).unwrap()),
        (
            "empty".into(),
            Tensor::zeros((0, 3), DType::F32, &cpu).unwrap(),
        ),
        ("i16".into(), Tensor::new(&[-3i16, 4], &cpu).unwrap()),
        ("i32".into(), Tensor::new(&[-3i32, 4], &cpu).unwrap()),
        (
            "half".into(),
            Tensor::new(&[0.5f32, -2.0], &cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        ),
        (
            "bhalf".into(),
            Tensor::new(&[0.5f32, -2.0], &cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        ),
    ]
}

fn sample_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "config".to_string(),
            r#"{"model":{"kind":"din","dim":16},"lr":0.001}"#.to_string(),
        ),
        (
            "trainer_state".to_string(),
            r#"{"epoch":2,"step":12345}"#.to_string(),
        ),
        ("note".to_string(), "ünïcödé ✓ and \"quotes\"\n".to_string()),
        ("empty".to_string(), String::new()),
    ])
}

/// Bytes of a tensor in a dtype-independent form, for exact comparison.
fn as_f64_bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::U8 => t
            .to_vec1::<u8>()
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect(),
        DType::I16 => t
            .to_vec1::<i16>()
            .unwrap()
            .into_iter()
            .map(|x| x as u64)
            .collect(),
        DType::I32 => t
            .to_vec1::<i32>()
            .unwrap()
            .into_iter()
            .map(|x| x as u64)
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u64)
            .collect(),
        DType::F16 | DType::BF16 => t
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .map(f64::to_bits)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn assert_same_tensors(got: &BTreeMap<String, Tensor>, want: &[(String, Tensor)]) {
    assert_eq!(got.len(), want.len());
    for (name, w) in want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("tensor `{name}` missing"));
        assert_eq!(g.dtype(), w.dtype(), "{name}");
        assert_eq!(g.dims(), w.dims(), "{name}");
        assert_eq!(as_f64_bits(g), as_f64_bits(w), "{name}");
    }
}

fn saved_sample(dir: &Path) -> PathBuf {
    let path = dir.join("ckpt.safetensors");
    save(&path, &sample_tensors(), &sample_metadata()).unwrap();
    path
}

/// Asserts `r` is an `Error::Checkpoint` for `path` whose reason contains one of `needles`.
fn assert_checkpoint_err<T: std::fmt::Debug>(
    r: lifelong::Result<T>,
    path: &Path,
    needles: &[&str],
) {
    match r {
        Err(Error::Checkpoint { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(
                needles.iter().any(|n| reason.contains(n)),
                "reason `{reason}` contains none of {needles:?}"
            );
        }
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn checkpoint_round_trips_values_dtypes_shapes_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_sample(dir.path());
    let loaded = load(&path, &Device::Cpu).unwrap();
    assert_same_tensors(&loaded.tensors, &sample_tensors());
    assert_eq!(loaded.metadata, sample_metadata());
    assert_eq!(read_metadata(&path).unwrap(), sample_metadata());
    assert_eq!(dir_entries(dir.path()), ["ckpt.safetensors"]);
}

#[test]
fn checkpoint_empty_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.safetensors");
    save(&path, &[], &BTreeMap::new()).unwrap();
    let loaded = load(&path, &Device::Cpu).unwrap();
    assert!(loaded.tensors.is_empty() && loaded.metadata.is_empty());
}

#[test]
fn checkpoint_is_plain_safetensors() {
    // Other readers (candle, the safetensors crate) read the same tensors, and see our keys.
    let dir = tempfile::tempdir().unwrap();
    let path = saved_sample(dir.path());
    let by_candle: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_same_tensors(&by_candle.into_iter().collect(), &sample_tensors());
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format_version"], CHECKPOINT_FORMAT.to_string());
    assert_eq!(meta["crc32"].len(), 8);
    assert_eq!(meta["config"], sample_metadata()["config"]);
}

#[test]
fn checkpoint_bytes_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    save(&a, &sample_tensors(), &sample_metadata()).unwrap();
    // Same content, tensors given in another order.
    let mut rev = sample_tensors();
    rev.reverse();
    save(&b, &rev, &sample_metadata()).unwrap();
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn checkpoint_missing_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.safetensors");
    assert_checkpoint_err(load(&path, &Device::Cpu), &path, &["not found"]);
    assert_checkpoint_err(read_metadata(&path), &path, &["not found"]);
}

#[test]
fn checkpoint_truncated_is_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved_sample(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cut = dir.path().join("cut.safetensors");
    // Inside the length, at its end, inside the header, at its end, inside the data, one short.
    for len in [
        0,
        3,
        8,
        9,
        8 + n / 2,
        8 + n - 1,
        8 + n,
        8 + n + 5,
        bytes.len() - 1,
    ] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let needles = ["truncated", "not a checkpoint"];
        assert_checkpoint_err(load(&cut, &Device::Cpu), &cut, &needles);
        assert_checkpoint_err(read_metadata(&cut), &cut, &needles);
    }
}

#[test]
fn checkpoint_flipped_data_byte_fails_crc() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_sample(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for pos in [8 + n, 8 + n + 17, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        assert_checkpoint_err(
            load(&path, &Device::Cpu),
            &path,
            &["data corrupted: crc32 mismatch"],
        );
        // The header is intact: reading the metadata alone still works.
        assert_eq!(read_metadata(&path).unwrap(), sample_metadata());
    }
}

#[test]
fn checkpoint_flipped_metadata_digit_fails_header_crc() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_sample(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    // "lr":0.001 → "lr":0.003: still valid JSON, still a valid safetensors header.
    let pat = b"\\\"lr\\\":0.001"; // the config is stored escaped: \"lr\":0.001
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("lr in header")
        + pat.len()
        - 1;
    let mut bad = bytes.clone();
    bad[at] = b'3';
    std::fs::write(&path, &bad).unwrap();
    assert!(
        safetensors::SafeTensors::deserialize(&bad).is_ok(),
        "still a valid safetensors file"
    );
    assert_checkpoint_err(
        load(&path, &Device::Cpu),
        &path,
        &["header corrupted: header_crc32 mismatch"],
    );
    assert_checkpoint_err(read_metadata(&path), &path, &["header_crc32 mismatch"]);
}

#[test]
fn checkpoint_every_single_byte_flip_is_detected() {
    // Any one-byte change anywhere (length, header, padding, data) is an error, never a panic and
    // never a silently different checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    let tensors = vec![
        (
            "w".to_string(),
            Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap(),
        ),
        (
            "ids".to_string(),
            Tensor::new(&[5i64, 6], &Device::Cpu).unwrap(),
        ),
    ];
    let meta = BTreeMap::from([("config".to_string(), r#"{"lr":0.5,"dim":8}"#.to_string())]);
    save(&src, &tensors, &meta).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let path = dir.path().join("flipped.safetensors");
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            std::fs::write(&path, &bad).unwrap();
            match load(&path, &Device::Cpu) {
                Err(Error::Checkpoint { .. }) => {}
                other => {
                    panic!("byte {pos} ^ {mask:#x}: expected Error::Checkpoint, got {other:?}")
                }
            }
        }
    }
}

#[test]
fn checkpoint_garbage_is_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.safetensors");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in [1usize, 7, 8, 9, 64, 1000, 100_000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // xorshift64*, deterministic.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_checkpoint_err(load(&path, &Device::Cpu), &path, &[""]);
        assert_checkpoint_err(read_metadata(&path), &path, &[""]);
    }
    // A plausible small header length followed by non-JSON.
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"not json at all!");
    std::fs::write(&path, &bytes).unwrap();
    assert_checkpoint_err(load(&path, &Device::Cpu), &path, &["broken header"]);
}

#[test]
fn checkpoint_other_format_version_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.safetensors");
    let data = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    let meta = HashMap::from([
        ("format_version".to_string(), "2".to_string()),
        (
            "crc32".to_string(),
            format!("{:08x}", crc32fast::hash(&data)),
        ),
        ("header_crc32".to_string(), "00000000".to_string()),
    ]);
    std::fs::write(
        &path,
        safetensors::serialize([("w", &view)], Some(meta)).unwrap(),
    )
    .unwrap();
    assert_checkpoint_err(
        load(&path, &Device::Cpu),
        &path,
        &["format version 2, this build reads 1"],
    );
    assert_checkpoint_err(
        read_metadata(&path),
        &path,
        &["format version 2, this build reads 1"],
    );

    // A plain safetensors file (candle's own save: no metadata at all).
    let plain = dir.path().join("plain.safetensors");
    let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("w", t)]), &plain).unwrap();
    assert_checkpoint_err(load(&plain, &Device::Cpu), &plain, &["no format version"]);
}

#[test]
fn checkpoint_failed_save_keeps_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_sample(dir.path());
    let before = std::fs::read(&path).unwrap();

    // B fails inside the atomic writer (its temporary file already exists): F8E4M3 is not stored.
    let mut b = vec![(
        "other".to_string(),
        Tensor::ones(1000, DType::F32, &Device::Cpu).unwrap(),
    )];
    b.push((
        "fp8".to_string(),
        Tensor::zeros(4, DType::F8E4M3, &Device::Cpu).unwrap(),
    ));
    let r = save(&path, &b, &BTreeMap::new());
    assert_checkpoint_err(r, &path, &["dtype F8E4M3"]);

    // B fails before touching the disk: reserved key, duplicate name.
    let mut meta = sample_metadata();
    meta.insert(RESERVED_KEYS[1].to_string(), "x".into());
    assert!(matches!(
        save(&path, &sample_tensors(), &meta),
        Err(Error::InvalidArgument(_))
    ));
    let mut dup = sample_tensors();
    dup.push(dup[0].clone());
    assert!(matches!(
        save(&path, &dup, &BTreeMap::new()),
        Err(Error::InvalidArgument(_))
    ));

    // A is intact, byte for byte, and no temporary file is left behind.
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let loaded = load(&path, &Device::Cpu).unwrap();
    assert_same_tensors(&loaded.tensors, &sample_tensors());
    assert_eq!(loaded.metadata, sample_metadata());
    assert_eq!(dir_entries(dir.path()), ["ckpt.safetensors"]);
}

#[test]
fn checkpoint_save_overwrites_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_sample(dir.path());
    let b = vec![("w".to_string(), Tensor::new(&[9f32], &Device::Cpu).unwrap())];
    let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
    save(&path, &b, &meta).unwrap();
    let loaded = checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_same_tensors(&loaded.tensors, &b);
    assert_eq!(loaded.metadata, meta);
    assert_eq!(dir_entries(dir.path()), ["ckpt.safetensors"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn checkpoint_arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        header_len in prop::option::of(0u64..300),
    ) {
        // Optionally start with a plausible header length, so the JSON parser sees the rest.
        let mut file = header_len.map(|n| n.to_le_bytes().to_vec()).unwrap_or_default();
        file.extend_from_slice(&bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, &file).unwrap();
        let loaded = load(&path, &Device::Cpu);
        prop_assert!(matches!(loaded, Err(Error::Checkpoint { .. })), "{:?}", loaded);
        let meta = read_metadata(&path);
        prop_assert!(matches!(meta, Err(Error::Checkpoint { .. })), "{:?}", meta);
    }
}
