//! The output grammar's byte-level rules fed arbitrary bytes: accepting or refusing a byte never
//! panics, and every prefix the rules accept can still be completed — held to finishing mode (what a
//! generation whose tokens run out gets), within the rules' own reserve of bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st::decode::grammar::{Bounds, OutputSpec, SceneRules};

fuzz_target!(|data: &[u8]| {
    // [settings, question, bytes to feed]: width, height and the bounds from the settings.
    let p = st_fuzz::parts(data, 3);
    let s = p[0];
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let size = (1 + u32::from(st_fuzz::u16_at(s, 0)), 1 + u32::from(st_fuzz::u16_at(s, 2)));
    let bounds = Bounds {
        max_objects: u32::from(at(4) % 6),
        max_relationships: u32::from(at(5) % 6),
        max_label_bytes: 1 + at(6) % 32,
        max_id_digits: 1 + at(7) % 3,
        max_predicate_bytes: 1 + at(8) % 48,
        ..Bounds::default()
    };
    let question = String::from_utf8_lossy(p[1]);
    let rules = SceneRules::new(OutputSpec::new(size, &question, bounds));
    let mut state = rules.initial();
    for &b in p[2] {
        if let Some(next) = rules.step(&state, b) {
            state = next;
        }
    }
    let reserve = rules.finish_reserve() as usize;
    let completion = rules.completion(&state, reserve, 1 << 22);
    assert!(
        completion.is_some(),
        "an accepted prefix has no completion within {reserve} bytes; at {:?}",
        state.phase()
    );
});
