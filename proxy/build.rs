//! Generates the gRPC test service (`tests/proto/echo.proto`) for the integration tests,
//! with a vendored `protoc` so the build needs nothing installed.

fn main() {
    println!("cargo:rerun-if-changed=tests/proto/echo.proto");
    if std::env::var_os("PROTOC").is_none() {
        let protoc =
            protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
        std::env::set_var("PROTOC", protoc);
    }
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["tests/proto/echo.proto"], &["tests/proto"])
        .expect("tests/proto/echo.proto compiles");
}
