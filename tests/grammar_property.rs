//! The grammar's promise, tested as a property: the tiny random-weight model, constrained,
//! over random seeds, temperatures 0.7–2.0, several image sizes (non-square, very small) and
//! option sets (none, 2, 4, 6): every output parses and satisfies every rule of docs/FORMATS.md#the-response, as the
//! standalone validator (`st::scene::parse_response`) sees it. The same runs unconstrained
//! report their valid rate (random weights: near 0).

mod common;

use rand::{Rng, SeedableRng};
use st::decode::SamplingParams;
use st::decode::grammar::Bounds;
use st::engine::{Engine, GenerateOptions, SessionOptions};
use st::scene::{Rules, parse_response};

const RUNS: usize = 1000;

fn questions() -> [&'static str; 4] {
    [
        "What is next to the cat?",
        "Is the cat left of the table? (A) yes (B) no",
        "Which is closest? (A) the cat (B) the table (C) the wall (D) the floor",
        "Where is it? (A) left (B) right (C) above (D) below (E) in front (F) behind",
    ]
}

fn engine(name: &str, dir: &std::path::Path) -> Engine {
    st_export::export(&common::model(name), dir, &Default::default()).unwrap();
    let mut e = Engine::load(dir, &SessionOptions { threads: Some(1), ..Default::default() }).unwrap();
    e.preprocessor.options.pixels.max_pixels = 37632;
    e
}

#[test]
fn every_constrained_output_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let images = ["chelsea.png", "thin_29x1000.png", "tiny_10x7.png", "tiny_1x1.png", "astronaut.png"];
    let bounds = Bounds {
        observe_tokens: 8,
        think_tokens: 8,
        answer_tokens: 6,
        max_objects: 3,
        max_relationships: 3,
        ..Default::default()
    };
    let workers: Vec<_> = ["tiny", "tiny-b"]
        .into_iter()
        .enumerate()
        .map(|(w, name)| {
            let mut e = engine(name, &tmp.path().join(name));
            let bounds = bounds.clone();
            std::thread::spawn(move || {
                let frames: Vec<_> = images.iter().map(|i| e.encode_image(&common::image(i)).unwrap()).collect();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w as u64);
                let (mut valid, mut free_valid, mut free_runs, mut objects) = (0, 0, 0, 0);
                for run in 0..RUNS / 2 {
                    let frame = &frames[run % frames.len()];
                    let q = questions()[rng.random_range(0..4)];
                    let sampling = SamplingParams {
                        temperature: Some(rng.random_range(0.7..=2.0)),
                        seed: rng.random(),
                        ..Default::default()
                    };
                    let opts = GenerateOptions {
                        max_new_tokens: Some(1024),
                        sampling,
                        bounds: bounds.clone(),
                        ..Default::default()
                    };
                    let a = e.ask(frame, q, &opts).unwrap();
                    let again = parse_response(&a.raw, &Rules::new(frame.image.original_size, q));
                    assert!(again.valid, "{name} run {run} {q:?}: {:?}\n{}", again.reasons, a.raw);
                    assert_eq!(again, a.response);
                    assert_eq!(a.stop, st::engine::StopReason::EndOfTurn);
                    objects += again.scene.map_or(0, |s| s.objects.len());
                    valid += 1;
                    if run % 10 == 0 {
                        let free = GenerateOptions { grammar: false, max_new_tokens: Some(128), ..opts };
                        let b = e.ask(frame, q, &free).unwrap();
                        free_runs += 1;
                        free_valid += usize::from(b.response.valid);
                    }
                }
                (valid, objects, free_valid, free_runs)
            })
        })
        .collect();
    let (mut valid, mut objects, mut free_valid, mut free_runs) = (0, 0, 0, 0);
    for w in workers {
        let (v, o, fv, fr) = w.join().unwrap();
        (valid, objects, free_valid, free_runs) = (valid + v, objects + o, free_valid + fv, free_runs + fr);
    }
    assert_eq!(valid, RUNS);
    assert!(objects > 0, "the runs should declare some objects");
    println!("constrained: {valid}/{RUNS} valid, {objects} objects; unconstrained: {free_valid}/{free_runs} valid");
}

#[test]
fn short_token_limits_still_end_in_a_valid_answer() {
    // Default bounds, small max_new_tokens: the matcher switches to the shortest completion
    // when the tokens left come down to its reserve.
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", &tmp.path().join("tiny"));
    let frame = e.encode_image(&common::image("chelsea.png")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for run in 0..60 {
        let q = questions()[run % 4];
        let max_new_tokens = [120, 250, 400, 700][run % 4];
        let sampling =
            SamplingParams { temperature: Some(rng.random_range(0.7..=2.0)), seed: rng.random(), ..Default::default() };
        let a = e
            .ask(&frame, q, &GenerateOptions { max_new_tokens: Some(max_new_tokens), sampling, ..Default::default() })
            .unwrap();
        assert!(a.response.valid, "run {run} (limit {max_new_tokens}): {:?}\n{}", a.response.reasons, a.raw);
        assert!(a.token_ids.len() <= max_new_tokens);
    }
}
