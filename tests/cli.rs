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
        "scripts/fetch-mnist.sh /nonexistent/mnist`",
    );
    // Hyper-parameters only the optimizer's builder refuses are refused before the
    // data loads too (it is built on a stand-in first): a missing data directory
    // does not hide them.
    for (flags, name) in [
        (&["--optimizer", "adam", "--momentum", "0.5"][..], "momentum"),
        (&["--lr", "1e-50"][..], "lr"),
        (&["--ns-steps", "0"][..], "ns"),
        (&["--label-smoothing", "-0.1"][..], "smoothing"),
        (&["--spectral-layers", "couplings", "--hidden", ""][..], "couplings"),
    ] {
        let args = [&["--device", "cpu", "--data-dir", "/nonexistent/mnist"][..], flags].concat();
        let out = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(name) && !err.contains("not found"),
            "{flags:?}: {err}"
        );
    }
    // A checkpoint to resume that does not exist is named before the data loads.
    fails_with(
        &[
            "--device",
            "cpu",
            "--data-dir",
            "/nonexistent/mnist",
            "--resume",
            "/nonexistent/ck.safetensors",
        ],
        "nothing to resume",
    );
    // Arguments are checked before the data loads: a missing data directory is not
    // what a zero batch size reports.
    fails_with(
        &[
            "--device",
            "cpu",
            "--data-dir",
            "/nonexistent/mnist",
            "--batch-size",
            "0",
        ],
        "`batch-size`: 0",
    );
    let Some(dir) = mnist_dir() else { return };
    let d = dir.to_str().unwrap();
    fails_with(&["--device", "cpu", "--data-dir", d, "--beta=-1"], "beta");
    // A negative number is a value, checked against its range, not an unknown flag.
    fails_with(&["--device", "cpu", "--data-dir", d, "--lr", "-1"], "`lr`: -1");
    fails_with(&["--device", "cpu", "--data-dir", d, "--beta", "-0.5"], "`beta`: -0.5");
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
    fails_with(&["--device", "cpu", "--data-dir", d, "--hidden", "12x"], "hidden");
    // Empty entries are typos (only a lone empty value means no hidden layer).
    for typo in ["128,,64", ",", "64,"] {
        fails_with(&["--device", "cpu", "--data-dir", d, "--hidden", typo], "hidden");
    }
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

/// `--gemm-rate` reports the training FLOP rate, the rate of the same GEMM list
/// alone, and their ratio, consistently.
#[test]
fn gemm_rate_reports_the_training_rate_against_the_gemms_alone() {
    let Some(dir) = mnist_dir() else { return };
    let stdout = run_json(&dir, &["--gemm-rate", "--train-subset", "1000"]);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rate = last["gemm_rate_gflop_per_sec"].as_f64().unwrap();
    let train = last["train_gflop_per_sec"].as_f64().unwrap();
    let frac = last["fraction_of_gemm_rate"].as_f64().unwrap();
    assert!(
        rate > 0.0 && train > 0.0 && rate.is_finite() && train.is_finite(),
        "{last}"
    );
    // The report's arithmetic only: how the two rates compare is a timing, which a
    // loaded machine moves either way (a run beside CI measured the GEMMs alone at a
    // quarter of the training rate), so it belongs to BENCHMARKS.md, not here.
    assert!((frac - train / rate).abs() < 1e-9 * frac.max(1.0), "{last}");
}

/// Writes a separable synthetic IDX data set to `dir`: 8×8 images of 4 classes, class
/// `c` bright in quadrant `c` over random noise (fresh each run), `n` training and
/// `m` test samples.
fn write_quadrant_idx(dir: &Path, n: usize, m: usize, seed: u64) {
    let mut rng = mep::rng::Rng::new(seed);
    let mut split = |count: usize, images: &str, labels: &str| {
        let mut px = Vec::with_capacity(count * 64);
        let mut lbl = Vec::with_capacity(count);
        for i in 0..count {
            let c = if i < 4 { i } else { rng.below(4) as usize };
            lbl.push(c as u8);
            for y in 0..8 {
                for x in 0..8 {
                    let quadrant = (y / 4) * 2 + x / 4;
                    let noise = rng.below(90) as u8;
                    px.push(if quadrant == c { 140 + noise } else { noise });
                }
            }
        }
        mep::data::write_idx(&dir.join(images), &[count, 8, 8], &px).unwrap();
        mep::data::write_idx(&dir.join(labels), &[count], &lbl).unwrap();
    };
    split(n, "train-images-idx3-ubyte", "train-labels-idx1-ubyte");
    split(m, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
}

/// A seed for fresh random data each run (tests print it when they fail).
fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mep-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn dataset_idx_trains_on_your_own_files_and_says_what_it_loaded() {
    let dir = temp_dir("idx");
    let seed = fresh_seed();
    write_quadrant_idx(&dir, 400, 100, seed);
    let out = bin()
        .args([
            "--device",
            "cpu",
            "--threads",
            "1",
            "--json",
            "--dataset",
            "idx",
            "--data-dir",
        ])
        .arg(&dir)
        .args(["--hidden", "32", "--batch-size", "16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "seed {seed}: {stderr}");
    let notice = stderr.lines().find(|l| l.contains("loaded")).unwrap_or_default();
    for part in [
        "400 training + 100 test samples",
        "shape 8×8 (64 inputs)",
        "4 classes",
        "computed from the training split",
    ] {
        assert!(notice.contains(part), "notice {notice:?} lacks {part:?}");
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let acc = v["test_acc"].as_f64().unwrap();
    assert!(
        acc > 0.9,
        "seed {seed}: separable quadrants, chance 25%, got {acc}: {stdout}"
    );

    // --normalize is applied as given (and said so); MNIST's own data refuses it.
    let out = bin()
        .args([
            "--device",
            "cpu",
            "--threads",
            "1",
            "--json",
            "--dataset",
            "idx",
            "--data-dir",
        ])
        .arg(&dir)
        .args(["--normalize", "0.5,0.25", "--hidden", "8", "--train-subset", "16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("mean 0.5 and std 0.25 (as given)"),
        "{stderr}"
    );
    let out = bin().args(["--normalize", "0.5,0.25"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--dataset idx"), "{stderr}");
    // Without --data-dir, --dataset idx has nothing to read.
    let out = bin().args(["--dataset", "idx"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--data-dir"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mep-mnist --device cpu --threads 1 --json --dataset idx --data-dir DIR --hidden 32
/// --batch-size 16 ARGS…`: (success, stdout, stderr). `--hidden 32` only where ARGS
/// give no --hidden, `--batch-size 16` only where they give none and train (not
/// `--epochs 0`, which refuses training options).
fn run_idx(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let eval_only = args.windows(2).any(|w| w == ["--epochs", "0"]);
    let mut defaults = Vec::new();
    if !args.contains(&"--hidden") {
        defaults.extend(["--hidden", "32"]);
    }
    if !args.contains(&"--batch-size") && !eval_only {
        defaults.extend(["--batch-size", "16"]);
    }
    let out = bin()
        .args([
            "--device",
            "cpu",
            "--threads",
            "1",
            "--json",
            "--dataset",
            "idx",
            "--data-dir",
        ])
        .arg(dir)
        .args(defaults)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok_idx(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_idx(dir, args);
    assert!(ok, "{args:?}: {stderr}");
    stdout
}

fn err_idx(dir: &Path, args: &[&str]) -> String {
    let (ok, _, stderr) = run_idx(dir, args);
    assert!(!ok, "{args:?} must fail");
    stderr
}

#[test]
fn save_resume_is_bit_identical_to_one_run_and_load_evaluates() {
    let dir = temp_dir("resume");
    let seed = fresh_seed();
    write_quadrant_idx(&dir, 200, 60, seed);
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    for (optimizer, schedule) in [("smep", "cosine"), ("adam", "cosine"), ("smep", "constant")] {
        let what = format!("{optimizer} {schedule} (seed {seed})");
        let common = ["--optimizer", optimizer, "--schedule", schedule, "--seed", "7"];
        fn cat<'x>(a: &[&'x str], b: &[&'x str]) -> Vec<&'x str> {
            [a, b].concat()
        }
        let whole = ok_idx(&dir, &cat(&common, &["--epochs", "2", "--save", a_s]));
        // Stopped after epoch 1 (for a cosine run: --epochs stays the run's total),
        // or, for a constant rate, a 1-epoch run extended to 2.
        let first: &[&str] = if schedule == "cosine" {
            &["--epochs", "2", "--stop-after", "1", "--save", b_s]
        } else {
            &["--epochs", "1", "--save", b_s]
        };
        let one = ok_idx(&dir, &cat(&common, first));
        assert_eq!(one.lines().count(), 1, "{what}: {one}");
        let (ok, two, stderr) = run_idx(&dir, &cat(&common, &["--epochs", "2", "--resume", b_s, "--save", b_s]));
        assert!(ok && stderr.contains("after epoch 1 of 2"), "{what}: {stderr}");
        let line =
            |s: &str, n: usize| -> serde_json::Value { serde_json::from_str(s.lines().nth(n).unwrap()).unwrap() };
        let (w2, r2) = (line(&whole, 1), line(&two, 0));
        assert_eq!(r2["epoch"], 2, "{what}: epochs count on from the checkpoint");
        for key in ["train_loss", "test_loss", "test_acc"] {
            assert_eq!(w2[key], r2[key], "{what}: {key}");
        }
        // The whole checkpoint (weights, optimizer state, run position) is byte for byte
        // the same.
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{what}: checkpoints differ"
        );
        // --load … --epochs 0 evaluates the saved model: the run's last test figures
        // (the training options of `common` do not apply, and are refused).
        let eval = ok_idx(&dir, &["--epochs", "0", "--load", b_s]);
        let e = line(&eval, 0);
        assert_eq!(
            (e["test_acc"].clone(), e["test_loss"].clone()),
            (w2["test_acc"].clone(), w2["test_loss"].clone())
        );
        assert_eq!(e["epochs_done"], 2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run stopped and resumed with the same --metrics continues its CSV: the rows of
/// the epochs the checkpoint holds are kept, rows an unfinished attempt wrote after
/// them are dropped, and the result equals one uninterrupted run's rows (times
/// aside). Batches of one sample reported every step make every window all right
/// or all wrong (a rounding error outside [0, 1] there once ended a healthy run).
/// Resuming a finished run evaluates, and --plot draws the kept rows.
#[test]
fn resumed_runs_continue_their_metrics_and_curves() {
    let dir = temp_dir("metrics-resume");
    let seed = fresh_seed();
    write_quadrant_idx(&dir, 120, 40, seed);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (ck, m, whole) = (path("ck.safetensors"), path("m.csv"), path("whole.csv"));
    let common = [
        "--batch-size",
        "1",
        "--report-every",
        "1",
        "--epochs",
        "2",
        "--seed",
        "3",
    ];
    fn cat<'x>(a: &[&'x str], b: &[&'x str]) -> Vec<&'x str> {
        [a, b].concat()
    }
    ok_idx(&dir, &cat(&common, &["--metrics", &whole]));
    ok_idx(
        &dir,
        &cat(&common, &["--stop-after", "1", "--save", &ck, "--metrics", &m]),
    );
    let rows = |p: &str| mep::metrics::read_csv(p).unwrap();
    let first = rows(&m);
    assert!(first.iter().all(|r| r.epoch == 1) && first.len() == 121, "seed {seed}");
    // An attempt at epoch 2 that wrote a row and died.
    let mut text = std::fs::read_to_string(&m).unwrap();
    text += "step,2,125,125,9,0,,,99999.000\n";
    std::fs::write(&m, text).unwrap();
    let (ok, stdout, stderr) = run_idx(
        &dir,
        &cat(
            &common,
            &[
                "--resume",
                &ck,
                "--save",
                &ck,
                "--metrics",
                &m,
                "--plot",
                &path("p.png"),
            ],
        ),
    );
    assert!(ok, "seed {seed}: {stderr}");
    assert!(stdout.contains("\"epoch\":2"), "{stdout}");
    let (resumed, want) = (rows(&m), rows(&whole));
    assert_eq!(
        &resumed[..first.len()],
        &first[..],
        "seed {seed}: the first epoch's rows are kept as they were"
    );
    assert_eq!(resumed.len(), want.len(), "seed {seed}");
    for (r, w) in resumed.iter().zip(&want) {
        let key = |r: &mep::metrics::MetricRow| {
            (
                r.kind,
                r.epoch,
                r.step,
                r.samples,
                r.train_loss,
                r.train_acc,
                r.test_loss,
                r.test_acc,
            )
        };
        assert_eq!(key(r), key(w), "seed {seed}");
        assert!((0.0..=1.0).contains(&r.train_acc));
    }
    assert!(
        resumed.windows(2).all(|w| w[0].seconds <= w[1].seconds),
        "times carry on"
    );
    // The run is finished: resuming it again only evaluates, keeps the CSV, and
    // draws the whole run's curves.
    let before = std::fs::read(&m).unwrap();
    let p2 = path("p2.png");
    let (ok, stdout, stderr) = run_idx(
        &dir,
        &cat(
            &common,
            &["--resume", &ck, "--save", &ck, "--metrics", &m, "--plot", &p2],
        ),
    );
    assert!(
        ok && stdout.contains("test_acc") && stderr.contains("evaluating only"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&m).unwrap(), before);
    assert!(Path::new(&p2).is_file());
    // Without --metrics there is nothing to draw: said, and the run still succeeds.
    let (ok, _, stderr) = run_idx(&dir, &cat(&common, &["--resume", &ck, "--plot", &path("p3.png")]));
    assert!(ok && stderr.contains("no curves to draw"), "{stderr}");
    assert!(!dir.join("p3.png").exists());
    // A missing checkpoint is named before the data loads.
    let err = err_idx(&dir, &cat(&common, &["--resume", &path("nope.safetensors")]));
    assert!(err.contains("`resume`") && err.contains("nothing to resume"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_another_model_optimizer_seed_or_data_by_name() {
    let dir = temp_dir("resume-refuse");
    write_quadrant_idx(&dir, 64, 16, 3);
    let ck = dir.join("ck.safetensors");
    let ck_s = ck.to_str().unwrap();
    ok_idx(&dir, &["--epochs", "1", "--save", ck_s]);
    for (args, names) in [
        (
            vec!["--hidden", "32,16"],
            vec!["arch", "64-32(relu)-4", "64-32(relu)-16(relu)-4"],
        ),
        (vec!["--optimizer", "adam"], vec!["optimizer configuration", "Adam"]),
        (vec!["--lr", "0.01"], vec!["lr: 0.05", "lr: 0.01"]),
        (vec!["--energy", "hopfield"], vec!["energy", "hopfield"]),
        (vec!["--seed", "5"], vec!["`seed`: 5", "shuffled with seed 0"]),
        (vec!["--train-subset", "32"], vec!["`train-subset`", "64"]),
        (vec!["--load", ck_s], vec!["`load`"]),
    ] {
        let err = err_idx(&dir, &[&args[..], &["--epochs", "2", "--resume", ck_s]].concat());
        for n in names {
            assert!(err.contains(n), "{args:?}: {err} lacks {n}");
        }
    }
    // Data of another shape: both sizes named.
    let other = temp_dir("resume-other");
    let mut rng = mep::rng::Rng::new(1);
    for (img, lbl, n) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 20),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 8),
    ] {
        let px: Vec<u8> = (0..n * 36).map(|_| rng.below(256) as u8).collect();
        let lb: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        mep::data::write_idx(&other.join(img), &[n, 6, 6], &px).unwrap();
        mep::data::write_idx(&other.join(lbl), &[n], &lb).unwrap();
    }
    for mode in [["--resume", ck_s], ["--load", ck_s]] {
        let epochs = if mode[0] == "--load" { "0" } else { "2" };
        let err = err_idx(&other, &[&mode[..], &["--epochs", epochs]].concat());
        assert!(
            err.contains("checkpoint has 64 inputs but the data set has 36") && err.contains("8×8"),
            "{mode:?}: {err}"
        );
    }
    // The same data normalised otherwise: the weights expect the training scale, so
    // both a resume and a load are refused, naming the checkpoint's normalisation
    // (computed from these training pixels, as the run that saved it did).
    for mode in [["--resume", ck_s], ["--load", ck_s]] {
        let epochs = if mode[0] == "--load" { "0" } else { "2" };
        let err = err_idx(
            &dir,
            &[&mode[..], &["--epochs", epochs, "--normalize", "0.9,0.05"]].concat(),
        );
        assert!(
            err.contains("`normalize`: 0.9,0.05") && err.contains("normalised with mean"),
            "{mode:?}: {err}"
        );
    }
    // A weights-only file loads (--load) but cannot be resumed.
    let weights = dir.join("w.safetensors");
    let mut m = mep::Sequential::new(&mep::Device::Cpu)
        .flatten()
        .linear(64, 32)
        .relu()
        .linear(32, 4)
        .build(0)
        .unwrap();
    m.load_weights(&ck).unwrap();
    m.save(&weights).unwrap();
    let w_s = weights.to_str().unwrap();
    let err = err_idx(&dir, &["--epochs", "2", "--resume", w_s]);
    assert!(err.contains("weights only") && err.contains("--load"), "{err}");
    let eval = ok_idx(&dir, &["--epochs", "0", "--load", w_s]);
    let ck_eval = ok_idx(&dir, &["--epochs", "0", "--load", ck_s]);
    let v = |s: &str| -> serde_json::Value { serde_json::from_str(s.lines().next().unwrap()).unwrap() };
    assert_eq!(v(&eval)["test_acc"], v(&ck_eval)["test_acc"]);
    // --epochs 0 has nothing to save.
    assert!(err_idx(&dir, &["--epochs", "0", "--load", w_s, "--save", ck_s]).contains("`save`"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

/// The CPU backend's results do not depend on the thread count: GEMMs are split
/// only in ways that round alike and reductions use fixed chunks. Layers wide
/// enough that GEMMs, element-wise passes and sums are all split across threads.
#[test]
fn cpu_results_are_bit_identical_for_any_thread_count() {
    let dir = temp_dir("threads");
    let seed = fresh_seed();
    write_quadrant_idx(&dir, 640, 200, seed);
    let run = |threads: &str| {
        let out = bin()
            .args(["--device", "cpu", "--threads", threads, "--json", "--dataset", "idx"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--hidden", "256,256", "--epochs", "2"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "seed {seed}, {threads} threads: {stderr}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                for timing in [
                    "backend",
                    "epoch_seconds",
                    "eval_seconds",
                    "gflop_per_sec",
                    "samples_per_sec",
                    "steps_per_sec",
                ] {
                    o.remove(timing);
                }
                v.to_string()
            })
            .collect::<Vec<_>>()
    };
    let one = run("1");
    assert_eq!(one.len(), 2, "{one:?}");
    for threads in ["2", "3"] {
        assert_eq!(run(threads), one, "seed {seed}: {threads} threads differ from 1");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--epochs 0 --load PATH` (evaluation only) every training option is refused by
/// name; the options that build the model, choose the data or the reported loss, and
/// say where to run still apply.
#[test]
fn evaluate_only_refuses_training_options() {
    let dir = temp_dir("eval-only");
    write_quadrant_idx(&dir, 64, 16, 5);
    let ck = dir.join("ck.safetensors");
    let ck_s = ck.to_str().unwrap();
    ok_idx(&dir, &["--epochs", "1", "--save", ck_s]);
    let eval = ["--epochs", "0", "--load", ck_s];
    for (args, name) in [
        (vec!["--schedule", "cosine"], "`schedule`: cosine"),
        (vec!["--lr", "0.1"], "`lr`: 0.1"),
        (vec!["--optimizer", "adam"], "`optimizer`: adam"),
        (vec!["--beta", "0.2"], "`beta`: 0.2"),
        (vec!["--stop-after", "2"], "`stop-after`: 2"),
        (vec!["--report-every", "5"], "`report-every`: 5"),
        (vec!["--gemm-rate"], "`gemm-rate`"),
        (vec!["--plot", "p.png"], "`plot`: p.png"),
        (vec!["--metrics", "m.csv"], "`metrics`: m.csv"),
        (vec!["--batch-size", "8"], "`batch-size`: 8"),
        (vec!["--seed", "3"], "`seed`: 3"),
        (vec!["--train-subset", "8"], "`train-subset`: 8"),
        (vec!["--save-dtype", "bf16"], "`save-dtype`: bf16"),
        (vec!["--mode", "backprop"], "`mode`: backprop"),
    ] {
        let err = err_idx(&dir, &[&eval[..], &args[..]].concat());
        assert!(
            err.contains(name) && err.contains("--epochs 0 only evaluates the loaded model"),
            "{args:?}: {err}"
        );
    }
    // What evaluation reads is accepted: the architecture, the reported loss, the data.
    let (ok, stdout, stderr) = run_idx(
        &dir,
        &[
            &eval[..],
            &["--hidden", "32", "--activation", "relu", "--loss", "squared_error"],
        ]
        .concat(),
    );
    assert!(ok && stdout.contains("test_loss"), "{stderr}");
    // The load notice counts in the singular.
    assert!(stderr.contains("(trained 1 epoch)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Options that only qualify another option are refused without it, and files
/// written after training are checked before it starts.
#[test]
fn options_without_effect_and_unwritable_outputs_are_refused_up_front() {
    let dir = temp_dir("no-effect");
    write_quadrant_idx(&dir, 64, 16, 6);
    let err = err_idx(&dir, &["--epochs", "3", "--stop-after", "1"]);
    assert!(
        err.contains("`stop-after`: 1") && err.contains("give --save PATH"),
        "{err}"
    );
    let err = err_idx(&dir, &["--save-dtype", "bf16"]);
    assert!(err.contains("`save-dtype`: bf16") && err.contains("--save"), "{err}");
    let err = err_idx(&dir, &["--sample-out", "x.png"]);
    assert!(
        err.contains("`sample-out`: x.png") && err.contains("--show-sample"),
        "{err}"
    );
    // The defaults given explicitly are no conflict.
    ok_idx(
        &dir,
        &[
            "--save-dtype",
            "f32",
            "--save",
            dir.join("s.safetensors").to_str().unwrap(),
        ],
    );
    // --plot and --metrics: checked before training (no epoch line printed).
    let missing = dir.join("missing/out.png");
    for flag in ["--plot", "--metrics"] {
        for path in [missing.to_str().unwrap(), dir.to_str().unwrap()] {
            let (ok, stdout, stderr) = run_idx(&dir, &[flag, path]);
            assert!(!ok && stdout.is_empty(), "{flag} {path}: {stdout}");
            assert!(stderr.contains(&format!("`{}`", &flag[2..])), "{flag} {path}: {stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Out-of-range values are refused by name before anything runs: a thread count
/// far above the cores, a zero or repeated --hidden, `-inf` written with a space.
#[test]
fn out_of_range_values_are_refused_by_name() {
    let dir = temp_dir("range");
    write_quadrant_idx(&dir, 32, 8, 7);
    let d = dir.to_str().unwrap();
    let base = ["--device", "cpu", "--dataset", "idx", "--data-dir", d];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
    fails_with(&with(&["--threads", "100000"]), "`threads`: 100000 (at most ");
    fails_with(&with(&["--hidden", "0"]), "`hidden`");
    fails_with(&with(&["--hidden", "64,0"]), "`hidden`");
    fails_with(&with(&["--hidden", "64", "--hidden", "32"]), "more than once");
    fails_with(&with(&["--hidden", "", "--hidden", "5"]), "more than once");
    for flag in ["--lr", "--beta", "--bias-lr", "--momentum", "--weight-decay", "--gamma"] {
        // The range check answers, not clap's `unexpected argument '-i'` (the library
        // spells some names with `_`: bias_lr).
        fails_with(&with(&[flag, "-inf"]), "`: -inf (");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Messages count in the singular where there is one; a batch larger than the
/// training set is said, not silently clipped; --help states each optimizer's lr.
#[test]
fn messages_say_what_happened_in_good_english() {
    let dir = temp_dir("messages");
    write_quadrant_idx(&dir, 4, 8, 8);
    let err = err_idx(&dir, &["--train-subset", "5"]);
    assert!(err.contains("the training set has only 4 samples"), "{err}");
    let (ok, _, stderr) = run_idx(&dir, &["--train-subset", "1"]);
    assert!(
        ok && stderr.contains("--batch-size 16 exceeds the 1 training sample:"),
        "{stderr}"
    );
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("0.05 for smep, 0.01 for sgd, 1e-3 for adam"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model whose outputs overflow has no test loss: evaluating it is an error that
/// names the value, not `test loss inf` with exit status 0.
#[test]
fn a_non_finite_test_loss_is_an_error() {
    let dir = temp_dir("non-finite");
    write_quadrant_idx(&dir, 32, 8, 9);
    let mut m = mep::Sequential::new(&mep::Device::Cpu)
        .flatten()
        .linear(64, 32)
        .relu()
        .linear(32, 4)
        .build(0)
        .unwrap();
    let mut p = m.parameters().unwrap();
    // Output weights of 1e38 over positive hidden activity: the logits overflow.
    p[1].0.iter_mut().for_each(|w| *w = 1e38);
    p[0].0.iter_mut().for_each(|w| *w = w.abs());
    m.set_parameters(&p).unwrap();
    let path = dir.join("huge.safetensors");
    m.save(&path).unwrap();
    let (ok, stdout, stderr) = run_idx(&dir, &["--epochs", "0", "--load", path.to_str().unwrap()]);
    assert!(!ok, "must fail: {stdout}");
    assert!(
        stderr.contains("test loss")
            && (stderr.contains("inf") || stderr.contains("NaN"))
            && stderr.contains("diverged"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
