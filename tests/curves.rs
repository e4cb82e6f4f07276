//! Curves and pictures (issue 10, part 4): metrics rows against hand-computed
//! window means, the CSV round trip, and PNG files decoded back and checked for
//! their size and content, through the library and through `mep-mnist`.

mod common;

use common::fresh_seed;
use mep::metrics::{read_csv, MetricRow, MetricsLog, RowKind, CSV_HEADER};
use mep::optim::StepStats;
use mep::plot::{
    plot_curves, sample_png_size, sample_png_size_of, write_sample_png, CURVES_SIZE, SAMPLE_CAPTION, SAMPLE_SCALE,
};
use mep::rng::Rng;
use mep::train::Evaluation;
use mep::{Dataset, MepError};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mep-curves-{}-{name}", std::process::id()))
}

/// Decodes a PNG: (width, height, RGB8 pixels).
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn running(samples: u64, loss: f64, accuracy: f64) -> StepStats {
    StepStats {
        samples,
        loss,
        accuracy,
        ..Default::default()
    }
}

#[test]
fn step_rows_cover_only_their_own_batches() {
    let seed = fresh_seed("metrics_windows");
    let mut rng = Rng::new(seed);
    let path = tmp("windows.csv");
    let mut log = MetricsLog::to_csv(&path).unwrap();
    // Per-sample losses and hits of two epochs of 12 windows; the loop reports running
    // means since the epoch began, the rows must recover each window's own mean, and
    // its accuracy exactly (windows of all hits or none, often: differenced as
    // fractions they came out a rounding error outside [0, 1], which the log then
    // refused, ending a healthy run).
    let mut want = Vec::new();
    let mut before = 0u64;
    for epoch in 0..2u64 {
        let (mut n, mut sum, mut hits) = (0u64, 0.0, 0.0);
        for w in 0..12u64 {
            let k = 1 + rng.below(100);
            let losses: Vec<f64> = (0..k).map(|_| rng.uniform_range(0.0, 3.0)).collect();
            let h = match rng.below(3) {
                0 => 0.0,
                1 => k as f64,
                _ => rng.below(k + 1) as f64,
            };
            n += k;
            sum += losses.iter().sum::<f64>();
            hits += h;
            want.push((losses.iter().sum::<f64>() / k as f64, h / k as f64, before + n));
            log.record_progress(
                epoch,
                before,
                epoch * 12 + w + 1,
                running(n, sum / n as f64, hits / n as f64),
            )
            .unwrap();
            // A repeated report (no new samples) adds no row.
            log.record_progress(
                epoch,
                before,
                epoch * 12 + w + 1,
                running(n, sum / n as f64, hits / n as f64),
            )
            .unwrap();
        }
        before += n;
        log.record_epoch(
            epoch,
            before,
            epoch * 12 + 12,
            running(n, sum / n as f64, hits / n as f64),
            Evaluation {
                loss: 0.5,
                accuracy: 0.9,
            },
        )
        .unwrap();
    }
    let steps: Vec<&MetricRow> = log.rows().iter().filter(|r| r.kind == RowKind::Step).collect();
    assert_eq!(steps.len(), want.len());
    for (r, (loss, acc, samples)) in steps.iter().zip(&want) {
        assert!((r.train_loss - loss).abs() < 1e-9, "{r:?} vs loss {loss}");
        assert_eq!(r.train_acc, *acc, "{r:?} (seed {seed})");
        assert_eq!(r.samples, *samples);
    }
    assert_eq!(log.rows().iter().filter(|r| r.kind == RowKind::Epoch).count(), 2);
    // The CSV holds the same rows (test columns empty on step rows).
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next(), Some(CSV_HEADER));
    let back = read_csv(&path).unwrap();
    assert_eq!(back.len(), log.rows().len());
    for (a, b) in back.iter().zip(log.rows()) {
        assert_eq!(
            (a.kind, a.epoch, a.step, a.samples),
            (b.kind, b.epoch, b.step, b.samples)
        );
        assert_eq!(
            (a.train_loss, a.train_acc, a.test_loss, a.test_acc),
            (b.train_loss, b.train_acc, b.test_loss, b.test_acc)
        );
    }
    std::fs::write(&path, "kind,epoch\nstep,1\n").unwrap();
    assert!(matches!(read_csv(&path), Err(MepError::CorruptData { .. })));
    std::fs::remove_file(&path).ok();
}

fn synthetic_rows(rng: &mut Rng, epochs: u64) -> Vec<MetricRow> {
    let mut rows = Vec::new();
    let mut samples = 0;
    for e in 1..=epochs {
        for _ in 0..10 {
            samples += 640;
            rows.push(MetricRow {
                kind: RowKind::Step,
                epoch: e,
                step: samples / 64,
                samples,
                train_loss: 2.0 / (1.0 + samples as f64 / 2000.0) + 0.05 * rng.uniform_range(0.0, 1.0),
                train_acc: 1.0 - 0.9 / (1.0 + samples as f64 / 2000.0),
                test_loss: None,
                test_acc: None,
                seconds: 0.0,
            });
        }
        rows.push(MetricRow {
            kind: RowKind::Epoch,
            test_loss: Some(0.3 / e as f64),
            test_acc: Some(0.9 + 0.02 * e as f64),
            ..rows[rows.len() - 1]
        });
    }
    rows
}

#[test]
fn curves_are_a_png_of_the_documented_size_with_both_series() {
    let seed = fresh_seed("curves_png");
    let mut rng = Rng::new(seed);
    let path = tmp("curves.png");
    plot_curves(&synthetic_rows(&mut rng, 3), "test curves", "cross-entropy", &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), CURVES_SIZE);
    let count = |pred: &dyn Fn(&[u8]) -> bool| px.chunks(3).filter(|p| pred(p)).count();
    // Training curve (blue), test points (red) and dark text/axes are all there.
    let blue = count(&|p| p[2] > 150 && p[0] < 80);
    let red = count(&|p| p[0] > 180 && p[1] < 80 && p[2] < 80);
    let dark = count(&|p| p[0] < 60 && p[1] < 60 && p[2] < 60);
    assert!(blue > 500, "{blue} blue pixels");
    assert!(red > 100, "{red} red pixels");
    assert!(dark > 2000, "{dark} dark pixels (axes, labels)");
    std::fs::remove_file(&path).ok();

    assert!(matches!(
        plot_curves(&[], "t", "loss", &path),
        Err(MepError::InvalidArgument { name: "plot", .. })
    ));
    // A non-finite value in any column is refused, the test ones of an epoch row too,
    // and so is an accuracy outside [0, 1] (a percentage) or a negative time. The
    // same rows are refused by MetricsLog::push (leaving the log as it was) and by
    // read_csv (naming the line).
    type Spoil = fn(&mut MetricRow);
    let spoils: [(usize, Spoil); 8] = [
        (3, |r| r.train_loss = f64::NAN),
        (5, |r| r.train_acc = f64::INFINITY),
        (10, |r| r.test_loss = Some(f64::INFINITY)),
        (10, |r| r.test_acc = Some(f64::NAN)),
        (4, |r| r.train_acc = 7.0),
        (10, |r| r.test_acc = Some(97.5)),
        (10, |r| r.test_acc = Some(-0.01)),
        (2, |r| r.seconds = -1.0),
    ];
    let csv = tmp("spoiled.csv");
    for (row, spoil) in spoils {
        let mut bad = synthetic_rows(&mut rng, 1);
        spoil(&mut bad[row]);
        assert!(
            matches!(
                plot_curves(&bad, "t", "loss", &path),
                Err(MepError::InvalidArgument { name: "plot", .. })
            ),
            "row {row}: {:?}",
            bad[row]
        );
        assert!(!path.exists());
        let mut log = MetricsLog::new();
        for r in &bad[..row] {
            log.push(*r).unwrap();
        }
        assert!(
            matches!(log.push(bad[row]), Err(MepError::InvalidArgument { name: "row", .. })),
            "push {:?}",
            bad[row]
        );
        assert_eq!(log.rows(), &bad[..row]);
        let mut text = format!("{CSV_HEADER}\n");
        for r in &bad {
            text += &format!("{}\n", r.to_csv());
        }
        std::fs::write(&csv, text).unwrap();
        match read_csv(&csv) {
            Err(e @ MepError::CorruptData { .. }) => {
                assert!(e.to_string().contains(&format!("line {}", row + 2)), "{e}")
            }
            other => panic!("read_csv of row {row} {:?}: {other:?}", bad[row]),
        }
    }
    std::fs::remove_file(&csv).ok();
    assert!(matches!(
        plot_curves(
            &synthetic_rows(&mut rng, 1),
            "t",
            "loss",
            Path::new("/nonexistent-dir/x.png")
        ),
        Err(MepError::Io { .. })
    )); // A name that is not .png (any case) is refused, naming it; nothing is written.
    for name in ["curves.jpg", "curves", "curves.png.bak"] {
        let bad = tmp(name);
        let e = plot_curves(&synthetic_rows(&mut rng, 1), "t", "loss", &bad).unwrap_err();
        assert!(
            matches!(e, MepError::InvalidArgument { name: "plot", .. })
                && e.to_string().contains(&bad.display().to_string()),
            "{e}"
        );
        assert!(!bad.exists());
    }
    let upper = tmp("CURVES.PNG");
    plot_curves(&synthetic_rows(&mut rng, 1), "t", "loss", &upper).unwrap();
    std::fs::remove_file(&upper).ok();
}

/// Draws sample `index` of `data` (images of `height` × `width` pixels) and checks
/// every pixel block's centre and the caption.
fn check_sample_png(data: &Dataset, index: usize, height: usize, width: usize) {
    let path = tmp(&format!("sample-{height}x{width}.png"));
    let size = write_sample_png(data, index, &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), size);
    assert_eq!(size, sample_png_size_of(height, width));
    if height == width {
        assert_eq!(size, sample_png_size(height));
    }
    // Each block's centre is the image's grey level, stretched min → 0, max → 255,
    // the image laid out row by row with `width` pixels per row.
    let img = data.sample(index).unwrap();
    let lo = img.iter().map(|&v| v as f64).fold(f64::INFINITY, f64::min);
    let hi = img.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
    let x0 = (w - width as u32 * SAMPLE_SCALE) / 2;
    for (i, &v) in img.iter().enumerate() {
        let want = ((v as f64 - lo) / (hi - lo) * 255.0).round() as i32;
        let (r, c) = ((i / width) as u32, (i % width) as u32);
        let (x, y) = (
            x0 + c * SAMPLE_SCALE + SAMPLE_SCALE / 2,
            SAMPLE_CAPTION + r * SAMPLE_SCALE + SAMPLE_SCALE / 2,
        );
        let o = ((y * w + x) * 3) as usize;
        assert_eq!(
            &px[o..o + 3],
            &[want as u8; 3],
            "pixel {i} ({r}, {c}) of {height}×{width}"
        );
    }
    // The caption band has text in it (dark pixels).
    let caption_dark = px[..(SAMPLE_CAPTION * w * 3) as usize]
        .chunks(3)
        .filter(|p| p[0] < 100)
        .count();
    assert!(caption_dark > 50, "caption has {caption_dark} dark pixels");
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_sample_png_shows_the_image_pixel_for_pixel() {
    let seed = fresh_seed("sample_png");
    let mut rng = Rng::new(seed);
    let n = 5;
    let dataset = |rng: &mut Rng, features: usize| {
        let images: Vec<f32> = (0..n * features).map(|_| rng.normal() as f32).collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
        Dataset::new(images, labels, features, 10).unwrap()
    };
    // A flat shape of square length is drawn square; [h, w] and [1, h, w] as given
    // (a wide one past the picture's minimum width, a narrow one centred in it).
    let side = 6;
    let data = dataset(&mut rng, side * side);
    check_sample_png(&data, rng.below(n as u64) as usize, side, side);
    let wide = dataset(&mut rng, 5 * 24).with_shape(vec![1, 5, 24]).unwrap();
    check_sample_png(&wide, rng.below(n as u64) as usize, 5, 24);
    let tall = dataset(&mut rng, 9 * 4).with_shape(vec![9, 4]).unwrap();
    check_sample_png(&tall, rng.below(n as u64) as usize, 9, 4);
    // Values near ±f32::MAX, whose span overflows f32, are stretched as any others.
    let huge = dataset(&mut rng, side * side);
    let images: Vec<f32> = huge
        .images()
        .iter()
        .map(|v| (v / 4.0).clamp(-1.0, 1.0) * 3e38)
        .collect();
    let huge = Dataset::new(images, huge.labels().to_vec(), side * side, 10).unwrap();
    check_sample_png(&huge, rng.below(n as u64) as usize, side, side);
    let path = tmp("sample.png");

    // Library-neutral messages: the index and the data set's size, no CLI wording.
    match write_sample_png(&data, n, &path) {
        Err(e @ MepError::InvalidArgument { name: "index", .. }) => {
            let e = e.to_string();
            assert!(
                e.contains("5 samples") && !e.contains("show_sample") && !e.contains("training set"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Not greyscale images: the data set's shape is named.
    let odd = Dataset::new(vec![0.0; 10], vec![0, 1], 5, 2).unwrap();
    let colour = Dataset::new(vec![0.0; 2 * 48], vec![0, 1], 48, 2)
        .unwrap()
        .with_shape(vec![3, 4, 4])
        .unwrap();
    for (bad, shape) in [(&odd, "5"), (&colour, "3×4×4")] {
        match write_sample_png(bad, 0, &path) {
            Err(e @ MepError::InvalidArgument { name: "data", .. }) => {
                assert!(e.to_string().contains(shape), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Only .png names.
    let jpg = tmp("sample.jpg");
    match write_sample_png(&data, 0, &jpg) {
        Err(e @ MepError::InvalidArgument { name: "path", .. }) => {
            assert!(e.to_string().contains(&jpg.display().to_string()), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!jpg.exists());
}

#[test]
fn mep_mnist_writes_metrics_curves_and_a_sample() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    if mep::Mnist::load(&dir).is_err() {
        eprintln!(
            "skipping: MNIST not found in {} (run scripts/fetch-mnist.sh)",
            dir.display()
        );
        return;
    }
    let (csv, plot, sample) = (tmp("run.csv"), tmp("run.png"), tmp("digit.png"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mep-mnist"))
        .args([
            "--device",
            "cpu",
            "--threads",
            "1",
            "--train-subset",
            "640",
            "--epochs",
            "2",
        ])
        .args(["--report-every", "4", "--show-sample", "7", "--data-dir"])
        .arg(&dir)
        .arg("--metrics")
        .arg(&csv)
        .arg("--plot")
        .arg(&plot)
        .arg("--sample-out")
        .arg(&sample)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let rows = read_csv(&csv).unwrap();
    // 10 steps per epoch: rows after steps 4, 8 and the epoch's end (10), then the epoch row.
    let kinds: Vec<(RowKind, u64)> = rows.iter().map(|r| (r.kind, r.step)).collect();
    use RowKind::{Epoch, Step};
    assert_eq!(
        kinds,
        [
            (Step, 4),
            (Step, 8),
            (Step, 10),
            (Epoch, 10),
            (Step, 14),
            (Step, 18),
            (Step, 20),
            (Epoch, 20)
        ]
    );
    assert_eq!(rows.last().unwrap().samples, 1280);
    assert!(rows
        .iter()
        .filter(|r| r.kind == Epoch)
        .all(|r| r.test_acc.unwrap() > 0.5));
    let (pw, ph, _) = decode(&plot);
    assert_eq!((pw, ph), CURVES_SIZE);
    let (w, h, _) = decode(&sample);
    assert_eq!((w, h), sample_png_size(28));
    for p in [csv, plot, sample] {
        std::fs::remove_file(p).ok();
    }
}

/// `continue_csv` keeps the checkpoint's epochs' rows and drops later ones (and a
/// last line cut off without its newline), saying so; refuses another run's rows,
/// leaving the file as it was; a missing file starts a new log. `read_csv` accepts
/// trailing blank lines.
#[test]
fn continuing_a_metrics_csv_keeps_the_checkpoints_rows_and_refuses_another_runs() {
    use mep::metrics::{Continued, RunPoint};
    let seed = fresh_seed("continue_csv");
    let mut rng = Rng::new(seed);
    let path = tmp("continue.csv");
    let rows = synthetic_rows(&mut rng, 3); // 11 rows per epoch, 640 samples per step row
    let write = |rows: &[MetricRow], tail: &str| {
        let mut text = format!("{CSV_HEADER}\n");
        for r in rows {
            text += &format!("{}\n", r.to_csv());
        }
        text += tail;
        std::fs::write(&path, text).unwrap();
    };
    let epoch_row = |e: u64| *rows.iter().find(|r| r.kind == RowKind::Epoch && r.epoch == e).unwrap();
    let at = |e: u64| RunPoint {
        epochs: e,
        steps: epoch_row(e).step,
        samples: epoch_row(e).samples,
    };
    // Rows of epochs 1–3 and a cut-off row; the checkpoint is at epoch 2.
    write(&rows, "step,4,1,2,0.5");
    let (log, found) = MetricsLog::continue_csv(&path, at(2)).unwrap();
    assert_eq!(
        found,
        Continued {
            existed: true,
            kept: 22,
            dropped: 11,
            dropped_epochs: Some((3, 3)),
            partial_line: true,
            last_epoch: 2,
        }
    );
    assert_eq!(log.rows(), &rows[..22]);
    drop(log);
    let back = read_csv(&path).unwrap();
    assert_eq!(back.len(), 22);
    // Another run's rows (its epoch-2 row elsewhere, or a row past the checkpoint's
    // step count) are refused and the file is left alone.
    for bad in [
        RunPoint {
            steps: at(2).steps + 1,
            ..at(2)
        },
        RunPoint {
            samples: at(2).samples - 1,
            ..at(2)
        },
        RunPoint {
            epochs: 2,
            steps: at(1).steps,
            samples: at(1).samples,
        },
    ] {
        let before = std::fs::read(&path).unwrap();
        match MetricsLog::continue_csv(&path, bad) {
            Err(e @ MepError::InvalidArgument { name: "metrics", .. }) => {
                assert!(e.to_string().contains("another run's"), "{e}")
            }
            other => panic!("{bad:?}: {:?}", other.map(|(_, f)| f)),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
    // Rows stopping short of the checkpoint (a gap) are kept and reported.
    write(&rows[..11], "\n\n");
    assert_eq!(read_csv(&path).unwrap().len(), 11, "trailing blank lines");
    let (_, found) = MetricsLog::continue_csv(&path, at(2)).unwrap();
    assert_eq!((found.kept, found.last_epoch, found.partial_line), (11, 1, false));
    // No file: a new log.
    std::fs::remove_file(&path).unwrap();
    let (log, found) = MetricsLog::continue_csv(&path, at(2)).unwrap();
    assert!(!found.existed && log.rows().is_empty());
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), CSV_HEADER);
    std::fs::remove_file(&path).ok();
}
