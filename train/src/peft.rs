//! The model's LoRA weights to and from PEFT's files (`st_checkpoint::adapter` holds the format).

use crate::error::{Error, Result};
use crate::model::{Lora, LoraOptions, TextModel};
use st_checkpoint::adapter::{AdapterConfig, LoraAdapter, LoraPair};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous().view([-1]);
    Ok(Vec::<f32>::try_from(&t)?)
}

/// The adapter as PEFT writes it, with `base` as `base_model_name_or_path`.
pub fn to_adapter(model: &TextModel, base: &str) -> Result<LoraAdapter> {
    let opts = model
        .lora_options()
        .ok_or_else(|| Error::InvalidArgument { name: "adapter", reason: "the model has no LoRA adapter".into() })?;
    let mut config = AdapterConfig::new(opts.rank, opts.alpha, &opts.targets, opts.dropout, opts.rslora);
    config.base_model_name_or_path = Some(base.to_string());
    let mut modules = BTreeMap::new();
    for lin in model.adapted_linears() {
        let Some(l) = &lin.lora else { continue };
        let dims = |t: &Tensor| [t.size()[0] as usize, t.size()[1] as usize];
        modules.insert(
            lin.name.clone(),
            LoraPair { a: to_vec(&l.a)?, b: to_vec(&l.b)?, a_shape: dims(&l.a), b_shape: dims(&l.b) },
        );
    }
    Ok(LoraAdapter { dir: Default::default(), config, modules })
}

/// Write the model's adapter into `dir` (PEFT layout; temp files renamed into place).
pub fn save(model: &TextModel, dir: &Path, base: &str) -> Result<()> {
    Ok(to_adapter(model, base)?.write(dir)?)
}

/// Put a PEFT adapter into the model: checked against the checkpoint's shapes, replacing any
/// adapter the model had. Dropout comes from the file's `lora_dropout`.
pub fn load(model: &mut TextModel, adapter: &LoraAdapter, model_config: &st_checkpoint::ModelConfig) -> Result<()> {
    adapter.validate(model_config)?;
    let c = &adapter.config;
    let mut targets: Vec<String> =
        adapter.modules.keys().filter_map(|m| m.rsplit('.').next().map(str::to_string)).collect();
    targets.sort();
    targets.dedup();
    let opts = LoraOptions { rank: c.r, alpha: c.lora_alpha, dropout: c.lora_dropout, rslora: c.use_rslora, targets };
    model.add_lora(&opts, 0)?;
    let device = model.device;
    let names: Vec<String> = model.adapted_linears().map(|l| l.name.clone()).collect();
    for name in names {
        let lin = model
            .linear_mut(&name)
            .ok_or_else(|| Error::Adapter { name: name.clone(), reason: "no such linear".into() })?;
        let pair = adapter.modules.get(&name);
        let Some(pair) = pair else {
            // A target kind present in some layers only: no adapter on this one.
            lin.lora = None;
            continue;
        };
        let mk = |v: &[f32], s: [usize; 2]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?.f_view([s[0] as i64, s[1] as i64])?.to_device(device).set_requires_grad(true))
        };
        let scale = c.scale();
        lin.lora =
            Some(Lora { a: mk(&pair.a, pair.a_shape)?, b: mk(&pair.b, pair.b_shape)?, scale, dropout: c.lora_dropout });
    }
    Ok(())
}
