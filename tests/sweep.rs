//! `lifelong sweep`: top-level comma splitting, grid expansion (hand-computed order), seeded
//! sampling without replacement, the resume spec check and the table's ranking; end to end, a
//! 2×2 grid with two jobs (every row's AUC the run's own best, the overrides in each
//! checkpoint's config), a rerun that runs only the missing and the interrupted trial, a failing
//! trial recorded while the sweep goes on, and bad trial configs refused before any training.

use crate::cli::{fails, lifelong, ok, prepare, s, stderr, stdout, synth};
use lifelong::checkpoint::read_metadata;
use lifelong::sweep::{
    self, combination, format_tsv, grid_size, open_out, parse_axes, parse_grid, ranking,
    sample_indices, split_top_level, trials, GridAxis, Random, SweepSpec, Trial, TrialRow,
    TrialStatus,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn axis(key: &str, values: &[&str]) -> GridAxis {
    GridAxis {
        key: key.into(),
        values: strs(values),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing the grid
// ---------------------------------------------------------------------------------------------

#[test]
fn top_level_commas_split_and_nested_ones_do_not() {
    let cases: &[(&str, &[&str])] = &[
        ("0.01,0.03, 0.1", &["0.01", "0.03", "0.1"]),
        ("[200, 80],[64]", &["[200, 80]", "[64]"]),
        (
            " { recent = 20 } , \"all\"",
            &["{ recent = 20 }", "\"all\""],
        ),
        (
            "\"a,b\",'c,d',[[1,2],[3]]",
            &["\"a,b\"", "'c,d'", "[[1,2],[3]]"],
        ),
        // An escaped quote does not end a basic string; a literal string has no escapes.
        (r#""x\",y",z"#, &[r#""x\",y""#, "z"]),
        (r"'a\',b", &[r"'a\'", "b"]),
        (
            "{ a = [1, 2], b = { c = 3 } },4",
            &["{ a = [1, 2], b = { c = 3 } }", "4"],
        ),
        ("adam", &["adam"]),
    ];
    for (input, want) in cases {
        assert_eq!(
            split_top_level(input).unwrap(),
            strs(want),
            "splitting {input:?}"
        );
    }
    for (input, why) in [
        ("a,,b", "value 2 of 3 is empty"),
        ("a,", "value 2 of 2 is empty"),
        ("", "value 1 of 1 is empty"),
        ("[1,2", "unclosed `[`"),
        ("1]", "unmatched `]`"),
        ("{a=[1}]", "unmatched `}`"),
        ("\"abc,d", "unterminated string"),
    ] {
        let e = split_top_level(input).unwrap_err().to_string();
        assert!(e.contains(why), "{input:?}: {e}");
    }
}

#[test]
fn grid_arguments_parse_and_bad_ones_are_named() {
    assert_eq!(
        parse_grid("model.aggregate.1.window={ recent = 20 },\"all\"").unwrap(),
        axis("model.aggregate.1.window", &["{ recent = 20 }", "\"all\""])
    );
    assert_eq!(
        parse_grid(" train.sparse_lr = 0.01,0.03,0.1").unwrap(),
        axis("train.sparse_lr", &["0.01", "0.03", "0.1"])
    );
    assert_eq!(parse_grid("model.search.k=20,50").unwrap().short_key(), "k");
    assert_eq!(axis("model.aggregate.1", &["x"]).short_key(), "aggregate");
    for (arg, why) in [
        ("train.lr", "expected KEY=V1,V2"),
        ("=1,2", "empty key"),
        ("train..lr=1", "empty key"),
        ("train.lr=0.1,0.2,0.1", "`0.1` is listed twice"),
        ("train.lr=0.1,,0.2", "empty"),
    ] {
        let e = parse_grid(arg).unwrap_err().to_string();
        assert!(e.contains(arg) && e.contains(why), "{arg:?}: {e}");
    }
    let e = parse_axes(&strs(&["train.lr=1,2", "train.lr=3"]), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.lr") && e.contains("two --grid"), "{e}");
    let e = parse_axes(
        &strs(&["train.lr=1,2"]),
        &strs(&["train.seed=1", "train.lr = 3"]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("train.lr") && e.contains("--set"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Expanding the grid
// ---------------------------------------------------------------------------------------------

#[test]
fn grid_expands_to_the_cartesian_product_first_key_slowest() {
    let axes = vec![axis("a", &["1", "2"]), axis("b.c", &["x", "y", "z"])];
    assert_eq!(grid_size(&axes).unwrap(), 6);
    let t = trials(&axes, None).unwrap();
    let got: Vec<(String, usize, Vec<String>, Vec<String>)> = t
        .into_iter()
        .map(|t| (t.name, t.combination, t.values, t.overrides))
        .collect();
    let want = [
        ("trial-001", ["1", "x"]),
        ("trial-002", ["1", "y"]),
        ("trial-003", ["1", "z"]),
        ("trial-004", ["2", "x"]),
        ("trial-005", ["2", "y"]),
        ("trial-006", ["2", "z"]),
    ];
    assert_eq!(got.len(), want.len());
    for (i, ((name, c, values, overrides), (wn, wv))) in got.iter().zip(want).enumerate() {
        assert_eq!(name, wn);
        assert_eq!(*c, i);
        assert_eq!(values, &strs(&wv));
        assert_eq!(
            overrides,
            &vec![format!("a={}", wv[0]), format!("b.c={}", wv[1])]
        );
    }

    // Three axes, one of a single value: 2 × 1 × 2 = 4, the last axis fastest.
    let axes = vec![
        axis("p", &["[1, 2]", "[3]"]),
        axis("q", &["only"]),
        axis("r", &["0", "1"]),
    ];
    let combos: Vec<Vec<String>> = (0..grid_size(&axes).unwrap())
        .map(|i| combination(&axes, i))
        .collect();
    assert_eq!(
        combos,
        vec![
            strs(&["[1, 2]", "only", "0"]),
            strs(&["[1, 2]", "only", "1"]),
            strs(&["[3]", "only", "0"]),
            strs(&["[3]", "only", "1"]),
        ]
    );

    // No axis: one trial with the base config.
    let one = trials(&[], None).unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].overrides.is_empty());
    assert_eq!(one[0].name, "trial-001");

    // 10 × 10 × 10 = 1000 trials: names widen to four digits.
    let ten: Vec<&str> = vec!["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let axes = vec![axis("a", &ten), axis("b", &ten), axis("c", &ten)];
    let t = trials(&axes, None).unwrap();
    assert_eq!(t.len(), 1000);
    assert_eq!(t[0].name, "trial-0001");
    assert_eq!(t[999].name, "trial-1000");
    // Combination 527 is a=5, b=2, c=7.
    assert_eq!(t[527].values, strs(&["5", "2", "7"]));
}

#[test]
fn random_trials_are_distinct_seeded_and_uniform() {
    let s = sample_indices(100, 10, 7).unwrap();
    assert_eq!(s.len(), 10);
    assert!(
        s.windows(2).all(|w| w[0] < w[1]),
        "ascending, distinct: {s:?}"
    );
    assert!(s.iter().all(|&i| i < 100));
    assert_eq!(
        s,
        sample_indices(100, 10, 7).unwrap(),
        "same seed, same sample"
    );
    assert_ne!(
        s,
        sample_indices(100, 10, 8).unwrap(),
        "another seed, another sample"
    );
    // All of them: every index once.
    assert_eq!(sample_indices(5, 5, 1).unwrap(), vec![0, 1, 2, 3, 4]);
    assert!(sample_indices(5, 6, 1)
        .unwrap_err()
        .to_string()
        .contains("only 5 combinations"));
    assert!(sample_indices(5, 0, 1).is_err());
    // One of 4 over 4000 seeds: each index about 1000 times (binomial sd ≈ 27; 150 is > 5 sd).
    let mut counts = [0usize; 4];
    for seed in 0..4000 {
        counts[sample_indices(4, 1, seed).unwrap()[0]] += 1;
    }
    assert!(
        counts.iter().all(|&c| c.abs_diff(1000) < 150),
        "not uniform: {counts:?}"
    );
    // Two of 4: all 6 pairs come up.
    let pairs: HashSet<Vec<usize>> = (0..200)
        .map(|seed| sample_indices(4, 2, seed).unwrap())
        .collect();
    assert_eq!(pairs.len(), 6, "{pairs:?}");

    // Trials of a sample: the sampled combinations, in grid order, renumbered.
    let axes = vec![
        axis("a", &["1", "2", "3"]),
        axis("b", &["x", "y", "z", "w"]),
    ];
    let r = Some(Random { n: 5, seed: 3 });
    let t = trials(&axes, r).unwrap();
    assert_eq!(t, trials(&axes, r).unwrap());
    assert_eq!(t.len(), 5);
    let picked: Vec<usize> = t.iter().map(|t| t.combination).collect();
    assert_eq!(picked, sample_indices(12, 5, 3).unwrap());
    for (i, tr) in t.iter().enumerate() {
        assert_eq!(tr.name, format!("trial-{:03}", i + 1));
        assert_eq!(tr.values, combination(&axes, tr.combination));
    }
    assert!(trials(&axes, Some(Random { n: 13, seed: 0 })).is_err());
}

// ---------------------------------------------------------------------------------------------
// The spec of a sweep's directory
// ---------------------------------------------------------------------------------------------

fn spec(text: &str, grid: Vec<GridAxis>, random: Option<Random>) -> SweepSpec {
    SweepSpec::new(
        Path::new("cfg.toml"),
        text,
        Some(Path::new("data/x")),
        &strs(&["train.max_steps=5"]),
        grid,
        random,
    )
}

#[test]
fn a_different_spec_in_the_same_directory_is_refused_naming_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let grid = vec![axis("train.lr", &["0.1", "0.3"])];
    let base = spec("[data]\ndir = 'd'\n", grid.clone(), None);
    let t = trials(&base.grid, None).unwrap();
    assert!(!open_out(&out, &base, &t).unwrap(), "a new directory");
    assert!(out.join(sweep::SPEC_FILE).is_file());
    assert_eq!(
        std::fs::read_to_string(out.join(sweep::BASE_CONFIG)).unwrap(),
        "[data]\ndir = 'd'\n"
    );
    assert!(
        open_out(&out, &base, &t).unwrap(),
        "the same sweep continues"
    );
    // The same text under another path is the same sweep.
    let mut moved = base.clone();
    moved.config = "elsewhere/cfg.toml".into();
    assert!(open_out(&out, &moved, &t).unwrap());

    let refused = |now: &SweepSpec, needles: &[&str]| {
        let e = open_out(&out, now, &t).unwrap_err().to_string();
        assert!(e.contains(sweep::SPEC_FILE), "{e}");
        for n in needles {
            assert!(e.contains(n), "{n:?} not in: {e}");
        }
    };
    refused(
        &spec(
            "[data]\ndir = 'd'\n",
            vec![axis("train.lr", &["0.1", "0.5"])],
            None,
        ),
        &["--grid train.lr", "recorded values 0.1,0.3, now 0.1,0.5"],
    );
    refused(
        &spec("[data]\ndir = 'e'\n", grid.clone(), None),
        &["base config's text changed"],
    );
    refused(
        &spec(
            "[data]\ndir = 'd'\n",
            vec![axis("train.seed", &["0.1", "0.3"])],
            None,
        ),
        &["--grid keys", "[train.lr]", "[train.seed]"],
    );
    refused(
        &spec(
            "[data]\ndir = 'd'\n",
            grid.clone(),
            Some(Random { n: 1, seed: 2 }),
        ),
        &["the whole grid", "--random 1 --seed 2"],
    );
    let mut sets = base.clone();
    sets.sets.push("train.seed=3".into());
    refused(&sets, &["--set", "train.seed=3"]);
    let mut data = base.clone();
    data.data = None;
    refused(&data, &["--data", "data/x", "none"]);
    // The refused attempts changed nothing.
    assert!(open_out(&out, &base, &t).unwrap());

    // A directory with other things in it is not taken over.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let e = open_out(&other, &base, &t).unwrap_err().to_string();
    assert!(e.contains("not a sweep's directory"), "{e}");
    assert!(!other.join(sweep::SPEC_FILE).exists());
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn row(name: &str, v: &str, status: TrialStatus, auc: Option<f64>) -> TrialRow {
    TrialRow {
        trial: Trial {
            name: name.into(),
            combination: 0,
            values: vec![v.into()],
            overrides: vec![format!("train.lr={v}")],
        },
        dir: PathBuf::from(name),
        status,
        reason: (status == TrialStatus::Failed).then(|| "error:\tboom".to_string()),
        best_auc: auc,
        logloss: auc.map(|a| 1.0 - a),
        best_step: auc.map(|_| 4),
        steps: Some(6),
        wall_secs: Some(1.5),
    }
}

#[test]
fn the_table_ranks_finished_trials_by_auc_then_the_rest() {
    let rows = vec![
        row("trial-001", "0.1", TrialStatus::Done, Some(0.7)),
        row("trial-002", "0.2", TrialStatus::Failed, None),
        row("trial-003", "0.3", TrialStatus::Done, Some(0.8)),
        row("trial-004", "0.4", TrialStatus::Pending, None),
        row("trial-005", "0.5", TrialStatus::Done, Some(0.8)),
        row("trial-006", "0.6", TrialStatus::Done, None),
    ];
    // Ties keep trial order; done without AUC, failed, pending follow.
    assert_eq!(ranking(&rows), vec![2, 4, 0, 5, 1, 3]);
    assert_eq!(sweep::best(&rows).unwrap().trial.name, "trial-003");
    let tsv = format_tsv(&[axis("train.lr", &[])], &rows);
    let lines: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "rank",
            "trial",
            "train.lr",
            "best_valid_auc",
            "valid_logloss",
            "best_step",
            "steps",
            "wall_secs",
            "status"
        ]
    );
    assert_eq!(
        lines[1],
        [
            "1",
            "trial-003",
            "0.3",
            "0.8",
            &(1.0f64 - 0.8).to_string(),
            "4",
            "6",
            "1.5",
            "done"
        ]
    );
    let order: Vec<(&str, &str)> = lines[1..].iter().map(|l| (l[0], l[1])).collect();
    assert_eq!(
        order,
        [
            ("1", "trial-003"),
            ("2", "trial-005"),
            ("3", "trial-001"),
            ("-", "trial-006"),
            ("-", "trial-002"),
            ("-", "trial-004"),
        ]
    );
    // The reason's tab does not break the row.
    assert_eq!(lines[5].len(), 9);
    assert_eq!(lines[5][8], "failed: error: boom");
    assert_eq!(lines[6][3], "NA");
    assert_eq!(lines[6][8], "pending");
    // No finished trial with an AUC: no best.
    assert!(sweep::best(&rows[1..2]).is_none());
}

// ---------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------

/// A tiny DIN config (its data.dir points nowhere: the sweeps pass --data).
fn write_config(dir: &Path) -> PathBuf {
    let text = r#"
[data]
dir = "no/such/prepared"
max_len = 30

[model]
kind = "din"
[model.embedding]
item_dim = 8
cate_dim = 8
[[model.aggregate]]
hidden = [8]
[model.head]
hidden = [16]

[train]
epochs = 1
batch_size = 128
eval_batch_size = 512
lr = 0.003
sparse_lr = 0.01
seed = 5
out = "no/such/run"
"#;
    let path = dir.join("din.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// synth (150 users, 500 items) → prepare; returns (config, prepared dir).
fn tiny_setup(tmp: &Path) -> (PathBuf, PathBuf) {
    let events = synth(tmp, &tmp.join("events"), 150, 500);
    let data = tmp.join("prepared");
    prepare(tmp, &events, &data);
    (write_config(tmp), data)
}

/// The results table: header and rows, split on tabs.
fn read_tsv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text
        .lines()
        .map(|l| l.split('\t').map(String::from).collect::<Vec<_>>());
    let head = lines.next().unwrap();
    (head, lines.collect())
}

/// A run's validations as its metrics.jsonl holds them: (step, auc, logloss).
fn validations(run: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["valid"]["auc"].as_f64().unwrap(),
                v["valid"]["logloss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The stored config of a run's last checkpoint, as JSON.
fn stored_config(run: &Path) -> serde_json::Value {
    let m = read_metadata(&run.join("last.safetensors")).unwrap();
    serde_json::from_str(&m["config"]).unwrap()
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn sweep_runs_a_grid_in_parallel_ranks_it_and_resumes_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (config, data) = tiny_setup(t);
    let out = t.join("sweep");
    let args = [
        "sweep",
        "--config",
        s(&config),
        "--data",
        s(&data),
        "--grid",
        "train.lr=0.003,0.03",
        "--grid",
        "model.aggregate.0.hidden=[8],[4, 4]",
        "--set",
        "train.max_steps=12",
        "--set",
        "train.eval_every=3",
        "--set",
        "train.sparse_lr=0.1",
        "--set",
        "train.patience=0",
        "--jobs",
        "2",
        "--out",
        s(&out),
    ];
    let first = ok(t, &args);
    assert!(
        first.contains("running 4 of 4 trials, 2 at a time"),
        "{first}"
    );

    // Trials in grid order: train.lr slowest, the hidden layers fastest.
    let expected = [
        ("trial-001", 0.003, vec![8]),
        ("trial-002", 0.003, vec![4, 4]),
        ("trial-003", 0.03, vec![8]),
        ("trial-004", 0.03, vec![4, 4]),
    ];
    let (head, rows) = read_tsv(&out.join("results.tsv"));
    assert_eq!(
        head,
        strs(&[
            "rank",
            "trial",
            "train.lr",
            "model.aggregate.0.hidden",
            "best_valid_auc",
            "valid_logloss",
            "best_step",
            "steps",
            "wall_secs",
            "status"
        ])
    );
    assert_eq!(rows.len(), 4, "{rows:?}");
    let mut aucs = Vec::new();
    let mut best_steps = HashSet::new();
    for (name, lr, hidden) in &expected {
        let run = out.join(name);
        for f in [
            "best.safetensors",
            "last.safetensors",
            "metrics.jsonl",
            "trial.json",
            "train.log",
        ] {
            assert!(run.join(f).is_file(), "{name}: no {f}");
        }
        // The trial was trained with its overrides and the sweep's --sets.
        let cfg = stored_config(&run);
        assert_eq!(cfg["train"]["lr"].as_f64(), Some(*lr), "{name}");
        assert_eq!(
            cfg["model"]["aggregate"][0]["hidden"],
            serde_json::json!(hidden),
            "{name}"
        );
        assert_eq!(cfg["train"]["max_steps"].as_u64(), Some(12));
        // Its row: the values, and the best of the validations the run itself logged (steps 3,
        // 6, 9 and 12), taken independently here.
        let r = rows
            .iter()
            .find(|r| r[1] == *name)
            .expect("a row per trial");
        assert_eq!(r[2], lr.to_string());
        assert_eq!(
            r[3],
            format!(
                "[{}]",
                hidden
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
        let v = validations(&run);
        assert_eq!(
            v.iter().map(|x| x.0).collect::<Vec<_>>(),
            [3, 6, 9, 12],
            "{name}"
        );
        let best = v
            .iter()
            .fold(None::<(u64, f64, f64)>, |b, &x| match b {
                Some(b) if b.1 >= x.1 => Some(b),
                _ => Some(x),
            })
            .unwrap();
        assert_eq!(r[4].parse::<f64>().unwrap(), best.1, "{name}: AUC column");
        assert_eq!(
            r[5].parse::<f64>().unwrap(),
            best.2,
            "{name}: logloss column"
        );
        assert_eq!(r[6], best.0.to_string(), "{name}: best step");
        assert_eq!(r[7], "12", "{name}: steps");
        assert!(r[8].parse::<f64>().unwrap() > 0.0);
        assert_eq!(r[9], "done");
        aucs.push(best.1);
        best_steps.insert(best.0);
    }
    // Some trial peaked before its last validation and some at it (the lower learning rate
    // does not learn in 12 steps, the higher one does), so taking the first or the last
    // validation instead of the best would have failed above.
    assert!(
        best_steps.len() > 1,
        "every trial's best is at step {best_steps:?}"
    );
    // Ranked by AUC, highest first; the best named at the end.
    let col: Vec<f64> = rows.iter().map(|r| r[4].parse().unwrap()).collect();
    assert!(col.windows(2).all(|w| w[0] >= w[1]), "{col:?}");
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["1", "2", "3", "4"]
    );
    let top = aucs.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(col[0], top);
    assert!(
        first.contains(&format!("best: {} (valid AUC", rows[0][1])),
        "{first}"
    );
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    for (name, _, _) in &expected {
        assert!(svg.contains(name), "curves.svg has no line labelled {name}");
    }
    assert!(out.join("sweep.json").is_file());

    // Kill-like damage: trial-002 is gone; trial-003 looks interrupted (its record says
    // running, as a sweep killed while it trained leaves it).
    let t2_metrics = std::fs::read_to_string(out.join("trial-002/metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(out.join("trial-002")).unwrap();
    let rec3 = out.join("trial-003/trial.json");
    let text = std::fs::read_to_string(&rec3).unwrap();
    std::fs::write(&rec3, text.replace("\"done\"", "\"running\"")).unwrap();
    let t3_metrics = std::fs::read_to_string(out.join("trial-003/metrics.jsonl")).unwrap();
    let untouched: Vec<PathBuf> = ["trial-001", "trial-004"]
        .iter()
        .flat_map(|n| {
            [
                "last.safetensors",
                "metrics.jsonl",
                "trial.json",
                "train.log",
            ]
            .map(|f| out.join(n).join(f))
        })
        .collect();
    let before: Vec<SystemTime> = untouched.iter().map(|p| mtime(p)).collect();

    let second = ok(t, &args);
    assert!(
        second.contains("skipped 2 finished trials (trial-001, trial-004)"),
        "{second}"
    );
    assert!(second.contains("starting trial-002"), "{second}");
    assert!(second.contains("resuming trial-003"), "{second}");
    assert!(
        !second.contains("trial-001:") && !second.contains("trial-004:"),
        "{second}"
    );
    let after: Vec<SystemTime> = untouched.iter().map(|p| mtime(p)).collect();
    assert_eq!(before, after, "a finished trial was touched");
    // trial-002 trained again, to the same validations (training is deterministic).
    assert_eq!(
        std::fs::read_to_string(out.join("trial-002/metrics.jsonl")).unwrap(),
        t2_metrics
    );
    // trial-003 continued from its checkpoint (nothing left to train): a second attempt,
    // logged, its validations kept.
    let log3 = std::fs::read_to_string(out.join("trial-003/train.log")).unwrap();
    assert_eq!(
        log3.matches("# lifelong sweep, attempt").count(),
        2,
        "{log3}"
    );
    assert!(
        log3.contains("--resume") && log3.contains("resuming at"),
        "{log3}"
    );
    let r3 = sweep::read_record(&out.join("trial-003")).unwrap().unwrap();
    assert_eq!(
        (r3.status, r3.attempts, r3.resumed),
        (TrialStatus::Done, 2, true)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("trial-003/metrics.jsonl")).unwrap(),
        t3_metrics
    );
    // The table is whole again, with the same numbers.
    let (_, rows2) = read_tsv(&out.join("results.tsv"));
    assert_eq!(rows2.len(), 4);
    let key = |r: &Vec<String>| {
        (
            r[0].clone(),
            r[1].clone(),
            r[4].clone(),
            r[7].clone(),
            r[9].clone(),
        )
    };
    assert_eq!(
        rows2.iter().map(key).collect::<Vec<_>>(),
        rows.iter().map(key).collect::<Vec<_>>()
    );

    // Everything finished: a rerun trains nothing.
    let third = ok(t, &args);
    assert!(third.contains("skipped 4 finished trials"), "{third}");
    assert!(
        !third.contains("starting") && !third.contains("resuming"),
        "{third}"
    );

    // Another grid into the same directory is refused, naming the difference.
    let mut other = args.to_vec();
    other[6] = "train.lr=0.003,0.01";
    fails(t, &other, &["sweep.json", "--grid train.lr", "0.003,0.01"]);
    let mut other = args.to_vec();
    other[10] = "train.max_steps=13";
    fails(t, &other, &["--set", "train.max_steps=13"]);
}

#[test]
fn a_failing_trial_is_recorded_and_the_sweep_goes_on_and_all_failing_is_an_error() {
    if cfg!(feature = "cuda") {
        return; // `cuda` opens on a CUDA build: no trial fails.
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (config, data) = tiny_setup(t);
    let out = t.join("sweep");
    // The device is a valid config value, but this build cannot open CUDA: the second trial's
    // `train` fails when it starts.
    let o = ok(
        t,
        &[
            "sweep",
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--grid",
            "train.device=cpu,cuda",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.eval_every=2",
            "--out",
            s(&out),
        ],
    );
    assert!(o.contains("trial-002 failed"), "{o}");
    assert!(o.contains("1 of 2 trials failed"), "{o}");
    let (_, rows) = read_tsv(&out.join("results.tsv"));
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0][0].as_str(), rows[0][1].as_str()),
        ("1", "trial-001")
    );
    assert_eq!(rows[0][8], "done");
    assert_eq!(
        (rows[1][0].as_str(), rows[1][1].as_str()),
        ("-", "trial-002")
    );
    // The reason is the last line of its log: train's error, naming the device.
    let last = std::fs::read_to_string(out.join("trial-002/train.log"))
        .unwrap()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .to_string();
    assert!(
        last.starts_with("error:") && last.contains("cuda"),
        "{last}"
    );
    assert_eq!(
        rows[1][8],
        format!("failed: {} (exit status 2)", last.trim())
    );
    assert_eq!(rows[1][6], "NA", "no steps trained");

    // Every trial failing: status 2, naming the table.
    let out2 = t.join("sweep2");
    let o = lifelong(
        t,
        &[
            "sweep",
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--grid",
            "train.device=cuda,\"cuda:1\"",
            "--out",
            s(&out2),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("all 2 trials failed") && err.contains("results.tsv"),
        "{err}"
    );
    let (_, rows) = read_tsv(&out2.join("results.tsv"));
    assert!(
        rows.iter().all(|r| r[8].starts_with("failed: ")),
        "{rows:?}"
    );
}

#[test]
fn bad_trial_configs_are_refused_before_any_training() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let config = write_config(t);
    let data = t.join("prepared");
    // The dataset is checked too: none prepared yet.
    let out = t.join("sweep");
    let base = |grid: &'static str| {
        vec![
            "sweep".to_string(),
            "--config".into(),
            s(&config).into(),
            "--data".into(),
            s(&data).into(),
            "--grid".into(),
            grid.into(),
            "--out".into(),
            s(&out).into(),
        ]
    };
    let run = |args: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(t, &a, needles);
        assert!(!out.exists(), "a refused sweep created {}", out.display());
    };
    run(base("train.lr=0.01,0.1"), &["trial-001", "meta.json"]);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("meta.json"), "{}").unwrap();
    // A value of the wrong type in the second trial only.
    run(
        base("train.lr=0.01,abc"),
        &["trial-002", "train.lr=abc", "train.lr"],
    );
    // A misspelt key.
    run(base("train.lrr=0.01,0.1"), &["trial-001", "lrr"]);
    // A value that fails validation.
    run(base("data.max_len=30,0"), &["trial-002", "data.max_len"]);
    // Malformed grids.
    run(base("train.lr=[0.1,0.2"), &["--grid", "unclosed `[`"]);
    run(base("train.lr=0.1,0.1"), &["listed twice"]);
    let mut a = base("train.lr=0.1,0.2");
    a.extend(["--random".into(), "3".into()]);
    run(a, &["--random 3", "only 2 combinations"]);
    let mut a = base("train.lr=0.1,0.2");
    a.extend(["--jobs".into(), "0".into()]);
    run(a, &["--jobs 0"]);
}

#[test]
fn sweep_help_lists_its_options() {
    let tmp = tempfile::tempdir().unwrap();
    let top = ok(tmp.path(), &["--help"]);
    assert!(top.contains("sweep"), "{top}");
    let out = ok(tmp.path(), &["sweep", "--help"]);
    for f in [
        "--config", "--grid", "--set", "--random", "--seed", "--jobs", "--out", "--data",
        "--device",
    ] {
        assert!(out.contains(f), "sweep --help does not mention {f}:\n{out}");
    }
    // --grid is required; --seed needs --random: usage errors (status 2), not panics.
    let o = lifelong(tmp.path(), &["sweep", "--config", "c.toml", "--out", "o"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--grid"), "{}", stderr(&o));
    let o = lifelong(
        tmp.path(),
        &[
            "sweep", "--config", "c.toml", "--grid", "a=1", "--seed", "3", "--out", "o",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--random"), "{}", stderr(&o));
    assert!(!tmp.path().join("o").exists());
}
