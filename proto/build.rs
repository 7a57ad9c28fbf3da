fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc ships inside the protoc-bin-vendored crate: no system protobuf-compiler needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/weft.proto");
    tonic_prost_build::configure().compile_protos(&["proto/weft.proto"], &["proto"])?;
    Ok(())
}
