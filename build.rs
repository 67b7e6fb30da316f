//! Embeds the Envoy API descriptor set that ships inside the `envoy-types` crate, so the
//! proto3 JSON/YAML decoder and the typed structs always come from the same crate version.
use std::{env, fs, path::PathBuf, process::Command};

use prost::Message;
use prost_types::FileDescriptorSet;

#[path = "src/istio/protos.rs"]
mod istio_protos;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=src/istio/protos.rs");
    git_sha();
    let src = envoy_types_dir().join("src/generated/types.bin");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("envoy_descriptors.bin.zz");
    let raw = fs::read(&src).unwrap_or_else(|e| panic!("reading {} failed: {e}", src.display()));
    // The set carries every proto comment (source_code_info: 2.7 of its 3.4 MB), which
    // the decoded pool would keep in memory for nothing: pilotfish never reads them.
    let mut set = FileDescriptorSet::decode(raw.as_slice()).expect("types.bin decodes");
    for file in &mut set.file {
        file.source_code_info = None;
    }
    set.file.extend(typed_structs());
    set.file.push(ip_matcher());
    set.file.extend(istio_protos::files());
    // Stored compressed (0.6 MB -> about 0.1 MB): decoding the pool reads all of it, and
    // every page read stays resident for the life of the process.
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(&set.encode_to_vec(), 9);
    fs::write(&out, packed).unwrap_or_else(|e| panic!("writing {} failed: {e}", out.display()));
}

/// The commit being built, for the version string (`--version`, `/server_info`), as
/// Envoy prints its own: `$PILOTFISH_GIT_SHA` when set (image builds have no `.git`),
/// else git's HEAD, else 40 zeros.
fn git_sha() {
    println!("cargo:rerun-if-env-changed=PILOTFISH_GIT_SHA");
    let given = env::var("PILOTFISH_GIT_SHA")
        .ok()
        .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let sha = given
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() == 40)
        })
        .unwrap_or_else(|| "0".repeat(40));
    println!("cargo:rustc-env=PILOTFISH_GIT_SHA={sha}");
    for f in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}

/// `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct`: the wrappers Istio puts
/// around extension configs (a type URL and the config as a `Struct`). envoy-types does
/// not carry them; both are two fields, described here rather than compiled from files.
fn typed_structs() -> Vec<prost_types::FileDescriptorProto> {
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto,
        field_descriptor_proto::{Label, Type},
    };
    let file = |name: &str, package: &str| FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".into()),
            field: vec![
                FieldDescriptorProto {
                    name: Some("type_url".into()),
                    json_name: Some("typeUrl".into()),
                    number: Some(1),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::String as i32),
                    ..Default::default()
                },
                FieldDescriptorProto {
                    name: Some("value".into()),
                    json_name: Some("value".into()),
                    number: Some(2),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::Message as i32),
                    type_name: Some(".google.protobuf.Struct".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![
        file("udpa/type/v1/typed_struct.proto", "udpa.type.v1"),
        file("xds/type/v3/typed_struct.proto", "xds.type.v3"),
    ]
}

/// `xds.type.matcher.v3.IPMatcher`, the IP range tree of `filter_chain_matcher` (what
/// istiod's waypoints send); envoy-types does not carry its file.
fn ip_matcher() -> prost_types::FileDescriptorProto {
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto,
        field_descriptor_proto::{Label, Type},
    };
    let field = |name: &str, json: &str, number: i32, label: Label, ty: Type, type_name: &str| {
        FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(json.into()),
            number: Some(number),
            label: Some(label as i32),
            r#type: Some(ty as i32),
            type_name: (!type_name.is_empty()).then(|| type_name.into()),
            ..Default::default()
        }
    };
    let range = DescriptorProto {
        name: Some("IPRangeMatcher".into()),
        field: vec![
            field(
                "ranges",
                "ranges",
                1,
                Label::Repeated,
                Type::Message,
                ".xds.core.v3.CidrRange",
            ),
            field(
                "on_match",
                "onMatch",
                2,
                Label::Optional,
                Type::Message,
                ".xds.type.matcher.v3.Matcher.OnMatch",
            ),
            field("exclusive", "exclusive", 3, Label::Optional, Type::Bool, ""),
        ],
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some("xds/type/matcher/v3/ip.proto".into()),
        package: Some("xds.type.matcher.v3".into()),
        dependency: vec![
            "xds/core/v3/cidr.proto".into(),
            "xds/type/matcher/v3/matcher.proto".into(),
        ],
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("IPMatcher".into()),
            field: vec![field(
                "range_matchers",
                "rangeMatchers",
                1,
                Label::Repeated,
                Type::Message,
                ".xds.type.matcher.v3.IPMatcher.IPRangeMatcher",
            )],
            nested_type: vec![range],
            ..Default::default()
        }],
        ..Default::default()
    }
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
