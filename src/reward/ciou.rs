//! Complete IoU exactly as docs/FORMATS.md#the-dense-reward writes it (the constants and the order of operations are the
//! training reward's).

/// CIoU of boxes `a` (prediction) and `b` (ground truth), `[x1, y1, x2, y2]`.
pub fn ciou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let (wa, ha) = (a[2] - a[0], a[3] - a[1]);
    let (wb, hb) = (b[2] - b[0], b[3] - b[1]);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = wa * ha + wb * hb - inter + 1e-7;
    let iou = inter / union;
    let (cxa, cya) = ((a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0);
    let (cxb, cyb) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let rho2 = (cxa - cxb).powi(2) + (cya - cyb).powi(2);
    let cw = a[2].max(b[2]) - a[0].min(b[0]);
    let ch = a[3].max(b[3]) - a[1].min(b[1]);
    let c2 = cw * cw + ch * ch + 1e-7;
    let v = 4.0 / (std::f64::consts::PI * std::f64::consts::PI)
        * ((wb / (hb + 1e-7)).atan() - (wa / (ha + 1e-7)).atan()).powi(2);
    let denom = (1.0 - iou) + v;
    let alpha = if denom == 0.0 { 0.0 } else { v / denom };
    iou - (rho2 / c2 + alpha * v)
}
