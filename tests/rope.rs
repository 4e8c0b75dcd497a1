//! M-RoPE position ids and deltas against transformers' `get_rope_index`.

mod common;

use common::{golden, model, read_npy};
use ndarray::{Array2, Array3};
use st::rope::mrope_positions;

fn check(prefix: &str, image_token: u32) {
    let sep = if prefix.ends_with('/') { "" } else { "." };
    let ids: Array2<i64> = read_npy(&golden(&format!("{prefix}{sep}input_ids.npy")));
    let grids: Array2<i64> = read_npy(&golden(&format!("{prefix}{sep}image_grid_thw.npy")));
    let want: Array3<i64> = read_npy(&golden(&format!("{prefix}{sep}position_ids.npy")));
    let delta: Array2<i64> = read_npy(&golden(&format!("{prefix}{sep}rope_deltas.npy")));
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let grids: Vec<[usize; 3]> =
        grids.rows().into_iter().map(|r| [r[0] as usize, r[1] as usize, r[2] as usize]).collect();
    let got = mrope_positions(&ids, image_token, &grids, 2).unwrap();
    assert_eq!(got.ids, want.index_axis(ndarray::Axis(1), 0), "{prefix}");
    assert_eq!(got.delta, delta[[0, 0]], "{prefix}");
}

#[test]
fn matches_reference_layouts() {
    let tok = st::prompt::TextTokenizer::from_dir(&model("tiny")).unwrap();
    for case in ["image_first", "text_first", "two_images"] {
        check(&format!("rope/{case}"), tok.special.image_pad);
    }
    check("tiny/", tok.special.image_pad);
    let tok_b = st::prompt::TextTokenizer::from_dir(&model("tiny-b")).unwrap();
    check("tiny-b/", tok_b.special.image_pad);
}

#[test]
fn mismatched_grids_are_errors() {
    let ids = [1, 2, 9, 9, 9, 9, 3];
    assert!(mrope_positions(&ids, 9, &[[1, 4, 4]], 2).is_ok());
    let e = mrope_positions(&ids, 9, &[[1, 4, 6]], 2).unwrap_err().to_string();
    assert!(e.contains("placeholder"), "{e}");
    let e = mrope_positions(&ids, 9, &[], 2).unwrap_err().to_string();
    assert!(e.contains("no image grid"), "{e}");
    let e = mrope_positions(&ids, 9, &[[1, 4, 4], [1, 2, 2]], 2).unwrap_err().to_string();
    assert!(e.contains("fewer image placeholders"), "{e}");
    let e = mrope_positions(&ids, 9, &[[1, 3, 4]], 2).unwrap_err().to_string();
    assert!(e.contains("merge size"), "{e}");
}
