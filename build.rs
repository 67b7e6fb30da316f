//! Embeds the Envoy API descriptor set that ships inside the `envoy-types` crate, so the
//! proto3 JSON/YAML decoder and the typed structs always come from the same crate version.
use std::{env, fs, path::PathBuf, process::Command};

use prost::Message;
use prost_types::FileDescriptorSet;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let src = envoy_types_dir().join("src/generated/types.bin");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("envoy_descriptors.bin.zz");
    let raw = fs::read(&src).unwrap_or_else(|e| panic!("reading {} failed: {e}", src.display()));
    // The set carries every proto comment (source_code_info: 2.7 of its 3.4 MB), which
    // the decoded pool would keep in memory for nothing: pilotfish never reads them.
    let mut set = FileDescriptorSet::decode(raw.as_slice()).expect("types.bin decodes");
    for file in &mut set.file {
        file.source_code_info = None;
    }
    // Stored compressed (0.6 MB -> about 0.1 MB): decoding the pool reads all of it, and
    // every page read stays resident for the life of the process.
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(&set.encode_to_vec(), 9);
    fs::write(&out, packed).unwrap_or_else(|e| panic!("writing {} failed: {e}", out.display()));
}

/// The source folder of the `envoy-types` package this build resolved to.
fn envoy_types_dir() -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").unwrap();
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(&manifest_dir)
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in cargo metadata");
    PathBuf::from(pkg["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}
