//! The dense reward (docs/FORMATS.md#the-dense-reward) on hand-derived cases: known CIoU values, Hungarian assignments
//! where labels and geometry pull apart, counts with and without relations, every gating and
//! edge case, both image-size spellings. Agreement with an independent Python implementation on
//! generated completions is in tests/reward_parity.rs.

use st::reward::{ExactLabels, Weights, ciou, format_check, image_size_from_prompt, normalised_label, reward};

fn completion(scene: &str, answer: &str) -> String {
    format!("<observe> x </observe>\n<scene>{scene}</scene>\n<think> y </think>\n<answer>{answer}</answer>")
}

fn truth(scene: &str, answer: &str) -> String {
    format!("<scene>{scene}</scene><answer>{answer}</answer>")
}

fn r(c: &str, g: &str) -> st::reward::Reward {
    reward(c, g, (100.0, 100.0), &Weights::default(), &ExactLabels)
}

#[test]
fn ciou_known_values() {
    // Identical boxes: IoU = A / (A + 1e-7), no distance or aspect penalty.
    let a = [0.0, 0.0, 2.0, 2.0];
    assert!((ciou(a, a) - 4.0 / (4.0 + 1e-7)).abs() < 1e-15);
    // Disjoint unit squares two apart: −ρ²/c² = −4 / (10 + 1e-7).
    assert!((ciou([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]) + 4.0 / (10.0 + 1e-7)).abs() < 1e-15);
    // Transposed 1×2 and 2×1 boxes: IoU 1/3, ρ² = 0.5, c² = 8, v = 4/π²·atan(3/4)²
    // (atan 2 − atan ½ = atan ¾), α = v / (2/3 + v).
    let v = 4.0 / std::f64::consts::PI.powi(2) * 0.75f64.atan().powi(2);
    let want = 1.0 / 3.0 - (0.5 / 8.0 + v / (2.0 / 3.0 + v) * v);
    assert!((ciou([0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 2.0, 1.0]) - want).abs() < 1e-6);
}

#[test]
fn format_count_accuracy_and_gating() {
    let s2 = r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 10, 10]}, {"id": "plate.1", "bbox": [50, 50, 60, 60]}], "relationships": []}"#;
    let g = truth(s2, "(A) yes");
    // Perfect: F = C = A = 1; S = CIoU′ of identical boxes, whose normalised area 0.01 meets the
    // union's 1e-7: (0.01 / (0.01 + 1e-7) + 1) / 2.
    let p = r(&completion(s2, " (A) Yes "), &g);
    assert_eq!((p.format, p.count, p.accuracy), (1.0, 1.0, 1.0));
    let s = (0.01 / (0.01 + 1e-7) + 1.0) / 2.0;
    assert!((p.spatial - s).abs() < 1e-12 && (p.overall - (0.8 + 0.2 * s)).abs() < 1e-12, "{p:?}");
    // Wrong answer: no spatial term; R = 0.1 + 0.2·C.
    let p = r(&completion(s2, "(B) no"), &g);
    assert_eq!((p.accuracy, p.spatial), (0.0, 0.0));
    assert!((p.overall - 0.3).abs() < 1e-12);
    // Broken format → everything 0 (a tag twice; a bad id; an extra object key; 3 numbers).
    for bad in [
        completion(s2, "(A) yes") + "<think></think>",
        completion(r#"{"objects": [{"id": "cup", "bbox": [0, 0, 1, 1]}]}"#, "(A) yes"),
        completion(r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 1, 1], "x": 1}]}"#, "(A) yes"),
        completion(r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 1]}]}"#, "(A) yes"),
        completion(
            r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 1, 1]}, {"id": "cup.1", "bbox": [0, 0, 1, 1]}]}"#,
            "(A) yes",
        ),
        completion("not json", "(A) yes"),
    ] {
        assert_eq!(r(&bad, &g), st::reward::Reward::default(), "{bad}");
    }
    // Order is not checked by F; floats are numbers; missing lists are empty.
    let swapped = format!("<scene>{s2}</scene><observe>x</observe><answer>(A) yes</answer><think>y</think>");
    assert_eq!(r(&swapped, &g).format, 1.0);
    assert!(format_check(&completion(r#"{"objects": [{"id": "a.1", "bbox": [0.5, 0, 1, 1]}]}"#, "x")).is_some());
    // Count: one of two objects → 0.5; with GT relations, 0.7·obj + 0.3·rel.
    let one = r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 10, 10]}]}"#;
    assert!((r(&completion(one, "(B) no"), &g).count - 0.5).abs() < 1e-12);
    let rel = r#"{"subject": "cup.1", "predicate": "left of", "object": "plate.1"}"#;
    let g_rel = truth(&s2.replace(r#""relationships": []"#, &format!(r#""relationships": [{rel}, {rel}]"#)), "(A) yes");
    let p = r(
        &completion(&s2.replace(r#""relationships": []"#, &format!(r#""relationships": [{rel}]"#)), "(B) no"),
        &g_rel,
    );
    assert!((p.count - (0.7 * 1.0 + 0.3 * 0.5)).abs() < 1e-12);
    // Too many predictions: max(0, 1 − |5 − 2| / 2) = 0.
    let five = format!(
        r#"{{"objects": [{}]}}"#,
        (1..=5).map(|i| format!(r#"{{"id": "a.{i}", "bbox": [0, 0, 1, 1]}}"#)).collect::<Vec<_>>().join(", ")
    );
    assert_eq!(r(&completion(&five, "(B) no"), &g).count, 0.0);
}

#[test]
fn hungarian_follows_labels_before_geometry() {
    // The predicted cup sits where the GT plate is and vice versa: labels cost 2 each, so the
    // assignment pairs same labels (each CIoU′ low) rather than same places.
    let gt = r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 10, 10]}, {"id": "plate.1", "bbox": [50, 50, 60, 60]}]}"#;
    let pred = r#"{"objects": [{"id": "plate.1", "bbox": [0, 0, 10, 10]}, {"id": "cup.1", "bbox": [50, 50, 60, 60]}]}"#;
    let p = r(&completion(pred, "(A) yes"), &truth(gt, "(A) yes"));
    let n = |b: [f64; 4]| b.map(|v| v / 100.0);
    let c = (ciou(n([50.0, 50.0, 60.0, 60.0]), n([0.0, 0.0, 10.0, 10.0])) + 1.0) / 2.0;
    assert!((p.spatial - c).abs() < 1e-12, "{} vs {c}", p.spatial);
    // Fewer predictions than GT objects: the unmatched GT object counts 0.
    let lone = r#"{"objects": [{"id": "cup.1", "bbox": [0, 0, 10, 10]}]}"#;
    let p = r(&completion(lone, "(A) yes"), &truth(gt, "(A) yes"));
    let same = (ciou(n([0.0, 0.0, 10.0, 10.0]), n([0.0, 0.0, 10.0, 10.0])) + 1.0) / 2.0;
    assert!((p.spatial - same / 2.0).abs() < 1e-12);
    // Normalised labels: `Coffee_Cup-big.2` → "coffee cup big".
    assert_eq!(normalised_label("Coffee_Cup-big.2"), "coffee cup big");
}

#[test]
fn spatial_edge_cases_and_image_sizes() {
    let empty = r#"{"objects": [], "relationships": []}"#;
    let obj = r#"{"objects": [{"id": "a.1", "bbox": [0, 0, 1, 1]}]}"#;
    // No GT objects, no GT relations: S = 1 with no predictions, else 0.
    assert_eq!(r(&completion(empty, "(A) x"), &truth(empty, "(A) x")).spatial, 1.0);
    assert_eq!(r(&completion(obj, "(A) x"), &truth(empty, "(A) x")).spatial, 0.0);
    // No GT objects but GT relations: S = 1.
    let rels = r#"{"objects": [], "relationships": [{"subject": "a.1", "predicate": "on", "object": "b.1"}]}"#;
    assert_eq!(r(&completion(obj, "(A) x"), &truth(rels, "(A) x")).spatial, 1.0);
    // Both spellings of the image size.
    assert_eq!(image_size_from_prompt("... Image size: (640 x 480)\n\nQ"), Some((640.0, 480.0)));
    assert_eq!(image_size_from_prompt("... Image size: 451 x 300\n\nQ"), Some((451.0, 300.0)));
    assert_eq!(image_size_from_prompt("no size here"), None);
}
