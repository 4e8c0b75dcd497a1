//! A model's response text → the typed answer (sections, scene graph, option), the dense reward
//! against a ground truth, and the scene drawn on an image: never a panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st::reward::score;
use st::scene::{Rules, draw_scene, parse_response};

fuzz_target!(|data: &[u8]| {
    // [size, completion, question, ground truth]
    let p = st_fuzz::parts(data, 4);
    let size = (u32::from(st_fuzz::u16_at(p[0], 0)), u32::from(st_fuzz::u16_at(p[0], 2)));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (completion, question, truth) = (text(p[1]), text(p[2]), text(p[3]));
    let r = parse_response(&completion, &Rules::new(size, &question));
    if let Some(scene) = &r.scene {
        let mut canvas = image::RgbImage::new(48, 32);
        draw_scene(&mut canvas, scene);
    }
    for sparse in [false, true] {
        let s = score(&completion, &truth, size, &question, sparse);
        assert!(s.reward.is_finite() && s.components.iter().all(|c| c.is_finite()), "reward {s:?} is not finite");
    }
    let _ = st::reward::format_check(&completion);
});
