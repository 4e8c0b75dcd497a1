//! Parsing responses (docs/FORMATS.md#the-response): every syntactic and semantic rule, one table row each, with
//! what must parse and what must be reported; option sets from questions; drawing boxes.

use st::scene::{Choice, OptionSet, Rules, SceneGraph, SceneObject, draw_scene, is_valid_id, parse_response};

const SCENE: &str = r#"{"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38, 278]}],
 "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]}"#;

fn response(scene: &str, answer: &str) -> String {
    format!(
        "<observe> a man and a bike </observe>\n<scene>\n{scene}\n</scene>\n<think> he is behind it </think>\n<answer> {answer} </answer>"
    )
}

fn rules() -> Rules {
    Rules::new((640, 600), "Where is the man relative to the bike? (A) behind (B) in front of")
}

#[test]
fn the_spec_example_is_valid_and_fully_parsed() {
    let r = parse_response(&response(SCENE, "(A) behind"), &rules());
    assert!(r.valid, "{:?}", r.reasons);
    assert_eq!(r.observe.as_deref(), Some("a man and a bike"));
    assert_eq!(r.think.as_deref(), Some("he is behind it"));
    assert_eq!(r.answer, Some(Choice { letter: Some('A'), text: "behind".into() }));
    let g = r.scene.unwrap();
    assert_eq!(g.objects[0], SceneObject::new("bike.1", [0.0, 272.0, 310.0, 551.0]));
    assert_eq!(g.objects[1].label, "man");
    assert_eq!(g.relationships[0].predicate, "behind");
    // Free-text questions take any answer.
    let free = Rules::new((640, 600), "What is behind the bike?");
    assert!(parse_response(&response(SCENE, "a man"), &free).valid);
}

#[test]
fn each_rule_is_reported() {
    let bike = r#"{"id": "bike.1", "bbox": [0, 272, 310, 551]}"#;
    let scene = |objects: &str, rels: &str| format!(r#"{{"objects": [{objects}], "relationships": [{rels}]}}"#);
    let rel = |s: &str, o: &str| format!(r#"{{"subject": "{s}", "predicate": "near", "object": "{o}"}}"#);
    let cases: Vec<(String, &str)> = vec![
        (response("not json", "(A) behind"), "not JSON"),
        (response("[1, 2]", "(A) behind"), "not a JSON object"),
        (response(r#"{"objects": {}}"#, "(A) behind"), "`objects` is not a list"),
        (
            response(&scene(r#"{"id": "bike.1", "bbox": [0, 1, 2, 3], "score": 1}"#, ""), "(A) behind"),
            "exactly `id` and `bbox`",
        ),
        (response(&scene(r#"{"id": "bike", "bbox": [0, 1, 2, 3]}"#, ""), "(A) behind"), "does not match label.N"),
        (response(&scene(r#"{"id": "bike.1", "bbox": [0, 1, 2]}"#, ""), "(A) behind"), "not a list of 4 numbers"),
        (response(&scene(&format!("{bike}, {bike}"), ""), "(A) behind"), "declared twice"),
        (response(&scene(r#"{"id": "bike.1", "bbox": [0.5, 1, 2, 3]}"#, ""), "(A) behind"), "not integers"),
        (response(&scene(r#"{"id": "bike.1", "bbox": [5, 1, 5, 3]}"#, ""), "(A) behind"), "x1 < x2"),
        (response(&scene(r#"{"id": "bike.1", "bbox": [0, 1, 641, 3]}"#, ""), "(A) behind"), "inside 640x600"),
        (response(&scene(r#"{"id": "bike.1", "bbox": [0, 9, 5, 3]}"#, ""), "(A) behind"), "y1 < y2"),
        (response(&scene(bike, &rel("man.1", "bike.1")), "(A) behind"), "not a declared object"),
        (response(&scene(bike, &rel("man", "bike.1")), "(A) behind"), "does not match label.N"),
        (response(&scene(bike, r#"{"subject": "bike.1", "object": "bike.1"}"#), "(A) behind"), "needs string"),
        (response(SCENE, "(C) above"), "not offered"),
        (response(SCENE, "(A) in front of"), "the answer says"),
        (response(SCENE, "behind"), "names no option letter"),
        (response(SCENE, ""), "no option letter"),
        (response(SCENE, "(A) behind").replace("<think>", ""), "<think>…</think> occurs 0/1 times"),
        (response(SCENE, "(A) behind") + "<answer> (B) </answer>", "<answer>…</answer> occurs 2/2 times"),
        (
            format!("<scene>{SCENE}</scene><observe> x </observe><think> y </think><answer> (A) behind </answer>"),
            "not in the order",
        ),
    ];
    for (text, reason) in cases {
        let r = parse_response(&text, &rules());
        assert!(!r.valid, "accepted: {text}");
        assert!(r.reasons.iter().any(|x| x.contains(reason)), "{reason:?} not in {:?} for {text}", r.reasons);
    }
}

#[test]
fn what_parsed_is_kept_when_rules_fail() {
    let text = response(
        r#"{"objects": [{"id": "cup.1", "bbox": [10, 10, 5000, 20]}], "relationships": []}"#,
        "(B) in front of",
    );
    let r = parse_response(&text, &rules());
    assert!(!r.valid);
    assert_eq!(r.scene.unwrap().objects[0].id, "cup.1");
    assert_eq!(r.answer.unwrap().letter, Some('B'));
    // Nothing at all.
    let r = parse_response("", &rules());
    assert!(!r.valid && r.scene.is_none() && r.answer.is_none() && r.reasons.len() == 4);
    // Missing lists are empty lists (the reward's reading, docs/FORMATS.md#the-dense-reward).
    let mut reasons = Vec::new();
    assert_eq!(SceneGraph::parse("{}", &mut reasons), Some(SceneGraph::default()));
    assert!(reasons.is_empty());
}

#[test]
fn ids_options_and_choices() {
    for (id, ok) in [
        ("cup.1", true),
        ("a_b.10", true),
        ("Cup.0", true),
        ("cup", false),
        ("cup.", false),
        (".1", false),
        ("cup.1a", false),
        ("cup-x.1", false),
        ("cup.1.2", false),
        ("tasse.１", false),
        ("cup 1.1", false),
    ] {
        assert_eq!(is_valid_id(id), ok, "{id}");
    }
    let o = OptionSet::from_question("Which is closer?\n(A) the red cup, (B) the plate;\n(C) neither");
    assert_eq!(o.answers(), ["(A) the red cup", "(B) the plate", "(C) neither"]);
    assert_eq!(OptionSet::from_question("Options: (A) yes (B) no").answers(), ["(A) yes", "(B) no"]);
    // A lone "(A)" or letters out of sequence are not options.
    assert!(OptionSet::from_question("Is (A) a letter?").is_empty());
    assert_eq!(OptionSet::from_question("(A) x (C) y (B) z").answers(), ["(A) x (C) y", "(B) z"]);
    assert_eq!(st::scene::parse_choice(" (B) no "), Choice { letter: Some('B'), text: "no".into() });
    assert_eq!(st::scene::parse_choice("C) maybe"), Choice { letter: Some('C'), text: "maybe".into() });
    assert_eq!(st::scene::parse_choice("(b) lower"), Choice { letter: None, text: "(b) lower".into() });
}

#[test]
fn boxes_are_drawn_inside_the_image() {
    let mut img = image::RgbImage::from_pixel(120, 80, image::Rgb([0, 0, 0]));
    let scene = SceneGraph {
        objects: vec![
            SceneObject::new("cup.1", [10.0, 30.0, 60.0, 70.0]),
            SceneObject::new("far.1", [500.0, 500.0, 900.0, 900.0]),
            SceneObject::new("nan.1", [f64::NAN, 0.0, 5.0, 5.0]),
        ],
        relationships: vec![],
    };
    draw_scene(&mut img, &scene);
    // The box's edges are coloured, its inside is not.
    assert_ne!(img.get_pixel(10, 50), &image::Rgb([0, 0, 0]));
    assert_ne!(img.get_pixel(60, 50), &image::Rgb([0, 0, 0]));
    assert_eq!(img.get_pixel(35, 55), &image::Rgb([0, 0, 0]));
    // The label sits above the box.
    assert!((0..120).any(|x| img.get_pixel(x, 20) != &image::Rgb([0, 0, 0])));
}
