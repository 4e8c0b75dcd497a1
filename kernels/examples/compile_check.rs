//! Compile check without a GPU: every op for every target architecture through NVRTC (the runtime's own
//! compile path, `st_kernels::cuda::compile`), then `ptxas -v` on each PTX. Fails on register spills, local
//! memory (stack frames) or any ptxas error, and prints registers / shared memory per kernel as a markdown
//! table (docs/KERNELS.md). `make kernels-check` provides NVRTC, the CUDA headers and ptxas from pinned
//! PyPI wheels.
//!
//! Usage: compile_check <out-dir> [ptxas]

use std::path::PathBuf;
use std::process::Command;

use st_kernels::cuda;
use st_kernels::launch::Op;

const ARCHS: [&str; 4] = ["sm_80", "sm_87", "sm_89", "sm_90"];

#[derive(Default, Debug)]
struct Usage {
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let idx = line.find(unit)?;
    line[..idx].split_whitespace().last()?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: compile_check <out-dir> [ptxas]")?);
    let ptxas = args.next().unwrap_or_else(|| "ptxas".into());
    std::fs::create_dir_all(&out)?;
    println!("NVRTC {}, headers from {:?}", cuda::nvrtc_version()?, cuda::include_dir());
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for op in Op::ALL {
        for arch in ARCHS {
            let ptx = cuda::compile(op, arch)?;
            let ptx_path = out.join(format!("{}-{arch}.ptx", op.name()));
            std::fs::write(&ptx_path, &ptx)?;
            let output = Command::new(&ptxas)
                .args(["-v", &format!("-arch={arch}"), "-o"])
                .arg(out.join(format!("{}-{arch}.cubin", op.name())))
                .arg(&ptx_path)
                .output()
                .map_err(|e| format!("running {ptxas}: {e}"))?;
            let log = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                return Err(format!("ptxas failed on {}:\n{log}", ptx_path.display()).into());
            }
            let mut current: Option<(String, Usage)> = None;
            for line in log.lines() {
                if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                    if let Some(done) = current.take() {
                        rows.push((op, arch, done.0, done.1));
                    }
                    current = Some((rest.split('\'').next().unwrap_or("?").to_string(), Usage::default()));
                } else if let Some((_, u)) = current.as_mut() {
                    if line.contains("stack frame") {
                        u.stack = number_before(line, "bytes stack frame").unwrap_or(0);
                        u.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                        u.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
                    } else if line.contains("Used") {
                        u.registers = number_before(line, "registers").unwrap_or(0);
                        u.smem = number_before(line, "bytes smem").unwrap_or(0);
                    }
                }
            }
            if let Some(done) = current.take() {
                rows.push((op, arch, done.0, done.1));
            }
        }
    }
    println!("| kernel | arch | registers | shared memory (bytes) | stack (bytes) | spills (bytes st/ld) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (_, arch, name, u) in &rows {
        println!(
            "| {name} | {arch} | {} | {} | {} | {}/{} |",
            u.registers, u.smem, u.stack, u.spill_stores, u.spill_loads
        );
        if u.stack > 0 || u.spill_stores > 0 || u.spill_loads > 0 {
            failures
                .push(format!("{name} on {arch}: stack {} B, spills {}/{} B", u.stack, u.spill_stores, u.spill_loads));
        }
    }
    let expected = ARCHS.len() * Op::ALL.iter().map(|&op| st_kernels::launch::kernel_names(op).len()).sum::<usize>();
    if rows.len() != expected {
        failures.push(format!("ptxas reported {} kernels, expected {expected}", rows.len()));
    }
    if !failures.is_empty() {
        return Err(format!("local memory or spills:\n{}", failures.join("\n")).into());
    }
    println!("{} kernels compiled for {:?}: no spills, no local memory", rows.len(), ARCHS);
    Ok(())
}
