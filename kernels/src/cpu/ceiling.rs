//! A ceiling on the builds the CPU kernels pick. By default every kernel runs the fastest build this CPU
//! has; a ceiling makes the whole process run the builds of a smaller CPU instead — `avx2` runs the
//! int4/int8 tiles, the attention and the dequant loop exactly as on an AVX2-only AMD EPYC — so that
//! the builds can be measured and checked in the engine on any host (the runtime reads it from
//! `ST_CPU_ISA`). Process-wide: the kernels are free functions called from ORT's threads.

use super::features::Features;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// The largest build the kernels may pick, smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BuildCeiling {
    /// Plain Rust everywhere.
    Portable,
    /// AVX2 + FMA (the tiles' `vpmaddubsw` loop, the attention's 8-lane loop).
    Avx2,
    /// AVX2 + FMA + AVX-VNNI (the tiles' VEX `vpdpbusd`; the attention stays 8 lanes).
    AvxVnni,
    /// AVX-512 (VNNI where the CPU has it): no ceiling below what an AVX-512 CPU runs.
    Avx512,
}

/// No ceiling set: every kernel picks the best build this CPU runs.
const NONE: u8 = u8::MAX;
static CEILING: AtomicU8 = AtomicU8::new(NONE);

impl BuildCeiling {
    /// The accepted names, in [`BuildCeiling::parse`]'s spelling.
    pub const NAMES: &'static str = "portable, avx2, avxvnni, avx512";

    /// `portable`, `avx2`, `avxvnni` or `avx512` (case-insensitive); `what` names the source in the error.
    pub fn parse(s: &str, what: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Ok(BuildCeiling::Portable),
            "avx2" => Ok(BuildCeiling::Avx2),
            "avxvnni" | "avx-vnni" => Ok(BuildCeiling::AvxVnni),
            "avx512" | "avx-512" => Ok(BuildCeiling::Avx512),
            _ => Err(Error::UnknownValue { name: what.to_string(), value: s.to_string(), expected: Self::NAMES }),
        }
    }

    /// The ceiling's own build and the CPU features it needs (none for the portable one).
    fn build(self) -> (&'static str, Option<Features>) {
        match self {
            BuildCeiling::Portable => ("portable", None),
            BuildCeiling::Avx2 => ("AVX2", Some(Features::Avx2)),
            BuildCeiling::AvxVnni => ("AVX-VNNI", Some(Features::AvxVnni)),
            BuildCeiling::Avx512 => ("AVX-512", Some(Features::Avx512)),
        }
    }

    /// Whether this CPU runs the ceiling's own build.
    pub fn available(self) -> bool {
        super::features::runs(self.build().1)
    }
}

/// Caps every CPU kernel's build at `ceiling` from now on, process-wide (`None`: the best this CPU runs).
/// A ceiling whose own build this CPU lacks is an error (running "as an AVX-512 CPU" on an AVX2 one would
/// silently measure AVX2).
pub fn set_build_ceiling(ceiling: Option<BuildCeiling>) -> Result<()> {
    if let Some(c) = ceiling
        && !c.available()
    {
        return Err(super::features::unsupported("CPU kernels", c.build()));
    }
    CEILING.store(ceiling.map_or(NONE, |c| c as u8), Ordering::Relaxed);
    Ok(())
}

/// The ceiling set by [`set_build_ceiling`], if any.
pub fn build_ceiling() -> Option<BuildCeiling> {
    match CEILING.load(Ordering::Relaxed) {
        0 => Some(BuildCeiling::Portable),
        1 => Some(BuildCeiling::Avx2),
        2 => Some(BuildCeiling::AvxVnni),
        3 => Some(BuildCeiling::Avx512),
        _ => None,
    }
}

/// Whether a build that needs `level` may run under the ceiling.
pub(crate) fn allows(level: BuildCeiling) -> bool {
    build_ceiling().is_none_or(|c| level <= c)
}
