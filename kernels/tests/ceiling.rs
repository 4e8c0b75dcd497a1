//! The ceiling on the CPU kernels' builds (`st_kernels::cpu::ceiling`): parsed from its names, refused
//! for a build this CPU lacks, and obeyed by every kernel's choice of build. One test function: the
//! ceiling is process-wide.

use st_kernels::cpu::{self, AttentionBuild, BuildCeiling, Int8Isa, Isa};

#[test]
fn the_ceiling_caps_every_kernels_build() {
    for (s, want) in [
        ("portable", BuildCeiling::Portable),
        ("AVX2", BuildCeiling::Avx2),
        ("avx-vnni", BuildCeiling::AvxVnni),
        (" avx512 ", BuildCeiling::Avx512),
    ] {
        assert_eq!(BuildCeiling::parse(s, "ST_CPU_ISA").unwrap(), want, "{s:?}");
    }
    let err = BuildCeiling::parse("sse4", "ST_CPU_ISA").unwrap_err().to_string();
    assert!(err.contains("ST_CPU_ISA") && err.contains("sse4") && err.contains(BuildCeiling::NAMES), "{err}");

    let best = (cpu::isa(), cpu::int8_isa(), AttentionBuild::best());
    assert_eq!(cpu::build_ceiling(), None);
    let cases = [
        (BuildCeiling::Portable, Isa::Baseline, Int8Isa::Baseline, AttentionBuild::Portable),
        (BuildCeiling::Avx2, Isa::Avx2Fma, Int8Isa::Avx2, AttentionBuild::Avx2),
        (BuildCeiling::AvxVnni, Isa::Avx2Fma, Int8Isa::AvxVnni, AttentionBuild::Avx2),
        (BuildCeiling::Avx512, best.0, best.1, best.2),
    ];
    for (ceiling, isa, int8, attention) in cases {
        if !ceiling.available() {
            // (On an AVX2-only CPU AVX-VNNI is refused after the AVX2 case has set its ceiling.)
            let before = cpu::build_ceiling();
            let err = cpu::set_build_ceiling(Some(ceiling)).unwrap_err().to_string();
            assert!(err.contains("lacks"), "{ceiling:?}: {err}");
            assert_eq!(cpu::build_ceiling(), before, "a refused ceiling leaves the one set before");
            continue;
        }
        cpu::set_build_ceiling(Some(ceiling)).unwrap();
        assert_eq!(cpu::build_ceiling(), Some(ceiling));
        assert_eq!((cpu::isa(), cpu::int8_isa(), AttentionBuild::best()), (isa, int8, attention), "{ceiling:?}");
        assert!(int8.available() && attention.available());
    }
    cpu::set_build_ceiling(None).unwrap();
    assert_eq!((cpu::isa(), cpu::int8_isa(), AttentionBuild::best()), best);
}
