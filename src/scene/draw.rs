//! Draw a scene graph's boxes and labels on the image (imageproc, with the Hack font embedded
//! from `epaint_default_fonts`).

use super::graph::SceneGraph;
use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;

const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
];

/// Draw each object's box (2 px, clamped to the image) and its id above it. Boxes that fall
/// outside the image are skipped.
pub fn draw_scene(image: &mut RgbImage, scene: &SceneGraph) {
    let Ok(font) = FontRef::try_from_slice(epaint_default_fonts::HACK_REGULAR) else { return };
    let (w, h) = (image.width() as f64, image.height() as f64);
    let scale = PxScale::from((h.min(w) / 30.0).clamp(11.0, 32.0) as f32);
    for (i, o) in scene.objects.iter().enumerate() {
        let color = Rgb(PALETTE[i % PALETTE.len()]);
        let [x1, y1, x2, y2] = o.bbox.map(|v| if v.is_finite() { v } else { 0.0 });
        let (x1, x2) = (x1.clamp(0.0, w - 1.0), x2.clamp(0.0, w - 1.0));
        let (y1, y2) = (y1.clamp(0.0, h - 1.0), y2.clamp(0.0, h - 1.0));
        if x2 <= x1 || y2 <= y1 {
            continue;
        }
        let (bw, bh) = ((x2 - x1) as u32 + 1, (y2 - y1) as u32 + 1);
        draw_hollow_rect_mut(image, Rect::at(x1 as i32, y1 as i32).of_size(bw, bh), color);
        if bw > 2 && bh > 2 {
            draw_hollow_rect_mut(image, Rect::at(x1 as i32 + 1, y1 as i32 + 1).of_size(bw - 2, bh - 2), color);
        }
        let (tw, th) = text_size(scale, &font, &o.id);
        let ty = if y1 as u32 >= th + 2 { y1 as i32 - th as i32 - 2 } else { y1 as i32 + 2 };
        draw_filled_rect_mut(image, Rect::at(x1 as i32, ty).of_size(tw + 4, th + 2), color);
        draw_text_mut(image, Rgb([255, 255, 255]), x1 as i32 + 2, ty, scale, &font, &o.id);
    }
}
