//! What the AVX2 int4 tiles loop's instructions alone cost on this core, without memory: one 4-tile
//! decode step of it (256 weight bytes: 8 `vpsrlw`, 16 `vpand`, 16 `vpmaddubsw`, 16 `vpaddw`, the
//! weights and activations in registers), then only its multiplies and adds, only its nibble split and
//! adds, only its multiplies, in cycles at the clock measured on a chain of dependent adds. Where the whole
//! mix takes longer than the core's share of the memory bandwidth allows for 256 bytes, decode is
//! compute-bound on this CPU (docs/KERNELS.md#the-decode-step-outside-ort).
//!
//!   cargo run --release -p st-kernels --example avx2_mix

#[cfg(target_arch = "x86_64")]
mod mix {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    const ITERS: u64 = 20_000_000;

    /// Cycles per second, from a chain of dependent 1-cycle adds.
    pub fn clock_hz() -> f64 {
        let n: u64 = 1_000_000_000;
        let t = Instant::now();
        let mut x = 0u64;
        // SAFETY: register arithmetic only.
        unsafe {
            asm!("2:", "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1", "sub {n}, 4", "jnz 2b",
                 x = inout(reg) x, n = inout(reg) n => _, options(nomem, nostack));
        }
        std::hint::black_box(x);
        n as f64 / t.elapsed().as_secs_f64()
    }

    /// Keeps the 8 weight registers opaque to the optimiser (no loads, no stores).
    macro_rules! opaque {
        ($w:ident) => {
            asm!("/* {0} {1} {2} {3} {4} {5} {6} {7} */", inout(ymm_reg) $w[0], inout(ymm_reg) $w[1], inout(ymm_reg) $w[2], inout(ymm_reg) $w[3],
                 inout(ymm_reg) $w[4], inout(ymm_reg) $w[5], inout(ymm_reg) $w[6], inout(ymm_reg) $w[7],
                 options(nomem, nostack, preserves_flags))
        };
    }

    /// Prints the cycles of `ITERS` iterations of `$body` (a half's work: `$acc` the half's i16
    /// accumulator, `$r` its 32 weight bytes) over a 4-tile step's 8 halves. (A macro, not a closure:
    /// closures do not inherit the caller's target features, and their intrinsics would not inline.)
    macro_rules! case {
        ($name:expr, $hz:expr, |$acc:ident, $r:ident| $body:expr) => {{
            let mut w: [__m256i; 8] = std::array::from_fn(|i| _mm256_set1_epi8(17 * i as i8));
            let mut accs = [_mm256_setzero_si256(); 8];
            let t = Instant::now();
            for _ in 0..ITERS {
                for h in 0..8 {
                    let ($acc, $r) = (accs[h], w[h]);
                    accs[h] = $body;
                }
                // SAFETY: register constraints only.
                unsafe { opaque!(w) };
            }
            let s = t.elapsed().as_secs_f64() / ITERS as f64;
            std::hint::black_box(accs);
            println!(
                "{:<42} {:6.1} cycles a 4-tile step, {:5.1} GB/s of int4 weights",
                $name,
                s * $hz,
                256.0 / s / 1e9
            );
        }};
    }

    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn report(hz: f64) {
        let (m, a0, a1) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3), _mm256_set1_epi8(-5));
        case!("the tiles step (srl, and, maddubs, add)", hz, |acc, r| {
            let (lo, hi) = (_mm256_and_si256(r, m), _mm256_and_si256(_mm256_srli_epi16(r, 4), m));
            let acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(lo, a0));
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(hi, a1))
        });
        case!("only its maddubs + add", hz, |acc, r| {
            let acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(r, a0));
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(r, a1))
        });
        case!("only its nibble split + add", hz, |acc, r| {
            let (lo, hi) = (_mm256_and_si256(r, m), _mm256_and_si256(_mm256_srli_epi16(r, 4), m));
            _mm256_add_epi16(_mm256_add_epi16(acc, lo), hi)
        });
        case!("only its 16 vpmaddubsw", hz, |acc, r| _mm256_maddubs_epi16(_mm256_maddubs_epi16(r, a0), acc));
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")) {
            println!("this CPU lacks AVX2");
            return;
        }
        let hz = mix::clock_hz();
        println!("clock {:.2} GHz (a chain of dependent adds)", hz / 1e9);
        // SAFETY: AVX2 checked above.
        unsafe { mix::report(hz) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only");
}
