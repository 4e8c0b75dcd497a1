//! The text side: `embed` (input_ids → inputs_embeds) and `decoder` (one graph for prefill and
//! decode: inputs_embeds, M-RoPE cos/sin, attention bias and the KV cache → logits of the last
//! `logits_to_keep` positions and the new KV cache).
//!
//! Decoder inputs (batch `b`, new tokens `s`, cached `past`, `total = past + s`):
//! - `inputs_embeds` f32 [b, s, hidden]
//! - `rope_cos`, `rope_sin` f32 [b, s, head_dim]: M-RoPE tables computed by the runtime
//! - `attention_bias` f32 [b, 1, s, total]: 0 where a token may attend, a large negative number
//!   elsewhere (the runtime builds it causally by token index, not by M-RoPE position)
//! - `logits_to_keep` i64 [1]: how many trailing positions get logits (1 on prefill, several
//!   when a step verifies several tokens, s for all)
//! - `past_key.{i}`, `past_value.{i}` f32 [b, kv_heads, past, head_dim]
//!
//! Outputs: `logits` f32 [b, keep, vocab], `present_key.{i}`, `present_value.{i}`
//! [b, kv_heads, total, head_dim].

use crate::error::Result;
use crate::graph::{Attr, Dim};
use crate::layers::Builder;
use crate::onnx::tensor_proto::DataType;
use crate::precision::Attention;
use st_checkpoint::ModelConfig;

/// `embed`: Gather rows of `model.embed_tokens.weight`.
pub fn build_embed(b: &mut Builder<'_>, c: &ModelConfig) -> Result<()> {
    let ids = b.g.input("input_ids", DataType::Int64, &[Dim::Sym("batch"), Dim::Sym("seq")]);
    let name = "model.embed_tokens.weight";
    let out = if b.precision == crate::precision::Precision::Fp16 {
        // Rows are gathered from the f16 table, then widened: the table stays half size in memory.
        let t = b.weights.get(name)?;
        let shape = t.shape.to_vec();
        let table = b.g.weight_with(name, DataType::Float16, &shape, t.numel() as u64 * 2, |w| t.write_f16_le(w))?;
        b.weights.release(name);
        b.progress.tensor_done(t.bytes.len());
        let rows = b.g.node("model.embed_tokens/Gather", "Gather", &[&table, &ids], &[("axis", Attr::Int(0))]);
        b.g.node("model.embed_tokens/Cast", "Cast", &[&rows], &[("to", Attr::Int(DataType::Float as i64))])
    } else {
        let table = b.weight_f32(name)?;
        b.g.node("model.embed_tokens/Gather", "Gather", &[&table, &ids], &[("axis", Attr::Int(0))])
    };
    let dims = [Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(c.text.hidden_size)];
    b.g.output(&out, "inputs_embeds", DataType::Float, &dims);
    Ok(())
}

/// One layer's attention inputs: normalised hidden state, module prefix, cache inputs.
struct LayerInputs<'a> {
    h: &'a str,
    prefix: &'a str,
    past_k: &'a str,
    past_v: &'a str,
}

/// Graph inputs and constants every layer's attention shares.
struct Shared {
    cos: String,
    sin: String,
    bias: Option<String>,
    seqlens: Option<(String, String)>,
    /// GroupQueryAttention's own rotary inputs (`cos_cache`, `sin_cache`, `position_ids`), when it
    /// rotates q and k itself ([`rotary_in_attention`]: st's node always, ORT's with
    /// `Builder::contrib_fusions`).
    rotary_cache: Option<[String; 3]>,
}

/// The decoder graph.
pub fn build_decoder(b: &mut Builder<'_>, c: &ModelConfig) -> Result<()> {
    let t = &c.text;
    let (kv, hd) = (t.num_key_value_heads, t.head_dim);
    let (batch, seq, past, total) = (Dim::Sym("batch"), Dim::Sym("seq"), Dim::Sym("past"), Dim::Sym("total"));
    let gqa = matches!(b.attention, Attention::GroupQuery | Attention::StGroupQuery);
    let g = &mut b.g;
    let mut x = g.input("inputs_embeds", DataType::Float, &[batch, seq, Dim::Fixed(t.hidden_size)]);
    let cos = g.input("rope_cos", DataType::Float, &[batch, seq, Dim::Fixed(hd)]);
    let sin = g.input("rope_sin", DataType::Float, &[batch, seq, Dim::Fixed(hd)]);
    let (bias, seqlens) = if gqa {
        let s = g.input("seqlens_k", DataType::Int32, &[batch]);
        let tot = g.input("total_sequence_length", DataType::Int32, &[]);
        (None, Some((s, tot)))
    } else {
        (Some(g.input("attention_bias", DataType::Float, &[batch, Dim::Fixed(1), seq, total])), None)
    };
    let keep = g.input("logits_to_keep", DataType::Int64, &[Dim::Fixed(1)]);
    // st's attention node always rotates q and k itself (its CPU and CUDA kernels); ORT's does so with
    // the contrib fusions (the CPU target).
    let rotary_cache = match &seqlens {
        Some((_, tot)) if b.contrib_fusions || b.attention == Attention::StGroupQuery => {
            Some(rotary_in_attention(g, &cos, &sin, tot, hd))
        }
        _ => None,
    };
    // Rotary tables broadcast over heads: axis 1 of [b, heads, s, hd] (standard) or axis 2 of
    // [b, s, heads, hd] (GroupQueryAttention takes BSH inputs).
    let (cos, sin) = if rotary_cache.is_some() {
        (cos, sin)
    } else {
        let axis = g.const_i64("const/rotary_axis", &[if gqa { 2 } else { 1 }], &[1]);
        let cos = g.node("rotary/UnsqueezeCos", "Unsqueeze", &[&cos, &axis], &[]);
        (cos, g.node("rotary/UnsqueezeSin", "Unsqueeze", &[&sin, &axis], &[]))
    };
    let shared = Shared { cos, sin, bias, seqlens, rotary_cache };
    let kv_dims = [batch, Dim::Fixed(kv), past, Dim::Fixed(hd)];
    let present_dims = [batch, Dim::Fixed(kv), total, Dim::Fixed(hd)];

    // With the contrib fusions each residual add is done by the RMSNorm after it: `pending` is the
    // branch output (attention or MLP) not yet added to `x`.
    let fuse = shared.rotary_cache.is_some() && b.contrib_fusions;
    let mut pending: Option<String> = None;
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let past_k = b.g.input(&format!("past_key.{i}"), DataType::Float, &kv_dims);
        let past_v = b.g.input(&format!("past_value.{i}"), DataType::Float, &kv_dims);
        let h = norm_after(b, &mut x, pending.take(), &format!("{p}.input_layernorm"), t.rms_norm_eps)?;
        let a = format!("{p}.self_attn");
        let layer = LayerInputs { h: &h, prefix: &a, past_k: &past_k, past_v: &past_v };
        let (ctx, k_all, v_all) =
            if gqa { attention_gqa(b, c, &layer, &shared)? } else { attention_standard(b, c, &layer, &shared)? };
        b.g.output(&k_all, &format!("present_key.{i}"), DataType::Float, &present_dims);
        b.g.output(&v_all, &format!("present_value.{i}"), DataType::Float, &present_dims);
        let o = b.linear(&ctx, &format!("{a}.o_proj"), false)?;
        let o = if fuse {
            Some(o)
        } else {
            x = b.g.node(&format!("{p}/ResidualAttn"), "Add", &[&x, &o], &[]);
            None
        };
        let h = norm_after(b, &mut x, o, &format!("{p}.post_attention_layernorm"), t.rms_norm_eps)?;
        let m = b.mlp(&h, &format!("{p}.mlp"), false)?;
        if fuse {
            pending = Some(m);
        } else {
            x = b.g.node(&format!("{p}/ResidualMlp"), "Add", &[&x, &m], &[]);
        }
    }
    let x = norm_after(b, &mut x, pending, "model.norm", t.rms_norm_eps)?;
    let g = &mut b.g;
    let axis1 = g.const_i64("const/axis1", &[1], &[1]);
    let start = g.node("lm_head/NegKeep", "Neg", &[&keep], &[]);
    let end = g.const_i64("const/int64_max", &[i64::MAX], &[1]);
    let x = g.node("lm_head/KeepLast", "Slice", &[&x, &start, &end, &axis1], &[]);
    let head_weight = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    // lm_head at its own precision (docs/FORMATS.md#precisions: at least int8; see ExportOptions::new).
    let logits = b.linear_at(&x, head_weight, "lm_head", false, b.linear.lm_head)?;
    b.g.output(&logits, "logits", DataType::Float, &[batch, Dim::Sym("keep"), Dim::Fixed(t.vocab_size)]);
    Ok(())
}

/// RMSNorm `module` (its weight `{module}.weight`) of the residual stream `x`. With a `branch` not yet
/// added, the add and the norm are one node and `x` becomes the sum.
fn norm_after(b: &mut Builder<'_>, x: &mut String, branch: Option<String>, module: &str, eps: f64) -> Result<String> {
    let weight = format!("{module}.weight");
    match branch {
        Some(branch) => {
            let (normed, sum) = b.skip_rms_norm(x, &branch, &weight, eps, module)?;
            *x = sum;
            Ok(normed)
        }
        None => b.rms_norm(x, &weight, eps, module),
    }
}

/// q, k, v projections of `h`, reshaped to [b, s, heads, hd] and, when `bhsd`, transposed to
/// [b, heads, s, hd]; q and k rotated. Where the attention rotates them (`sh.rotary_cache`), the
/// projections as they are, [b, s, heads·hd], or, where the three can be one quantized linear, its
/// output [b, s, (heads + 2·kv_heads)·hd] and two empty names.
fn projections(b: &mut Builder<'_>, c: &ModelConfig, h: &str, a: &str, sh: &Shared, bhsd: bool) -> Result<[String; 3]> {
    let t = &c.text;
    let hd = t.head_dim as i64;
    if sh.rotary_cache.is_some() {
        // One quantized linear for q, k and v; GroupQueryAttention takes its output packed (key and
        // value inputs empty).
        let names = ["q_proj", "k_proj", "v_proj"].map(|p| format!("{a}.{p}"));
        let parts = names.each_ref().map(String::as_str);
        if let Some(qkv) = b.linear_packed(h, &parts, &format!("{a}.qkv_proj"), true, crate::layers::Pack::Concat)? {
            return Ok([qkv, String::new(), String::new()]);
        }
    }
    let mut out = Vec::new();
    for (proj, heads) in
        [("q_proj", t.num_attention_heads), ("k_proj", t.num_key_value_heads), ("v_proj", t.num_key_value_heads)]
    {
        let y = b.linear(h, &format!("{a}.{proj}"), true)?;
        if sh.rotary_cache.is_some() {
            // GroupQueryAttention takes the projection as it is, [b, s, heads·hd], and rotates it.
            out.push(y);
            continue;
        }
        let shape = b.g.const_i64(&format!("{a}.{proj}/heads_shape"), &[0, 0, heads as i64, hd], &[4]);
        let mut y = b.g.node(&format!("{a}.{proj}/Reshape"), "Reshape", &[&y, &shape], &[]);
        if bhsd {
            y = b.g.node(&format!("{a}.{proj}/Transpose"), "Transpose", &[&y], &[("perm", Attr::Ints(&[0, 2, 1, 3]))]);
        }
        if proj != "v_proj" && sh.rotary_cache.is_none() {
            y = b.rotary(&y, &sh.cos, &sh.sin, t.head_dim, &format!("{a}/rotary_{}", &proj[..1]));
        }
        out.push(y);
    }
    let [q, k, v]: [String; 3] =
        out.try_into().map_err(|_| crate::Error::InvalidOption { name: "attention", reason: "projections".into() })?;
    Ok([q, k, v])
}

/// Standard ops. Query heads of one KV group are contiguous, so queries are viewed as
/// [b, kv, rep·s, hd] against the group's keys, and the bias is tiled rep times along its rows.
fn attention_standard(
    b: &mut Builder<'_>,
    c: &ModelConfig,
    l: &LayerInputs<'_>,
    sh: &Shared,
) -> Result<(String, String, String)> {
    let (h, a, past_k, past_v) = (l.h, l.prefix, l.past_k, l.past_v);
    let t = &c.text;
    let (heads, kv, hd) = (t.num_attention_heads as i64, t.num_key_value_heads as i64, t.head_dim as i64);
    let [q, k, v] = projections(b, c, h, a, sh, true)?;
    let g = &mut b.g;
    let bias = sh.bias.as_deref().unwrap_or_default();
    let tiles = g.const_i64(&format!("{a}/bias_tiles"), &[1, 1, heads / kv, 1], &[4]);
    let bias = g.node(&format!("{a}/TileBias"), "Tile", &[bias, &tiles], &[]);
    let k_all = g.node(&format!("{a}/ConcatPastKey"), "Concat", &[past_k, &k], &[("axis", Attr::Int(2))]);
    let v_all = g.node(&format!("{a}/ConcatPastValue"), "Concat", &[past_v, &v], &[("axis", Attr::Int(2))]);
    let scale = g.const_f32(&format!("{a}/scale"), &[1.0 / (hd as f32).sqrt()], &[]);
    let grouped = g.const_i64(&format!("{a}/grouped_q"), &[0, kv, -1, hd], &[4]);
    let ungrouped = g.const_i64(&format!("{a}/ungrouped"), &[0, heads, -1, hd], &[4]);
    let merged = g.const_i64(&format!("{a}/merged"), &[0, 0, heads * hd], &[3]);
    let q = g.node(&format!("{a}/Scale"), "Mul", &[&q, &scale], &[]);
    let q = g.node(&format!("{a}/GroupQueries"), "Reshape", &[&q, &grouped], &[]);
    let kt = g.node(&format!("{a}/TransposeKey"), "Transpose", &[&k_all], &[("perm", Attr::Ints(&[0, 1, 3, 2]))]);
    let scores = g.node(&format!("{a}/QK"), "MatMul", &[&q, &kt], &[]);
    let scores = g.node(&format!("{a}/AddBias"), "Add", &[&scores, &bias], &[]);
    let probs = g.node(&format!("{a}/Softmax"), "Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
    let ctx = g.node(&format!("{a}/PV"), "MatMul", &[&probs, &v_all], &[]);
    let ctx = g.node(&format!("{a}/UngroupHeads"), "Reshape", &[&ctx, &ungrouped], &[]);
    let ctx = g.node(&format!("{a}/TransposeOut"), "Transpose", &[&ctx], &[("perm", Attr::Ints(&[0, 2, 1, 3]))]);
    let ctx = g.node(&format!("{a}/MergeHeads"), "Reshape", &[&ctx, &merged], &[]);
    Ok((ctx, k_all, v_all))
}

/// GroupQueryAttention's rotary inputs built once from this call's M-RoPE tables (`rope_cos`,
/// `rope_sin` [b, s, hd], each row the two equal halves HF's `rotate_half` form uses): the rows'
/// first halves, flattened to [b·s, hd/2] and padded with `total` zero rows (the operator wants a
/// cache of at least `total_sequence_length` rows), looked up by `position_ids` = 0..b·s as [b, s].
/// So GroupQueryAttention rotates q and k itself with exactly the tables the explicit rotation
/// multiplies by, and the 12 nodes a layer of the explicit form (slices, negation, concatenation,
/// products, sum for q and k) are gone from every step (docs/PERFORMANCE.md).
fn rotary_in_attention(g: &mut crate::graph::Graph, cos: &str, sin: &str, total: &str, hd: usize) -> [String; 3] {
    let half = (hd / 2) as i64;
    let axes = g.const_i64("rotary_cache/axes", &[2], &[1]);
    let zero = g.const_i64("rotary_cache/zero", &[0], &[1]);
    let end = g.const_i64("rotary_cache/half", &[half], &[1]);
    let rows = g.const_i64("rotary_cache/rows", &[-1, half], &[2]);
    let vector = g.const_i64("rotary_cache/vector", &[1], &[1]);
    let tot = g.node("rotary_cache/TotalI64", "Cast", &[total], &[("to", Attr::Int(DataType::Int64 as i64))]);
    let tot = g.node("rotary_cache/TotalRows", "Reshape", &[&tot, &vector], &[]);
    let pads = g.node("rotary_cache/Pads", "Concat", &[&zero, &zero, &tot, &zero], &[("axis", Attr::Int(0))]);
    let mut cache = |table: &str, which: &str| {
        let h = g.node(&format!("rotary_cache/Half{which}"), "Slice", &[table, &zero, &end, &axes], &[]);
        let flat = g.node(&format!("rotary_cache/Flat{which}"), "Reshape", &[&h, &rows], &[]);
        g.node(&format!("rotary_cache/Pad{which}"), "Pad", &[&flat, &pads], &[])
    };
    let (cos_cache, sin_cache) = (cache(cos, "Cos"), cache(sin, "Sin"));
    // position_ids [b, s] = 0..b·s: row i of the flattened tables is token i of this call.
    let shape = g.node("rotary_cache/Shape", "Shape", &[cos], &[("end", Attr::Int(2))]);
    let count = g.node("rotary_cache/Count", "ReduceProd", &[&shape], &[("keepdims", Attr::Int(0))]);
    let start = g.const_i64("rotary_cache/start", &[0], &[]);
    let step = g.const_i64("rotary_cache/step", &[1], &[]);
    let ids = g.node("rotary_cache/Range", "Range", &[&start, &count, &step], &[]);
    let ids = g.node("rotary_cache/PositionIds", "Reshape", &[&ids, &shape], &[]);
    [cos_cache, sin_cache, ids]
}

/// `com.microsoft.GroupQueryAttention` over BSH queries and keys (rotated before it, or by it); st's
/// `ai.st.GroupQueryAttention` where asked and the op rotates them (`--attention st` on the CPU).
fn attention_gqa(
    b: &mut Builder<'_>,
    c: &ModelConfig,
    l: &LayerInputs<'_>,
    sh: &Shared,
) -> Result<(String, String, String)> {
    let (h, a, past_k, past_v) = (l.h, l.prefix, l.past_k, l.past_v);
    let t = &c.text;
    let [q, k, v] = projections(b, c, h, a, sh, false)?;
    let g = &mut b.g;
    let (seqlens, total) = sh.seqlens.clone().unwrap_or_default();
    let [q, k, v] = if sh.rotary_cache.is_some() {
        [q, k, v]
    } else {
        let qs = g.const_i64(&format!("{a}/q_bsh"), &[0, 0, (t.num_attention_heads * t.head_dim) as i64], &[3]);
        let kvs = g.const_i64(&format!("{a}/kv_bsh"), &[0, 0, (t.num_key_value_heads * t.head_dim) as i64], &[3]);
        let q = g.node(&format!("{a}/QueryBSH"), "Reshape", &[&q, &qs], &[]);
        let k = g.node(&format!("{a}/KeyBSH"), "Reshape", &[&k, &kvs], &[]);
        [q, k, g.node(&format!("{a}/ValueBSH"), "Reshape", &[&v, &kvs], &[])]
    };
    let mut inputs = vec![q.as_str(), &k, &v, past_k, past_v, &seqlens, &total];
    if let Some(cache) = &sh.rotary_cache {
        inputs.extend(cache.iter().map(String::as_str));
    }
    let attrs = [
        ("num_heads", Attr::Int(t.num_attention_heads as i64)),
        ("kv_num_heads", Attr::Int(t.num_key_value_heads as i64)),
        ("do_rotary", Attr::Int(i64::from(sh.rotary_cache.is_some()))),
    ];
    let domain = if b.attention == Attention::StGroupQuery && sh.rotary_cache.is_some() {
        crate::graph::ST_DOMAIN
    } else {
        crate::graph::MS_DOMAIN
    };
    let g = &mut b.g;
    let out = g.node_n(&format!("{a}/GroupQueryAttention"), "GroupQueryAttention", domain, &inputs, &attrs, 3);
    Ok((out[0].clone(), out[1].clone(), out[2].clone()))
}
