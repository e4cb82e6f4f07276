//! The `mep-mnist` binary's contract: `--json` prints one object per epoch with the
//! documented keys, `--save` writes weights that load back, and bad input exits
//! non-zero with a message that names the problem and the fix.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mep-mnist"))
}

/// `mep-mnist --device cpu --threads 1 --json --data-dir DIR ARGS…`, which must succeed;
/// returns its standard output.
fn run_json(dir: &Path, args: &[&str]) -> String {
    let out = bin()
        .args(["--device", "cpu", "--threads", "1", "--json", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mnist_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MEP_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist"));
    if mep::Mnist::load(&dir).is_ok() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: MNIST not found in {} (run scripts/fetch-mnist.sh)",
            dir.display()
        );
        None
    }
}

#[test]
fn json_output_has_one_object_per_epoch_with_the_documented_keys() {
    let Some(dir) = mnist_dir() else { return };
    let save = std::env::temp_dir().join(format!("mep-cli-{}.safetensors", std::process::id()));
    let save_arg = save.to_str().unwrap();
    let stdout = run_json(&dir, &["--epochs", "2", "--train-subset", "3000", "--save", save_arg]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "expected one JSON line per epoch, got:\n{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["epoch"], i as u64 + 1);
        for key in [
            "train_loss",
            "train_acc",
            "test_acc",
            "epoch_seconds",
            "samples_per_sec",
        ] {
            assert!(
                v[key].as_f64().is_some_and(f64::is_finite),
                "key {key} missing in {line}"
            );
        }
        for key in ["train_acc", "test_acc"] {
            let a = v[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{key} = {a} is not a fraction");
        }
        assert!(
            v["test_acc"].as_f64().unwrap() > 0.8,
            "3000 samples should reach > 80%: {line}"
        );
    }
    // The saved weights load into the same network and give the reported accuracy.
    let mut model = mep::Sequential::new(&mep::Device::Cpu)
        .flatten()
        .linear(784, 128)
        .relu()
        .linear(128, 10)
        .build(1)
        .unwrap();
    model.load_weights(&save).unwrap();
    let test = mep::Mnist::load(&dir).unwrap().test;
    let acc = model.accuracy(&test).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert!(
        (acc - last["test_acc"].as_f64().unwrap()).abs() < 1e-9,
        "reloaded accuracy {acc} differs"
    );
    std::fs::remove_file(&save).ok();
}

fn fails_with(args: &[&str], needle: &str) {
    let out = bin().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: stderr does not mention `{needle}`:\n{err}"
    );
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    fails_with(
        &["--device", "cpu", "--data-dir", "/nonexistent/mnist"],
        "scripts/fetch-mnist.sh",
    );
    let Some(dir) = mnist_dir() else { return };
    let d = dir.to_str().unwrap();
    fails_with(&["--device", "cpu", "--data-dir", d, "--beta=-1"], "beta");
    fails_with(
        &[
            "--device",
            "cpu",
            "--data-dir",
            d,
            "--optimizer",
            "adam",
            "--momentum",
            "0.5",
        ],
        "momentum",
    );
    fails_with(&["--device", "cpu", "--data-dir", d, "--batch-size", "0"], "batch_size");
    fails_with(&["--device", "cpu", "--data-dir", d, "--hidden", "12x"], "hidden");
    fails_with(
        &[
            "--device",
            "cpu",
            "--data-dir",
            d,
            "--mode",
            "backprop",
            "--energy",
            "hopfield",
        ],
        "mode",
    );
    fails_with(&["--device", "nonsense"], "device");
}

#[test]
fn gemm_rate_reports_the_training_rate_against_the_gemms_alone() {
    let Some(dir) = mnist_dir() else { return };
    let stdout = run_json(&dir, &["--gemm-rate", "--train-subset", "1000"]);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rate = last["gemm_rate_gflop_per_sec"].as_f64().unwrap();
    let train = last["train_gflop_per_sec"].as_f64().unwrap();
    let frac = last["fraction_of_gemm_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && train > 0.0, "{last}");
    assert!((frac - train / rate).abs() < 1e-9 && frac > 0.0 && frac < 1.5, "{last}");
}
