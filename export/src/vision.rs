//! The vision tower and merger: pixel_values → image embeddings in raster order.
//!
//! The runtime computes the per-image index tensors in Rust (`st::vision`): patches are placed
//! into a padded *window order* — every window holds (window / patch)² slots, merge units of
//! merge² patches kept contiguous, padding slots pointing at a zero row — so that windowed
//! blocks cost window-sized attention (a batch of [W × W] score matrices, pads masked), and
//! full-attention blocks attend over all slots with the pads masked.
//!
//! Inputs: `pixel_values` f32 [patches, C·T·P·P]; `patch_index` i64 [slots] (pads = patches);
//! `rope_cos`, `rope_sin` f32 [slots, head_dim] (2-D rotary); `window_bias` f32
//! [windows, 1, 1, W]; `full_bias` f32 [1, 1, 1, slots]; `merge_index` i64 [tokens] (for each
//! merged token in raster order, its merged slot). Output: `image_embeds` f32 [tokens, out_hidden].

use crate::error::Result;
use crate::graph::{Attr, Dim};
use crate::layers::Builder;
use crate::onnx::tensor_proto::DataType;
use st_checkpoint::ModelConfig;

/// RMSNorm epsilon inside the tower and merger (fixed in the reference implementation).
const VISION_EPS: f64 = 1e-6;

pub fn build_vision(b: &mut Builder<'_>, c: &ModelConfig) -> Result<()> {
    let v = &c.vision;
    let (hidden, heads, hd) = (v.hidden_size, v.num_heads, v.head_dim());
    let side = v.window_size / v.patch_size;
    let window_slots = side * side;
    let merge2 = v.spatial_merge_size * v.spatial_merge_size;
    let g = &mut b.g;
    let pv = g.input("pixel_values", DataType::Float, &[Dim::Sym("patches"), Dim::Fixed(v.patch_values())]);
    let index = g.input("patch_index", DataType::Int64, &[Dim::Sym("slots")]);
    let cos = g.input("rope_cos", DataType::Float, &[Dim::Sym("slots"), Dim::Fixed(hd)]);
    let sin = g.input("rope_sin", DataType::Float, &[Dim::Sym("slots"), Dim::Fixed(hd)]);
    let wbias = g.input(
        "window_bias",
        DataType::Float,
        &[Dim::Sym("windows"), Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(window_slots)],
    );
    let fbias =
        g.input("full_bias", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(1), Dim::Sym("slots")]);
    let merge_index = g.input("merge_index", DataType::Int64, &[Dim::Sym("tokens")]);

    // Patch embedding: the Conv3d with stride = kernel is a matmul over flattened patches.
    let x = b.linear_at(&pv, "visual.patch_embed.proj.weight", "visual.patch_embed.proj", false, b.precision)?;
    let g = &mut b.g;
    let zero = g.const_f32("visual/pad_row", &vec![0.0; hidden], &[1, hidden as i64]);
    let x = g.node("visual/AppendPadRow", "Concat", &[&x, &zero], &[("axis", Attr::Int(0))]);
    let mut x = g.node("visual/ToWindowOrder", "Gather", &[&x, &index], &[("axis", Attr::Int(0))]);

    // Group shapes: windows of `window_slots`, or one group of all slots.
    let win5 = g.const_i64("visual/window_qkv_shape", &[-1, window_slots as i64, 3, heads as i64, hd as i64], &[5]);
    let full5 = g.const_i64("visual/full_qkv_shape", &[1, -1, 3, heads as i64, hd as i64], &[5]);
    let win_rope = g.const_i64("visual/window_rope_shape", &[-1, 1, window_slots as i64, hd as i64], &[4]);
    let full_rope = g.const_i64("visual/full_rope_shape", &[1, 1, -1, hd as i64], &[4]);
    let cos_w = g.node("visual/rope_cos_windows", "Reshape", &[&cos, &win_rope], &[]);
    let sin_w = g.node("visual/rope_sin_windows", "Reshape", &[&sin, &win_rope], &[]);
    let cos_f = g.node("visual/rope_cos_full", "Reshape", &[&cos, &full_rope], &[]);
    let sin_f = g.node("visual/rope_sin_full", "Reshape", &[&sin, &full_rope], &[]);
    let flat2 = g.const_i64("visual/flat_shape", &[-1, hidden as i64], &[2]);
    let scale = g.const_f32("visual/attn_scale", &[1.0 / (hd as f32).sqrt()], &[]);
    let picks: Vec<String> = (0..3).map(|i| g.const_i64(&format!("visual/qkv_pick{i}"), &[i], &[])).collect();

    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        let full = v.fullatt_block_indexes.contains(&i);
        let (shape5, cs, sn, bias) =
            if full { (&full5, &cos_f, &sin_f, &fbias) } else { (&win5, &cos_w, &sin_w, &wbias) };
        let h = b.rms_norm(&x, &format!("{p}.norm1.weight"), VISION_EPS, &format!("{p}.norm1"))?;
        let a = format!("{p}.attn");
        let qkv = b.linear(&h, &format!("{a}.qkv"), true)?;
        let g = &mut b.g;
        let qkv = g.node(&format!("{a}/GroupQKV"), "Reshape", &[&qkv, shape5], &[]);
        let qkv = g.node(&format!("{a}/TransposeQKV"), "Transpose", &[&qkv], &[("perm", Attr::Ints(&[2, 0, 3, 1, 4]))]);
        let [q, k, vv] = [0, 1, 2].map(|j| {
            let name = ["Q", "K", "V"][j];
            g.node(&format!("{a}/Pick{name}"), "Gather", &[&qkv, &picks[j]], &[("axis", Attr::Int(0))])
        });
        let q = b.rotary(&q, cs, sn, hd, &format!("{a}/rotary_q"));
        let k = b.rotary(&k, cs, sn, hd, &format!("{a}/rotary_k"));
        let g = &mut b.g;
        let q = g.node(&format!("{a}/Scale"), "Mul", &[&q, &scale], &[]);
        let kt = g.node(&format!("{a}/TransposeKey"), "Transpose", &[&k], &[("perm", Attr::Ints(&[0, 1, 3, 2]))]);
        let s = g.node(&format!("{a}/QK"), "MatMul", &[&q, &kt], &[]);
        let s = g.node(&format!("{a}/AddBias"), "Add", &[&s, bias], &[]);
        let s = g.node(&format!("{a}/Softmax"), "Softmax", &[&s], &[("axis", Attr::Int(-1))]);
        let o = g.node(&format!("{a}/PV"), "MatMul", &[&s, &vv], &[]);
        let o = g.node(&format!("{a}/TransposeOut"), "Transpose", &[&o], &[("perm", Attr::Ints(&[0, 2, 1, 3]))]);
        let o = g.node(&format!("{a}/Flatten"), "Reshape", &[&o, &flat2], &[]);
        let o = b.linear(&o, &format!("{a}.proj"), true)?;
        x = b.g.node(&format!("{p}/ResidualAttn"), "Add", &[&x, &o], &[]);
        let h = b.rms_norm(&x, &format!("{p}.norm2.weight"), VISION_EPS, &format!("{p}.norm2"))?;
        let m = b.mlp(&h, &format!("{p}.mlp"), true)?;
        x = b.g.node(&format!("{p}/ResidualMlp"), "Add", &[&x, &m], &[]);
    }
    let h = b.rms_norm(&x, "visual.merger.ln_q.weight", VISION_EPS, "visual.merger.ln_q")?;
    let g = &mut b.g;
    let merged_shape = g.const_i64("visual.merger/shape", &[-1, (hidden * merge2) as i64], &[2]);
    let h = g.node("visual.merger/GroupMergeUnits", "Reshape", &[&h, &merged_shape], &[]);
    let h = g.node("visual.merger/ToRasterOrder", "Gather", &[&h, &merge_index], &[("axis", Attr::Int(0))]);
    let h = b.linear(&h, "visual.merger.mlp.0", true)?;
    let h = b.g.node("visual.merger.mlp.1/Gelu", "Gelu", &[&h], &[]);
    let y = b.linear(&h, "visual.merger.mlp.2", true)?;
    b.g.output(&y, "image_embeds", DataType::Float, &[Dim::Sym("tokens"), Dim::Fixed(v.out_hidden_size)]);
    Ok(())
}
