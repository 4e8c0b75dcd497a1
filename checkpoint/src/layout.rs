//! Every tensor a Qwen2.5-VL checkpoint must hold, with its shape, derived from the config
//! alone. The exporter walks this list; a training backend can build its parameters from it.

use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::Weights;

/// One expected tensor: canonical HF name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

fn spec(name: String, shape: &[usize]) -> TensorSpec {
    TensorSpec { name, shape: shape.to_vec() }
}

/// Linear layer `prefix.weight` [out, in] and, when `bias`, `prefix.bias` [out].
fn linear(out: &mut Vec<TensorSpec>, prefix: &str, n_in: usize, n_out: usize, bias: bool) {
    out.push(spec(format!("{prefix}.weight"), &[n_out, n_in]));
    if bias {
        out.push(spec(format!("{prefix}.bias"), &[n_out]));
    }
}

/// The text decoder's tensors.
pub fn text_tensors(c: &ModelConfig) -> Vec<TensorSpec> {
    let t = &c.text;
    let (h, hd) = (t.hidden_size, t.head_dim);
    let mut out = vec![spec("model.embed_tokens.weight".into(), &[t.vocab_size, h])];
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push(spec(format!("{p}.input_layernorm.weight"), &[h]));
        linear(&mut out, &format!("{p}.self_attn.q_proj"), h, t.num_attention_heads * hd, true);
        linear(&mut out, &format!("{p}.self_attn.k_proj"), h, t.num_key_value_heads * hd, true);
        linear(&mut out, &format!("{p}.self_attn.v_proj"), h, t.num_key_value_heads * hd, true);
        linear(&mut out, &format!("{p}.self_attn.o_proj"), t.num_attention_heads * hd, h, false);
        out.push(spec(format!("{p}.post_attention_layernorm.weight"), &[h]));
        linear(&mut out, &format!("{p}.mlp.gate_proj"), h, t.intermediate_size, false);
        linear(&mut out, &format!("{p}.mlp.up_proj"), h, t.intermediate_size, false);
        linear(&mut out, &format!("{p}.mlp.down_proj"), t.intermediate_size, h, false);
    }
    out.push(spec("model.norm.weight".into(), &[h]));
    if !c.tie_word_embeddings {
        out.push(spec("lm_head.weight".into(), &[t.vocab_size, h]));
    }
    out
}

/// The vision tower's and merger's tensors.
pub fn vision_tensors(c: &ModelConfig) -> Vec<TensorSpec> {
    let v = &c.vision;
    let h = v.hidden_size;
    let mut out = vec![spec(
        "visual.patch_embed.proj.weight".into(),
        &[h, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size],
    )];
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        out.push(spec(format!("{p}.norm1.weight"), &[h]));
        out.push(spec(format!("{p}.norm2.weight"), &[h]));
        linear(&mut out, &format!("{p}.attn.qkv"), h, 3 * h, true);
        linear(&mut out, &format!("{p}.attn.proj"), h, h, true);
        linear(&mut out, &format!("{p}.mlp.gate_proj"), h, v.intermediate_size, true);
        linear(&mut out, &format!("{p}.mlp.up_proj"), h, v.intermediate_size, true);
        linear(&mut out, &format!("{p}.mlp.down_proj"), v.intermediate_size, h, true);
    }
    let merged = h * v.spatial_merge_size * v.spatial_merge_size;
    out.push(spec("visual.merger.ln_q.weight".into(), &[h]));
    linear(&mut out, "visual.merger.mlp.0", merged, merged, true);
    linear(&mut out, "visual.merger.mlp.2", merged, v.out_hidden_size, true);
    out
}

/// Every tensor of the model.
pub fn expected_tensors(c: &ModelConfig) -> Vec<TensorSpec> {
    let mut all = text_tensors(c);
    all.extend(vision_tensors(c));
    all
}

/// Check that `weights` holds every expected tensor with its shape and a float dtype.
pub fn check(c: &ModelConfig, weights: &Weights) -> Result<()> {
    for s in expected_tensors(c) {
        let t = weights.get(&s.name)?;
        t.expect_shape(&s.shape)?;
        if let crate::Dtype::Other(_) = t.dtype {
            t.to_f32()?;
        }
    }
    Ok(())
}
