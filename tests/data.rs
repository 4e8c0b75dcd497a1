//! The synthetic dataset and `st eval`: generation is deterministic (the committed sample in
//! tests/fixtures/synth is what `st data synth --n 4 --seed 1` writes), every row's answer agrees
//! with its ground-truth scene, the ground truth scores full reward against itself, and `st eval`
//! scores rows, skips bad ones and resumes.

mod common;

use st::data::Row;
use std::process::Command;

fn st() -> Command {
    Command::new(env!("CARGO_BIN_EXE_st"))
}

fn sample_dir() -> std::path::PathBuf {
    common::fixtures().join("synth")
}

fn rows(dir: &std::path::Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("data.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn generation_is_deterministic_and_matches_the_committed_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    let status = st().args(["data", "synth", "--n", "4", "--seed", "1", "--out"]).arg(&out).status().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(out.join("data.jsonl")).unwrap(), std::fs::read(sample_dir().join("data.jsonl")).unwrap());
    for i in 0..4 {
        let name = format!("images/{i:06}.png");
        let (a, b) =
            (image::open(out.join(&name)).unwrap().to_rgb8(), image::open(sample_dir().join(&name)).unwrap().to_rgb8());
        assert!(a == b, "{name}");
    }
    // Another seed, another dataset; an existing folder is refused.
    let other = st::data::synth::generate(4, 2);
    assert_ne!(
        serde_json::to_string(&other[0].1.rows).unwrap(),
        serde_json::to_string(&rows(&sample_dir())[..1]).unwrap()
    );
    let again = st().args(["data", "synth", "--n", "1", "--out"]).arg(&out).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn answers_agree_with_the_ground_truth_scenes() {
    let many: Vec<Row> = st::data::synth::generate(60, 5).into_iter().flat_map(|(_, s)| s.rows).collect();
    let mut categories = std::collections::BTreeSet::new();
    for row in many.iter().chain(rows(&sample_dir()).iter()) {
        categories.insert(row.category.clone());
        assert!(row.options.contains(&row.answer_option_text), "{row:?}");
        let q = row.full_question().unwrap();
        assert_eq!(st::scene::OptionSet::from_question(&q).answers(), row.options, "{q}");
        // The ground truth, written as a completion, earns full format, count, accuracy and a
        // spatial term of identical boxes.
        let gt = row.ground_truth.as_deref().unwrap();
        let scene = &gt[..gt.find("<answer>").unwrap()];
        let completion = format!(
            "<observe> shapes </observe>{scene}<think> look </think><answer> {} </answer>",
            row.answer_option_text
        );
        let r = st::reward::reward(&completion, gt, (400.0, 300.0), &Default::default(), &st::reward::ExactLabels);
        assert_eq!((r.format, r.count, r.accuracy), (1.0, 1.0, 1.0), "{row:?}");
        assert!(r.spatial > 0.99, "{r:?}");
        // Relations state the geometry: "left of" means a smaller box centre x.
        let g: serde_json::Value =
            serde_json::from_str(&scene["<scene>".len()..scene.len() - "</scene>".len()]).unwrap();
        for rel in g["relationships"].as_array().unwrap() {
            let centre = |id: &serde_json::Value| {
                let o = g["objects"].as_array().unwrap().iter().find(|o| &o["id"] == id).unwrap();
                let b: Vec<f64> = o["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
            };
            let (s, o) = (centre(&rel["subject"]), centre(&rel["object"]));
            match rel["predicate"].as_str().unwrap() {
                "left of" => assert!(s.0 < o.0),
                "right of" => assert!(s.0 > o.0),
                "above" => assert!(s.1 < o.1),
                "below" => assert!(s.1 > o.1),
                _ => {}
            }
        }
    }
    assert_eq!(categories.len(), 7, "{categories:?}");
}

#[test]
fn eval_scores_skips_bad_rows_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    std::fs::create_dir_all(tmp.path().join("images")).unwrap();
    for f in std::fs::read_dir(sample_dir().join("images")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join("images").join(f.file_name().unwrap())).unwrap();
    }
    let mut lines: Vec<String> =
        std::fs::read_to_string(sample_dir().join("data.jsonl")).unwrap().lines().map(String::from).collect();
    lines.insert(1, "{broken".into());
    lines.insert(2, lines[0].replace("images/000000.png", "images/missing.png"));
    std::fs::write(&data, lines.join("\n")).unwrap();
    let results = tmp.path().join("results.jsonl");
    let eval = |extra: &[&str]| {
        let out = st()
            .env("ST_CACHE_DIR", tmp.path().join("cache"))
            .args(["eval", "--max-pixels", "37632", "--max-new-tokens", "400", "--json", "--data"])
            .arg(&data)
            .arg("--output")
            .arg(&results)
            .args(extra)
            .arg("--model")
            .arg(common::model("tiny"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (first, log) = eval(&["--limit", "4"]);
    assert_eq!(first["rows"].as_u64().unwrap() + first["errors"].as_u64().unwrap(), 4);
    assert_eq!(first["errors"], 2);
    assert!(log.contains("row 1 skipped") && log.contains("missing.png"), "{log}");
    let (all, _) = eval(&[]);
    assert_eq!(all["rows"].as_u64().unwrap(), lines.len() as u64 - 2);
    // Resumed: every row once in the output.
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&results).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut idx: Vec<u64> = records.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    idx.sort_unstable();
    assert_eq!(idx, (0..lines.len() as u64).collect::<Vec<_>>());
    // Constrained: every answer valid; rewards reported with their components.
    assert_eq!(all["valid_rate"], 1.0);
    assert_eq!(all["reward"]["format"], 1.0);
    assert!(all["categories"].as_object().unwrap().len() >= 4);
}

#[test]
fn completions_built_from_ground_truth_are_valid_responses() {
    // Every synthetic row's built completion passes the runtime's own docs/FORMATS.md#the-response validator and
    // earns full format, count and accuracy against its ground truth.
    for (image, sample) in st::data::synth::generate(12, 5) {
        for row in &sample.rows {
            let c = st::data::completion::completion(row).unwrap();
            let (w, h) = (sample.image.width(), sample.image.height());
            let q = row.full_question().unwrap();
            let r = st::scene::parse_response(&c, &st::scene::Rules::new((w, h), &q));
            assert!(r.valid, "{image}: {c}\n{:?}", r.reasons);
            let gt = row.ground_truth.as_deref().unwrap();
            let s = st::reward::reward(&c, gt, (w as f64, h as f64), &Default::default(), &st::reward::ExactLabels);
            assert_eq!((s.format, s.count, s.accuracy), (1.0, 1.0, 1.0), "{c}");
        }
    }
    // A row with neither completion nor ground truth has none, and says why.
    let row: st::data::Row =
        serde_json::from_str(r#"{"images":["a.png"],"problem":"q? (A) x","answer_option_text":"(A) x"}"#).unwrap();
    assert!(st::data::completion::completion(&row).unwrap_err().contains("ground_truth"));
}
