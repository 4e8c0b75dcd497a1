//! A training run's directory: `config.json` (every setting), `metrics.jsonl` (one line per
//! optimizer step), `checkpoints/step-N/` (adapter in PEFT format, optimizer moments, trainer
//! state; written to a temporary folder and renamed, so an interrupted save leaves the previous
//! checkpoint loadable), `adapter/` (the latest adapter) and the curve PNG.

use crate::error::{Error, Result};
use crate::model::TextModel;
use crate::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
pub const SAMPLES: &str = "samples.jsonl";
pub const CHECKPOINTS: &str = "checkpoints";
pub const ADAPTER: &str = "adapter";
pub const STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// What a checkpoint records besides tensors: the optimizer step it was taken after, the
/// settings (a resume must use the same), and where the data stream stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub config: serde_json::Value,
    /// Samples of the (seeded, per-epoch shuffled) data stream consumed so far.
    pub data_position: usize,
    pub seed: u64,
    /// Free-form counters a trainer wants back (GRPO keeps its own).
    #[serde(default)]
    pub extra: serde_json::Value,
}

pub struct RunDir {
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Put the folder `new` in place of `dest`. The old `dest` is renamed aside (to a hidden temporary
/// that a later run removes) before it is deleted, so a kill at any moment leaves `dest` whole (old or
/// new) or absent, never half-deleted: `remove_dir_all` deletes file by file.
fn replace_dir(new: &Path, dest: &Path) -> Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let old = dest.with_file_name(format!(".{name}.old.tmp-{}", std::process::id()));
    let had_old = match std::fs::rename(dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(dest)(e)),
    };
    std::fs::rename(new, dest).map_err(io(dest))?;
    if had_old {
        // The save is complete: an old copy that cannot be deleted now is a hidden temporary the next
        // run removes, not a reason to stop this one.
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

impl RunDir {
    /// Create (or reopen, to resume) the run directory; the hidden temporaries of a save that a killed
    /// process left (`.step-N.tmp-PID`, `.adapter.tmp-PID`, `.NAME.tmp-PID`, and a replaced folder's
    /// `.NAME.old.tmp-PID`) are removed.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join(CHECKPOINTS)).map_err(io(dir))?;
        for d in [dir.to_path_buf(), dir.join(CHECKPOINTS)] {
            st_checkpoint::temp::remove_dead_temporaries(&d, st_checkpoint::temp::tmp_writer);
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Write `config.json` (temp + rename).
    pub fn write_config(&self, config: &serde_json::Value) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(config)
            .map_err(|e| Error::File { path: self.path(CONFIG), reason: e.to_string() })?;
        st_checkpoint::adapter::write_then_rename(&self.path(CONFIG), &bytes)?;
        Ok(())
    }

    /// Append one metrics line and flush it.
    pub fn append_metrics(&self, line: &serde_json::Value) -> Result<()> {
        let path = self.path(METRICS);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        writeln!(f, "{line}").and_then(|_| f.flush()).map_err(io(&path))
    }

    /// Metrics lines already written, as JSON values.
    pub fn read_metrics(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.path(METRICS);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Keep only the metrics (and samples) lines of steps ≤ `step` (a resumed run rewrites what follows).
    pub fn truncate_metrics(&self, step: usize) -> Result<()> {
        for name in [METRICS, SAMPLES] {
            let path = self.path(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Io { path, source: e }),
            };
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .collect();
            let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
            st_checkpoint::adapter::write_then_rename(&path, body.as_bytes())?;
        }
        Ok(())
    }

    fn checkpoint_dir(&self, step: usize) -> PathBuf {
        self.dir.join(CHECKPOINTS).join(format!("step-{step}"))
    }

    /// Save adapter, optimizer moments and state as `checkpoints/step-N`, then refresh
    /// `adapter/`. Everything goes to a hidden temporary folder first and is renamed into place.
    pub fn save_checkpoint(
        &self,
        model: &TextModel,
        opt: Option<&AdamW>,
        state: &TrainerState,
        base: &str,
    ) -> Result<PathBuf> {
        let final_dir = self.checkpoint_dir(state.step);
        let tmp = self.dir.join(CHECKPOINTS).join(format!(".step-{}.tmp-{}", state.step, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        crate::peft::save(model, &tmp.join(ADAPTER), base)?;
        if let Some(opt) = opt {
            let names: Vec<String> = model.lora_parameters().into_iter().map(|(n, _)| n).collect();
            let mut tensors: Vec<(String, Tensor)> = Vec::new();
            for (i, n) in names.iter().enumerate() {
                tensors.push((format!("exp_avg.{n}"), opt.exp_avg[i].to_device(tch::Device::Cpu)));
                tensors.push((format!("exp_avg_sq.{n}"), opt.exp_avg_sq[i].to_device(tch::Device::Cpu)));
            }
            tensors.push(("step".into(), Tensor::from_slice(&[opt.step])));
            Tensor::write_safetensors(&tensors, tmp.join(OPTIMIZER))?;
        }
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::File { path: tmp.join(STATE), reason: e.to_string() })?;
        st_checkpoint::adapter::write_then_rename(&tmp.join(STATE), &json)?;
        replace_dir(&tmp, &final_dir)?;
        self.refresh_adapter(model, base)?;
        Ok(final_dir)
    }

    /// Write the latest adapter to `adapter/` (temp folder + rename).
    pub fn refresh_adapter(&self, model: &TextModel, base: &str) -> Result<()> {
        let tmp = self.dir.join(format!(".adapter.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        crate::peft::save(model, &tmp, base)?;
        replace_dir(&tmp, &self.path(ADAPTER))
    }

    /// The checkpoint with the highest step whose state file reads, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<(PathBuf, TrainerState)>> {
        let dir = self.dir.join(CHECKPOINTS);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(None) };
        let mut found: Vec<(usize, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("step-").and_then(|n| n.parse().ok()).map(|n| (n, e.path()))
            })
            .collect();
        found.sort();
        for (_, path) in found.into_iter().rev() {
            let Ok(text) = std::fs::read_to_string(path.join(STATE)) else { continue };
            if let Ok(state) = serde_json::from_str::<TrainerState>(&text) {
                return Ok(Some((path, state)));
            }
        }
        Ok(None)
    }

    /// The step of the last complete checkpoint, for error messages.
    pub fn last_checkpoint_name(&self) -> String {
        match self.latest_checkpoint() {
            Ok(Some((p, _))) => p.display().to_string(),
            _ => "none (no checkpoint was saved yet)".into(),
        }
    }
}

/// Put the optimizer moments of a checkpoint back.
pub fn load_optimizer(dir: &Path, model: &TextModel, opt: &mut AdamW) -> Result<()> {
    let path = dir.join(OPTIMIZER);
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)?.into_iter().collect();
    let names: Vec<String> = model.lora_parameters().into_iter().map(|(n, _)| n).collect();
    let device = model.device;
    for (i, n) in names.iter().enumerate() {
        for (prefix, slot) in [("exp_avg", &mut opt.exp_avg[i]), ("exp_avg_sq", &mut opt.exp_avg_sq[i])] {
            let key = format!("{prefix}.{n}");
            let t = tensors.get(&key).ok_or_else(|| Error::Resume {
                dir: dir.to_path_buf(),
                reason: format!("{OPTIMIZER} lacks `{key}`"),
            })?;
            if t.size() != slot.size() {
                return Err(Error::Resume {
                    dir: dir.to_path_buf(),
                    reason: format!("`{key}` has shape {:?}, the model's is {:?}", t.size(), slot.size()),
                });
            }
            *slot = t.to_device(device);
        }
    }
    let step = tensors.get("step").and_then(|t| i64::try_from(t.view([-1]).get(0)).ok()).unwrap_or(0);
    opt.step = step;
    Ok(())
}

/// The settings that differ between a saved run and this one (by top-level key).
pub fn config_differences(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else { return vec!["config".into()] };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: saved {} vs now {}",
                a.get(k).unwrap_or(&serde_json::Value::Null),
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}

/// Begin a run in `run` (refusing a directory that already holds one) or, with `resume`, put the
/// last checkpoint's adapter and optimizer moments back after checking that its settings equal
/// `config` (the differences are named). Returns the step to start from and the optimizer.
pub fn start_or_resume(
    model: &TextModel,
    run: &RunDir,
    config: &serde_json::Value,
    resume: bool,
    adamw: &crate::optim::AdamWConfig,
) -> Result<(usize, AdamW)> {
    let params: Vec<Tensor> = model.lora_parameters().into_iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut opt = AdamW::new(adamw.clone(), &params.iter().collect::<Vec<_>>());
    if !resume {
        if run.path(METRICS).exists() {
            return Err(Error::Resume {
                dir: run.dir.clone(),
                reason: "the run directory already holds a run: pass --resume to continue it, or choose a new --out"
                    .into(),
            });
        }
        run.write_config(config)?;
        return Ok((0, opt));
    }
    let Some((dir, state)) = run.latest_checkpoint()? else {
        return Err(Error::Resume {
            dir: run.dir.clone(),
            reason: "no checkpoint to resume from (checkpoints/step-N)".into(),
        });
    };
    let diffs = config_differences(&state.config, config);
    if !diffs.is_empty() {
        return Err(Error::Resume {
            dir: run.dir.clone(),
            reason: format!("settings differ from the saved run: {}", diffs.join("; ")),
        });
    }
    let adapter = st_checkpoint::LoraAdapter::open(dir.join(ADAPTER))?;
    crate::sft::copy_adapter(model, &adapter)?;
    load_optimizer(&dir, model, &mut opt)?;
    run.truncate_metrics(state.step)?;
    Ok((state.step, opt))
}
