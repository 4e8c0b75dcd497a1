//! Export recipes: a TOML file that sets the precision of each part and overrides it for linear
//! layers whose HF module name matches a glob (`models/spatialthinker-7b.toml` is the default for
//! the real model).
//!
//! ```toml
//! precision = "int4"        # decoder linears
//! lm_head = "int8"
//! embed = "fp16"
//! vision = "fp16"
//! [int4]
//! block = 32
//! symmetric = true
//! accuracy_level = 4
//! op = "st"                 # or "nbits" (com.microsoft.MatMulNBits)
//! [[override]]
//! pattern = "model.layers.27.mlp.*"   # glob over linear names (no ".weight")
//! precision = "int8"
//! ```

use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::writer::ExportOptions;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub precision: Option<String>,
    pub lm_head: Option<String>,
    pub embed: Option<String>,
    pub vision: Option<String>,
    pub int4: Option<Int4Section>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int4Section {
    pub block: Option<usize>,
    pub symmetric: Option<bool>,
    pub accuracy_level: Option<i64>,
    pub op: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub pattern: String,
    pub precision: String,
}

fn precision(path: &Path, field: &str, s: &str) -> Result<Precision> {
    s.parse().map_err(|reason: String| Error::Recipe { path: path.to_path_buf(), reason: format!("{field}: {reason}") })
}

impl Recipe {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        toml::from_str(&text).map_err(|e| Error::Recipe { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Export options for this recipe: the text precision's defaults, then each field set here.
    pub fn options(&self, path: &Path) -> Result<ExportOptions> {
        let text = match &self.precision {
            Some(p) => precision(path, "precision", p)?,
            None => Precision::Fp32,
        };
        let mut opts = ExportOptions::new(text);
        if let Some(p) = &self.lm_head {
            opts.linear.lm_head = precision(path, "lm_head", p)?;
        }
        if let Some(p) = &self.embed {
            opts.embed = precision(path, "embed", p)?;
        }
        if let Some(p) = &self.vision {
            opts.vision = precision(path, "vision", p)?;
        }
        if let Some(s) = &self.int4 {
            opts.linear.int4.block = s.block.unwrap_or(opts.linear.int4.block);
            opts.linear.int4.symmetric = s.symmetric.unwrap_or(opts.linear.int4.symmetric);
            opts.linear.accuracy_level = s.accuracy_level.unwrap_or(opts.linear.accuracy_level);
            if let Some(op) = &s.op {
                opts.linear.int4_op = op.parse().map_err(|reason: String| Error::Recipe {
                    path: path.to_path_buf(),
                    reason: format!("int4.op: {reason}"),
                })?;
                // "nbits" asks for a graph a stock ONNX Runtime runs: its attention too.
                if opts.linear.int4_op == crate::layers::Int4Op::NBits
                    && opts.attention == crate::precision::Attention::StGroupQuery
                {
                    opts.attention = crate::precision::Attention::GroupQuery;
                }
            }
        }
        for o in &self.overrides {
            globset::Glob::new(&o.pattern).map_err(|e| Error::Recipe {
                path: path.to_path_buf(),
                reason: format!("pattern {:?}: {e}", o.pattern),
            })?;
            opts.overrides.push((o.pattern.clone(), precision(path, "override.precision", &o.precision)?));
        }
        Ok(opts)
    }
}
