//! Temporary files and folders named after the process that writes them (`.NAME.partial-PID-N`,
//! `.NAME.tmp-PID`): what a killed process leaves behind is never read as output, and the next
//! writer in the same directory removes it once that process is gone.

use std::path::Path;

/// Whether process `pid` is gone (Linux `/proc`; elsewhere, and for this process, `false`: keep).
pub fn process_is_gone(pid: u32) -> bool {
    pid != std::process::id() && Path::new("/proc/self").exists() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove the entries of `dir` for which `writer` names a process that is gone (folders with what
/// they hold); errors are ignored — a temporary that stays only holds disk.
pub fn remove_dead_temporaries(dir: &Path, writer: impl Fn(&str) -> Option<u32>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(&writer) else { continue };
        if process_is_gone(pid) {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// The writer of a hidden `.NAME.tmp-PID` (what [`crate::adapter::write_then_rename`] and the
/// training run's saves write), if `name` is one.
pub fn tmp_writer(name: &str) -> Option<u32> {
    let (_, pid) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_writers_temporaries_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".step-3.tmp-4000000000");
        std::fs::create_dir_all(dead.join("adapter")).unwrap();
        std::fs::write(dir.path().join(".config.json.tmp-4000000001"), b"{").unwrap();
        let mine = dir.path().join(format!(".adapter.tmp-{}", std::process::id()));
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(dir.path().join("step-3")).unwrap();
        remove_dead_temporaries(dir.path(), tmp_writer);
        let mut left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, vec![format!(".adapter.tmp-{}", std::process::id()), "step-3".to_string()]);
        assert_eq!(tmp_writer(".x.tmp-12"), Some(12));
        assert_eq!(tmp_writer("x.tmp-12"), None);
    }
}
