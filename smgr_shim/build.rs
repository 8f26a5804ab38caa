//! Compiles the C shim against the (patched) server headers of the pg_config
//! that pgrx builds for, and binds the shim's plain-C header with bindgen.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn pg_config() -> String {
    // cargo-pgrx sets PGRX_PG_CONFIG_PATH; the project's scripts set PG_CONFIG.
    for var in ["PGRX_PG_CONFIG_PATH", "PG_CONFIG"] {
        println!("cargo:rerun-if-env-changed={var}");
        if let Ok(p) = env::var(var) {
            if !p.is_empty() {
                return p;
            }
        }
    }
    panic!(
        "set PG_CONFIG to the patched PostgreSQL's pg_config \
         (scripts/setup.sh builds it; see README.md)"
    );
}

fn main() {
    let pg_config = pg_config();
    let out = Command::new(&pg_config)
        .arg("--includedir-server")
        .output()
        .unwrap_or_else(|e| panic!("running {pg_config}: {e}"));
    assert!(
        out.status.success(),
        "{pg_config} --includedir-server failed"
    );
    let include = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let smgr_h = PathBuf::from(&include).join("storage/smgr.h");
    let header = std::fs::read_to_string(&smgr_h)
        .unwrap_or_else(|e| panic!("reading {}: {e}", smgr_h.display()));
    assert!(
        header.contains("smgr_select_hook"),
        "{} lacks smgr_select_hook: PostgreSQL was built without gp_patches/",
        smgr_h.display()
    );
    let md_h = PathBuf::from(&include).join("storage/md.h");
    let md = std::fs::read_to_string(&md_h)
        .unwrap_or_else(|e| panic!("reading {}: {e}", md_h.display()));
    assert!(
        md.contains("md_segment_blocks_hook"),
        "{} lacks md_segment_blocks_hook: PostgreSQL was built without gp_patches/0002",
        md_h.display()
    );
    let xlog_h = PathBuf::from(&include).join("access/xlog.h");
    let xlog = std::fs::read_to_string(&xlog_h)
        .unwrap_or_else(|e| panic!("reading {}: {e}", xlog_h.display()));
    assert!(
        xlog.contains("backup_start_hook"),
        "{} lacks backup_start_hook: PostgreSQL was built without gp_patches/0003",
        xlog_h.display()
    );
    assert!(
        xlog.contains("checkpoint_hook"),
        "{} lacks checkpoint_hook: PostgreSQL was built without gp_patches/0004",
        xlog_h.display()
    );
    println!("cargo:rerun-if-changed={}", xlog_h.display());
    println!("cargo:rerun-if-changed={}", smgr_h.display());
    println!("cargo:rerun-if-changed={}", md_h.display());
    println!("cargo:rerun-if-changed=src/yezzey_smgr.c");
    println!("cargo:rerun-if-changed=src/yezzey_smgr.h");
    println!("cargo:rerun-if-changed=src/yezzey_map.c");
    println!("cargo:rerun-if-changed=src/yezzey_utility.c");
    println!("cargo:rerun-if-changed=src/yezzey_backup.c");

    cc::Build::new()
        .file("src/yezzey_smgr.c")
        .file("src/yezzey_map.c")
        .file("src/yezzey_utility.c")
        .file("src/yezzey_backup.c")
        .include(&include)
        .include("src")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-fvisibility=hidden")
        .opt_level(2)
        .compile("yezzey_smgr");

    let bindings = bindgen::Builder::default()
        .header("src/yezzey_smgr.h")
        .allowlist_function("yz_.*")
        // The callbacks the extension implements: bound so that their
        // signatures are checked against the header (ext/src/ffi.rs).
        .allowlist_function("yezzey_.*")
        .override_abi(bindgen::Abi::CUnwind, "yezzey_.*")
        .allowlist_type("YzSmgrCall")
        .allowlist_type("YzSegInfo")
        .allowlist_type("YzLayerInfo")
        .allowlist_var("YZ_MAX_LAYERS")
        .allowlist_type("YzForkHead")
        .allowlist_type("YzForkState")
        .allowlist_type("YzRetiring")
        .allowlist_type("YzHold")
        .allowlist_type("YzMapUsage")
        .allowlist_var("yz_.*")
        .rustified_enum("YzSmgrCall")
        .rustified_enum("YzForkState")
        .rustified_enum("YzHold")
        .derive_default(true)
        .generate()
        .expect("bindgen on yezzey_smgr.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("writing bindings");
}
