//! `Device::auto` falls back to the CPU, with its one-line notice and no panic text,
//! when the CUDA libraries load but lack entry points (an old or broken driver): a
//! stub `libcuda.so` / `libcublas.so` / `libnvrtc.so` exporting only a few symbols is
//! built with the system C compiler and put first on `LD_LIBRARY_PATH` of a child
//! process (this test binary, re-run), which calls `Device::auto`.

use std::process::Command;

const CHILD: &str = "MEP_FALLBACK_CHILD";

/// A driver, cuBLAS and NVRTC that load, initialise and report one device, and have
/// nothing else.
const STUB: &str = r#"
int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDeviceGetCount(int* n) { *n = 1; return 0; }
int cuDriverGetVersion(int* v) { *v = 13000; return 0; }
int cublasCreate_v2(void** h) { *h = 0; return 0; }
int nvrtcVersion(int* a, int* b) { *a = 13; *b = 0; return 0; }
"#;

#[test]
fn auto_falls_back_quietly_when_the_driver_lacks_symbols() {
    if std::env::var_os(CHILD).is_some() {
        println!("DEVICE={}", mep::Device::auto());
        return;
    }
    let dir = std::env::temp_dir().join(format!("mep-stub-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("stub.c");
    std::fs::write(&src, STUB).unwrap();
    let lib = dir.join("libstub.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build the stub driver: {e}"));
    assert!(built.success(), "{cc} failed to build the stub driver");
    for name in [
        "libcuda.so",
        "libcuda.so.1",
        "libcublas.so",
        "libcublas.so.13",
        "libnvrtc.so",
        "libnvrtc.so.13",
    ] {
        let _ = std::fs::remove_file(dir.join(name));
        std::os::unix::fs::symlink(&lib, dir.join(name)).unwrap();
    }
    let path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", dir.display()),
        _ => dir.display().to_string(),
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "auto_falls_back_quietly_when_the_driver_lacks_symbols",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("LD_LIBRARY_PATH", path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("DEVICE=cpu"),
        "did not fall back to the CPU:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("mep: using the CPU backend") && stderr.contains("lacks"),
        "no notice naming the missing entry points:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Missing symbol"),
        "panic text reached the user:\n{stderr}"
    );
}
