//! `st data synth`: scenes of simple shapes (squares, rectangles, circles in six colours and
//! several sizes, later ones occluding earlier ones) with known boxes, and STVQA rows about them
//! for the categories that make sense on such images: relation (left/right/above/below), depth
//! (in front of, by occlusion), size, count, existence, distance and instance location. Each row
//! carries its ground-truth scene. Deterministic by seed.

use super::Row;
use crate::scene::{Relationship, SceneGraph, SceneObject};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut};
use imageproc::rect::Rect;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [245, 140, 30]),
];
const KINDS: [&str; 3] = ["square", "rectangle", "circle"];

/// A drawn shape.
#[derive(Debug, Clone)]
struct Shape {
    color: usize,
    kind: usize,
    bbox: [u32; 4],
}

impl Shape {
    fn name(&self) -> String {
        format!("{} {}", COLORS[self.color].0, KINDS[self.kind])
    }
    fn id(&self) -> String {
        format!("{}_{}.1", COLORS[self.color].0, KINDS[self.kind])
    }
    fn center(&self) -> (f64, f64) {
        let b = self.bbox;
        (f64::from(b[0] + b[2]) / 2.0, f64::from(b[1] + b[3]) / 2.0)
    }
    fn area(&self) -> f64 {
        f64::from((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))
    }
    fn overlaps(&self, o: &Shape) -> bool {
        let (a, b) = (self.bbox, o.bbox);
        a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
    }
}

/// One synthetic image and its rows.
pub struct Sample {
    pub image: RgbImage,
    pub rows: Vec<Row>,
}

fn scene_of(shapes: &[&Shape], rels: Vec<(String, &str, String)>) -> SceneGraph {
    SceneGraph {
        objects: shapes.iter().map(|s| SceneObject::new(s.id(), s.bbox.map(f64::from))).collect(),
        relationships: rels
            .into_iter()
            .map(|(s, p, o)| Relationship { subject: s, predicate: p.into(), object: o })
            .collect(),
    }
}

fn row(image: &str, question: String, options: &[String], correct: usize, category: &str, scene: SceneGraph) -> Row {
    let letters = ['A', 'B', 'C', 'D', 'E', 'F'];
    let opts: Vec<String> = options.iter().enumerate().map(|(i, o)| format!("({}) {o}", letters[i])).collect();
    let answer = opts[correct].clone();
    let scene_json = serde_json::json!({
        "objects": scene.objects.iter().map(|o| serde_json::json!({"id": o.id, "bbox": o.bbox.map(|v| v as i64)})).collect::<Vec<_>>(),
        "relationships": scene.relationships,
    });
    Row {
        images: vec![image.to_string()],
        problem: Some(format!("{question} {}", opts.join(" "))),
        question: Some(question),
        options: opts,
        ground_truth: Some(format!("<scene>{scene_json}</scene><answer>{answer}</answer>")),
        answer_option_text: answer,
        category: category.into(),
        completion: None,
    }
}

/// Draw one scene and ask up to three questions about it. `image` is the row's image path.
pub fn sample(rng: &mut ChaCha8Rng, image: &str) -> Sample {
    let (w, h) = *[(320u32, 240u32), (448, 336), (256, 256), (400, 300)].choose(rng).unwrap_or(&(320, 240));
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([236, 236, 230]));
    // Distinct (colour, kind) pairs so every shape has a unique name.
    let mut pairs: Vec<(usize, usize)> =
        (0..COLORS.len()).flat_map(|c| (0..KINDS.len()).map(move |k| (c, k))).collect();
    let n = rng.random_range(2..=5);
    let mut shapes = Vec::with_capacity(n);
    for _ in 0..n {
        let (color, kind) = pairs.swap_remove(rng.random_range(0..pairs.len()));
        let size = rng.random_range(w.min(h) / 8..=w.min(h) / 3);
        let (sw, sh) = if kind == 1 { (size, size * 3 / 5) } else { (size, size) };
        let x = rng.random_range(0..w - sw);
        let y = rng.random_range(0..h - sh);
        let shape = Shape { color, kind, bbox: [x, y, x + sw, y + sh] };
        let c = Rgb(COLORS[color].1);
        if kind == 2 {
            let r = sw as i32 / 2;
            draw_filled_circle_mut(&mut canvas, (x as i32 + r, y as i32 + r), r, c);
        } else {
            draw_filled_rect_mut(&mut canvas, Rect::at(x as i32, y as i32).of_size(sw, sh), c);
        }
        shapes.push(shape);
    }
    let mut rows = Vec::new();
    let mut categories = vec!["relation", "depth", "size", "count", "existence", "distance", "instance_location"];
    for _ in 0..3 {
        let cat = categories.swap_remove(rng.random_range(0..categories.len()));
        if let Some(r) = question(rng, &shapes, (w, h), cat, image) {
            rows.push(r);
        }
    }
    Sample { image: canvas, rows }
}

/// A question of `cat` about `shapes`, when the scene has a clear answer for it.
fn question(rng: &mut ChaCha8Rng, shapes: &[Shape], (w, h): (u32, u32), cat: &str, image: &str) -> Option<Row> {
    let pick2 = |rng: &mut ChaCha8Rng| {
        let i = rng.random_range(0..shapes.len());
        let j = (i + rng.random_range(1..shapes.len())) % shapes.len();
        (&shapes[i], &shapes[j])
    };
    let s = |v: &str| v.to_string();
    match cat {
        "relation" => {
            let (a, b) = pick2(rng);
            let ((ax, ay), (bx, by)) = (a.center(), b.center());
            let horizontal = (ax - bx).abs() >= (ay - by).abs();
            let (gap, opts, correct, pred) = if horizontal {
                (
                    (ax - bx).abs(),
                    [s("left"), s("right")],
                    usize::from(ax > bx),
                    if ax < bx { "left of" } else { "right of" },
                )
            } else {
                (
                    (ay - by).abs(),
                    [s("above"), s("below")],
                    usize::from(ay > by),
                    if ay < by { "above" } else { "below" },
                )
            };
            (gap > 20.0).then(|| {
                let q = format!("Where is the {} relative to the {}?", a.name(), b.name());
                row(image, q, &opts, correct, "relation", scene_of(&[a, b], vec![(a.id(), pred, b.id())]))
            })
        }
        "depth" => {
            // Later shapes are drawn over earlier ones.
            let (i, j) = (0..shapes.len())
                .flat_map(|i| (i + 1..shapes.len()).map(move |j| (i, j)))
                .find(|&(i, j)| shapes[i].overlaps(&shapes[j]))?;
            let (back, front) = (&shapes[i], &shapes[j]);
            let flip = rng.random_bool(0.5);
            let (first, second) = if flip { (front, back) } else { (back, front) };
            let opts = [format!("the {}", first.name()), format!("the {}", second.name())];
            let q = format!("Which object is in front, the {} or the {}?", first.name(), second.name());
            Some(row(
                image,
                q,
                &opts,
                usize::from(!flip),
                "depth",
                scene_of(&[back, front], vec![(front.id(), "in front of", back.id())]),
            ))
        }
        "size" => {
            let (a, b) = pick2(rng);
            let ratio = a.area().max(b.area()) / a.area().min(b.area());
            (ratio > 1.5).then(|| {
                let opts = [format!("the {}", a.name()), format!("the {}", b.name())];
                let q = format!("Which is larger, the {} or the {}?", a.name(), b.name());
                let (big, small) = if a.area() > b.area() { (a, b) } else { (b, a) };
                row(
                    image,
                    q,
                    &opts,
                    usize::from(b.area() > a.area()),
                    "size",
                    scene_of(&[a, b], vec![(big.id(), "larger than", small.id())]),
                )
            })
        }
        "count" => {
            let kind = rng.random_range(0..KINDS.len());
            let found: Vec<&Shape> = shapes.iter().filter(|s| s.kind == kind).collect();
            let opts: Vec<String> = (0..4).map(|n| n.to_string()).collect();
            let q = format!("How many {}s are there in the image?", KINDS[kind]);
            (found.len() < 4).then(|| row(image, q, &opts, found.len(), "count", scene_of(&found, vec![])))
        }
        "existence" => {
            let present = rng.random_bool(0.5);
            let (color, kind) = if present {
                let s = shapes.choose(rng)?;
                (s.color, s.kind)
            } else {
                let absent: Vec<(usize, usize)> = (0..COLORS.len())
                    .flat_map(|c| (0..KINDS.len()).map(move |k| (c, k)))
                    .filter(|&(c, k)| !shapes.iter().any(|s| s.color == c && s.kind == k))
                    .collect();
                *absent.choose(rng)?
            };
            let q = format!("Is there a {} {} in the image?", COLORS[color].0, KINDS[kind]);
            let found: Vec<&Shape> = shapes.iter().filter(|s| s.color == color && s.kind == kind).collect();
            Some(row(image, q, &[s("yes"), s("no")], usize::from(!present), "existence", scene_of(&found, vec![])))
        }
        "distance" if shapes.len() >= 3 => {
            let anchor = shapes.choose(rng)?;
            let others: Vec<&Shape> = shapes.iter().filter(|s| s.id() != anchor.id()).collect();
            let (p, q2) = (others[0], others[1]);
            let d = |s: &Shape| {
                let ((ax, ay), (sx, sy)) = (anchor.center(), s.center());
                ((ax - sx).powi(2) + (ay - sy).powi(2)).sqrt()
            };
            ((d(p) - d(q2)).abs() > 25.0).then(|| {
                let opts = [format!("the {}", p.name()), format!("the {}", q2.name())];
                let q = format!("Which object is closer to the {}?", anchor.name());
                let near = if d(p) < d(q2) { p } else { q2 };
                row(
                    image,
                    q,
                    &opts,
                    usize::from(d(q2) < d(p)),
                    "distance",
                    scene_of(&[anchor, p, q2], vec![(near.id(), "closer to", anchor.id())]),
                )
            })
        }
        "instance_location" => {
            let a = shapes.choose(rng)?;
            let (x, y) = a.center();
            let (fx, fy) = (x / f64::from(w), y / f64::from(h));
            let clear = (fx - 0.5).abs() > 0.1 && (fy - 0.5).abs() > 0.1;
            let quadrant = usize::from(fx > 0.5) + 2 * usize::from(fy > 0.5);
            let opts = [s("top left"), s("top right"), s("bottom left"), s("bottom right")];
            let q = format!("Where is the {} in the image?", a.name());
            clear.then(|| row(image, q, &opts, quadrant, "instance_location", scene_of(&[a], vec![])))
        }
        _ => None,
    }
}

/// Generate `n` images (and their rows) from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<(String, Sample)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let name = format!("images/{i:06}.png");
            let s = sample(&mut rng, &name);
            (name, s)
        })
        .collect()
}
