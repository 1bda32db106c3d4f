//! Configs: presets and how a config merges over them, misspelt keys in every part, validation of
//! parts that do not fit together, the stored (JSON) form, and per-table seeds.

use candle_core::Device;
use lifelong::config::preset::preset;
use lifelong::config::{
    AggregateConfig, Config, Preset, SearchConfig, SearchScorer, View, WindowConfig,
};
use lifelong::model::CtrModel;

fn cfg(model: &str) -> lifelong::Result<Config> {
    Config::from_toml(&format!(
        "[data]\ndir = \"d\"\nmax_len = 100\n{model}\n[train]\nseed = 4\n"
    ))
}

fn err(model: &str) -> String {
    cfg(model).unwrap_err().to_string()
}

/// Every example config parses and validates (they are documentation that must not rot).
#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 7, "{n} example configs");
}

/// `kind` alone is the preset, every part explicit.
#[test]
fn a_kind_alone_is_its_preset() {
    for p in Preset::ALL {
        let c = cfg(&format!("[model]\nkind = \"{}\"", p.name())).unwrap();
        assert_eq!(c.model, preset(p), "{p:?}");
    }
}

/// A part given in the config merges key by key over the preset's; a part of another kind
/// replaces it whole; a list merges element by element.
#[test]
fn config_merges_over_the_preset() {
    let c = cfg("[model]\nkind = \"eta\"\n[model.search]\nk = 7").unwrap();
    match &c.model.search {
        SearchConfig::Hamming(h) => assert_eq!((h.k, h.bits), (7, 64)),
        s => panic!("{s:?}"),
    }
    // Another kind: the hamming search's `bits` must not leak in (it would be an unknown key).
    let c = cfg(
        "[model]\nkind = \"eta\"\n[model.search]\nkind = \"attention\"\nscorer = \"own\"\nk = 5",
    )
    .unwrap();
    match &c.model.search {
        SearchConfig::Attention(a) => {
            assert_eq!((a.k, a.scorer, a.dim), (5, SearchScorer::Own, 64))
        }
        s => panic!("{s:?}"),
    }
    // Lists: an empty element keeps the preset's, a given key changes only itself.
    let c = cfg("[model]\nkind = \"sdim\"\n[[model.aggregate]]\n[[model.aggregate]]\nwindow = { recent = 7 }")
        .unwrap();
    assert_eq!(c.model.aggregate[0], preset(Preset::Sdim).aggregate[0]);
    match &c.model.aggregate[1] {
        AggregateConfig::Attention(t) => {
            assert_eq!((t.window, t.heads, t.dim), (WindowConfig::Recent(7), 2, 64))
        }
        a => panic!("{a:?}"),
    }
    // A shorter list drops the preset's extra elements (here SDIM's short-term branch).
    let c = cfg("[model]\nkind = \"sdim\"\n[[model.aggregate]]\ngroups = 4").unwrap();
    assert_eq!(c.model.aggregate.len(), 1);
}

/// A misspelt key fails in every part, and the error names the key and where it is.
#[test]
fn a_misspelt_key_is_an_error_naming_it() {
    for (model, key, place) in [
        (
            "[model]\nkind = \"din\"\nembeding = {}",
            "embeding",
            "model",
        ),
        (
            "[model]\nkind = \"din\"\n[model.embedding]\nitem_dm = 3",
            "item_dm",
            "model.embedding",
        ),
        (
            "[model]\nkind = \"eta\"\n[model.search]\nbiits = 3",
            "biits",
            "model.search",
        ),
        (
            "[model]\nkind = \"twin\"\n[model.search]\nscorr = \"dot\"",
            "scorr",
            "model.search",
        ),
        (
            "[model]\nkind = \"din\"\n[[model.aggregate]]\nhiden = [3]",
            "hiden",
            "model.aggregate[0]",
        ),
        (
            "[model]\nkind = \"sdim\"\n[[model.aggregate]]\ngroup = 3",
            "group",
            "model.aggregate[0]",
        ),
        (
            "[model]\nkind = \"sdim\"\n[[model.aggregate]]\n[[model.aggregate]]\nhead = 3",
            "head",
            "model.aggregate[1]",
        ),
        (
            "[model]\nkind = \"dare\"\n[model.head]\nhiden = [3]",
            "hiden",
            "model.head",
        ),
        (
            "[model]\nkind = \"dare\"\n[model.search.aux]\nwieght = 1.0",
            "wieght",
            "model.search",
        ),
    ] {
        let e = err(model);
        assert!(e.contains(key) && e.contains(place), "{model:?}: {e}");
    }
    let e = err("[model]\nkind = \"dinn\"");
    assert!(e.contains("dinn"), "{e}");
    let e = err("[model]\nitem_dim = 3");
    assert!(e.contains("model.kind"), "{e}");
}

/// Parts that do not fit together are named errors.
#[test]
fn parts_that_do_not_fit_are_errors() {
    for (model, needle) in [
        (
            "[model]\nkind = \"din\"\n[[model.aggregate]]\nwindow = \"retrieved\"",
            "model.search is none",
        ),
        (
            "[model]\nkind = \"din\"\n[model.search]\nkind = \"category\"\nk = 5",
            "no model.aggregate reads",
        ),
        (
            "[model]\nkind = \"twin\"\n[[model.aggregate]]\nkind = \"sdim\"\nwindow = \"retrieved\"\ngroups = 2\nbits = 2",
            "exact",
        ),
        ("[model]\nkind = \"eta\"\n[model.search]\nk = 0", "model.search.k"),
        ("[model]\nkind = \"sdim\"\n[[model.aggregate]]\nbits = 0", "bits"),
        (
            "[model]\nkind = \"eta\"\n[[model.aggregate]]\nheads = 3\ndim = 64",
            "multiple of heads",
        ),
        (
            "[model]\nkind = \"dare\"\n[[model.aggregate]]\nvalues = \"attention\"",
            "product needs values",
        ),
        ("[model]\nkind = \"custom\"", "model"),
    ] {
        let e = err(model);
        assert!(e.contains(needle), "{model:?}: {e}");
    }
}

/// The stored JSON form rebuilds the same config, validated (a stored config that does not
/// validate is refused).
#[test]
fn stored_config_round_trips_and_is_validated() {
    for p in Preset::ALL {
        let c = cfg(&format!("[model]\nkind = \"{}\"", p.name())).unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
    }
    let mut c = cfg("[model]\nkind = \"eta\"").unwrap();
    if let SearchConfig::Hamming(h) = &mut c.model.search {
        h.bits = 0;
    }
    let e = Config::from_json(&c.to_json()).unwrap_err().to_string();
    assert!(e.contains("stored config") && e.contains("bits"), "{e}");
}

/// A `--data`/`--out` path that is not UTF-8 is stored lossily (it is provenance only), never a
/// panic, and the stored config still loads.
#[cfg(unix)]
#[test]
fn non_utf8_paths_are_stored_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let mut c = cfg("[model]\nkind = \"din\"").unwrap();
    c.data.dir = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"data/\xff\xfe"));
    c.train.out = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"runs/\xc3"));
    let back = Config::from_json(&c.to_json()).unwrap();
    assert_eq!(
        back.data.dir,
        std::path::PathBuf::from("data/\u{fffd}\u{fffd}")
    );
    assert_eq!(back.train.out, std::path::PathBuf::from("runs/\u{fffd}"));
    assert_eq!(back.model, c.model);
}

/// Every table draws from its own seed: adding a table (user, position, decoupled attention
/// tables) leaves the others' initial values unchanged.
#[test]
fn adding_a_table_does_not_change_the_others() {
    let vocab = lifelong::embedding::VocabSizes {
        users: 50,
        items: 80,
        cates: 9,
    };
    let build = |extra: &str| {
        let c = cfg(&format!(
            "[model]\nkind = \"din\"\n[model.embedding]\nitem_dim = 4\ncate_dim = 3\n{extra}"
        ))
        .unwrap();
        CtrModel::new(&c.model, 100, vocab, 4, &Device::Cpu).unwrap()
    };
    let base = build("");
    let item = base.tables().table(0).clone();
    assert_eq!(item.name(), "item");
    for extra in ["user_dim = 5", "pos_dim = 2", "user_dim = 2\npos_dim = 2"] {
        let m = build(extra);
        assert_eq!(m.tables().table(0), &item, "{extra}");
        assert_eq!(m.tables().table(1), base.tables().table(1), "{extra}");
    }
    // The decoupled model's representation tables differ from its attention tables.
    let c = cfg("[model]\nkind = \"dare\"").unwrap();
    let m = CtrModel::new(&c.model, 100, vocab, 4, &Device::Cpu).unwrap();
    let names: Vec<&str> = m.tables().iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        ["att.item", "att.cate", "att.pos", "rep.item", "rep.cate", "rep.pos"]
    );
    assert_ne!(m.tables().table(0).data(), m.tables().table(3).data());
    assert_eq!(m.tables().view(View::Attention).width, 48);
}

/// `--set PATH=VALUE` overrides: scalars, inline tables, list elements by index, bare strings;
/// malformed ones are named errors.
#[test]
fn overrides_set_keys_before_the_preset_is_applied() {
    let text = "[data]\ndir = \"d\"\nmax_len = 100\n[model]\nkind = \"eta\"\n";
    let o = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let c = Config::from_toml_with(
        text,
        &o(&[
            "train.seed=7",
            "model.search.k=9",
            "model.aggregate.1.window={ recent = 12 }",
            "data.dir=elsewhere",
        ]),
    )
    .unwrap();
    assert_eq!(c.train.seed, 7);
    assert_eq!(c.data.dir, std::path::PathBuf::from("elsewhere"));
    match (&c.model.search, &c.model.aggregate[1]) {
        (SearchConfig::Hamming(h), AggregateConfig::Attention(t)) => {
            assert_eq!((h.k, h.bits), (9, 64));
            assert_eq!(t.window, WindowConfig::Recent(12));
        }
        x => panic!("{x:?}"),
    }
    // The preset still fills in the first element of the list.
    assert_eq!(c.model.aggregate[0], preset(Preset::Eta).aggregate[0]);
    for (bad, needle) in [
        ("train.seed", "PATH=VALUE"),
        ("train..seed=1", "empty key"),
        ("data.max_len.x=1", "not a table"),
        ("model.search.k2=3", "k2"),
    ] {
        let e = Config::from_toml_with(text, &o(&[bad]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

/// SDIM's signature width is the field `tau` in code but the key `bits` in every config and
/// checkpoint, as before the field was renamed: stored configs (and so the model fingerprints
/// that encodings carry) are those earlier versions wrote.
#[test]
fn sdims_tau_is_stored_under_its_old_key() {
    let cfg = lifelong::config::preset::preset(Preset::Sdim);
    let v = serde_json::to_value(&cfg).unwrap();
    let agg = &v["aggregate"][0];
    assert_eq!(
        (agg["kind"].as_str(), agg["bits"].as_u64()),
        (Some("sdim"), Some(3))
    );
    assert!(agg.get("tau").is_none(), "{agg}");
    match &cfg.aggregate[0] {
        AggregateConfig::Sdim(s) => assert_eq!(s.tau, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_json_config_is_the_toml_config_with_the_same_keys() {
    let toml =
        "[data]\ndir = \"d\"\nmax_len = 30\n[model]\nkind = \"eta\"\n[model.search]\nk = 7\n\
                [train]\nseed = 4\n";
    let json = r#"{"data": {"dir": "d", "max_len": 30}, "model": {"kind": "eta", "search": {"k": 7}},
                   "train": {"seed": 4}}"#;
    let sets = ["train.batch_size=64".to_string()];
    let a = Config::from_toml_with(toml, &sets).unwrap();
    let b = Config::from_json_with(json, &sets).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(b.train.batch_size, 64);
    // Not an object of TOML values: a null, a misspelt key.
    let e = Config::from_json_with(r#"{"data": null}"#, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("config"), "{e}");
    let e = Config::from_json_with(
        r#"{"data": {"dir": "d"}, "model": {"kind": "eta", "search": {"k2": 1}}}"#,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("k2"), "{e}");
}
