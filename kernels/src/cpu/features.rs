//! What the CPU kernels' SIMD builds need of this CPU, tested in one place: every build's
//! `available()` (the int8 loops, the tiles, the attention, the dequant loop, the build ceiling) asks
//! for one of these sets, so a build never runs on a CPU that lacks a feature its
//! `#[target_feature]` list enables.

use crate::error::Error;

/// Whether this CPU runs a build that needs `needs` (None: the portable build, which needs nothing).
pub(crate) fn runs(needs: Option<Features>) -> bool {
    needs.is_none_or(Features::present)
}

/// The error for running `kernel`'s build `name`, which needs `needs`, on a CPU without them.
pub(crate) fn unsupported(kernel: &'static str, (name, needs): (&'static str, Option<Features>)) -> Error {
    Error::Unsupported { kernel, build: name, features: needs.map_or("nothing", Features::names) }
}

/// A set of x86 features one or more builds need; each includes the ones listed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Features {
    /// AVX2 + FMA + F16C: every 256-bit build (f16 scales widen with `vcvtph2ps`).
    Avx2,
    /// AVX-VNNI on top of [`Features::Avx2`]: the VEX `vpdpbusd`.
    AvxVnni,
    /// AVX-512 F + BW + VL on top of [`Features::Avx2`]: every 512-bit build.
    Avx512,
    /// AVX-512 VNNI on top of [`Features::Avx512`]: the 512-bit `vpdpbusd`.
    Avx512Vnni,
}

impl Features {
    /// Whether this CPU has the whole set (`std` caches the CPUID answers).
    pub(crate) fn present(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            match self {
                Features::Avx2 => avx2,
                Features::AvxVnni => avx2 && has!("avxvnni"),
                Features::Avx512 => avx512,
                Features::Avx512Vnni => avx512 && has!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// The set as an error message names it.
    pub(crate) fn names(self) -> &'static str {
        match self {
            Features::Avx2 => "avx2 + fma + f16c",
            Features::AvxVnni => "avxvnni + avx2 + fma + f16c",
            Features::Avx512 => "avx512f + avx512bw + avx512vl + avx2 + fma + f16c",
            Features::Avx512Vnni => "avx512f + avx512bw + avx512vl + avx512vnni + avx2 + fma + f16c",
        }
    }
}
