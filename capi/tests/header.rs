//! include/st.h is exactly what cbindgen makes of the current capi/src (ST_BLESS=1 rewrites it).

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut made = Vec::new();
    cbindgen::Builder::new().with_crate(crate_dir).with_config(config).generate().unwrap().write(&mut made);
    let made = String::from_utf8(made).unwrap();
    let path = crate_dir.join("../include/st.h");
    if std::env::var_os("ST_BLESS").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == made,
        "{} is not what cbindgen makes of capi/src: run `ST_BLESS=1 cargo test -p st-capi --test header`",
        path.display()
    );
}
