//! Pictures as PNG files: training curves from [`crate::metrics`] rows, and one
//! training image with its label.
//!
//! Drawn with `plotters`' bitmap backend into memory and encoded with `png`; text
//! uses DejaVu Sans compiled into the binary (the `dejavu` crate, Bitstream Vera
//! licence) through ab_glyph, so no system font, fontconfig or X library is needed.
//!
//! ```
//! use mep::metrics::{MetricRow, RowKind};
//! # fn main() -> mep::Result<()> {
//! let row = |kind, samples, loss: f64, acc: f64| MetricRow {
//!     kind, epoch: 1, step: samples / 64, samples, train_loss: loss, train_acc: acc,
//!     test_loss: (kind == RowKind::Epoch).then_some(loss), test_acc: (kind == RowKind::Epoch).then_some(acc),
//!     seconds: 0.0,
//! };
//! let rows = [row(RowKind::Step, 3200, 1.2, 0.6), row(RowKind::Step, 6400, 0.5, 0.85), row(RowKind::Epoch, 6400, 0.4, 0.9)];
//! let path = std::env::temp_dir().join(format!("mep-doc-curves-{}.png", std::process::id()));
//! mep::plot::plot_curves(&rows, "demo", "cross_entropy", &path)?;
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```

use crate::data::mnist::Dataset;
use crate::metrics::{MetricRow, RowKind};
use crate::{MepError, Result};
use plotters::prelude::*;
use std::path::Path;

/// Width and height of [`plot_curves`]' picture, in pixels.
pub const CURVES_SIZE: (u32, u32) = (1200, 480);
/// Each pixel of a sample image becomes a square of this side in [`write_sample_png`].
pub const SAMPLE_SCALE: u32 = 8;
/// Height of the caption band above the sample image, in pixels.
pub const SAMPLE_CAPTION: u32 = 36;

/// The font family every text of this module is drawn in.
const FONT: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
fn font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(MepError::invalid(
            "font",
            "DejaVu Sans",
            "the embedded font did not parse: rebuild mep (the `dejavu` crate's file is damaged)",
        ))
    }
}

/// A drawing error, reported as an I/O error on the file being drawn.
fn draw_err(path: &Path, e: impl std::fmt::Display) -> MepError {
    MepError::io(path, std::io::Error::other(format!("drawing failed: {e}")))
}

/// Encodes an RGB8 buffer of `w × h` pixels as a PNG file at `path`.
fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| MepError::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err = |e: png::EncodingError| MepError::io(path, std::io::Error::other(e.to_string()));
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

/// Refuses a `path` whose extension is not `.png` (in any case): the pictures of this
/// module are PNG files, and a `.jpg` or extension-less name would hold PNG data under
/// a misleading name. Call it before the work whose result is to be drawn.
///
/// Errors: [`MepError::InvalidArgument`] (`path`) naming the path.
///
/// ```
/// use std::path::Path;
/// assert!(mep::plot::check_png_path(Path::new("runs/curves.PNG")).is_ok());
/// assert!(mep::plot::check_png_path(Path::new("curves.jpg")).is_err());
/// ```
pub fn check_png_path(path: &Path) -> Result<()> {
    png_path("path", path)
}

fn png_path(name: &'static str, path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return Ok(());
    }
    let shown = if path.as_os_str().is_empty() {
        "\"\"".to_string()
    } else {
        path.display().to_string()
    };
    Err(MepError::invalid(
        name,
        shown,
        "pictures are written as PNG: give a file name ending in .png, e.g. curves.png",
    ))
}

/// `v` with at most three decimals, trailing zeros (and point) removed.
fn trimmed(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// `12000` → `12k`, `1500` → `1.5k`: short tick labels for sample counts, precise
/// enough that the ticks of an axis (multiples of a round step) stay distinct.
fn samples_label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", trimmed(v / 1e6))
    } else if v.abs() >= 1e3 {
        format!("{}k", trimmed(v / 1e3))
    } else {
        format!("{v:.0}")
    }
}

/// Draws loss (left) and accuracy (right) against training samples seen, as a
/// [`CURVES_SIZE`] PNG at `path`: the training curve from the step rows (each the
/// mean over the batches since the previous row), the training mean of each epoch
/// (hollow circles) and the test evaluation after each epoch (red, filled circles).
/// `title` heads the picture; `loss_name` labels the loss axis.
///
/// Errors: [`MepError::InvalidArgument`] (`plot`) for a path not ending in `.png`
/// ([`check_png_path`]), no rows or a row that is no record of training
/// ([`MetricRow::problem`]: a non-finite value, an accuracy outside [0, 1]);
/// [`MepError::Io`] naming `path`
/// when it cannot be written.
pub fn plot_curves(rows: &[MetricRow], title: &str, loss_name: &str, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    png_path("plot", path)?;
    if rows.is_empty() {
        return Err(MepError::invalid(
            "plot",
            "no metrics rows",
            "train at least one epoch (--epochs ≥ 1) before plotting",
        ));
    }
    if let Some(why) = rows.iter().find_map(MetricRow::problem) {
        return Err(MepError::invalid(
            "plot",
            why,
            "curves need finite losses and accuracies in [0, 1]: lower the learning rate so training does not diverge",
        ));
    }
    font()?;
    let steps: Vec<&MetricRow> = rows.iter().filter(|r| r.kind == RowKind::Step).collect();
    let epochs: Vec<&MetricRow> = rows.iter().filter(|r| r.kind == RowKind::Epoch).collect();
    let x_max = rows.iter().map(|r| r.samples).max().unwrap_or(1).max(1) as f64;
    let losses = rows
        .iter()
        .flat_map(|r| [Some(r.train_loss), r.test_loss])
        .flatten()
        .filter(|v| v.is_finite());
    let loss_max = losses.fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let accs = rows
        .iter()
        .flat_map(|r| [Some(r.train_acc), r.test_acc])
        .flatten()
        .filter(|v| v.is_finite());
    let acc_min = accs.fold(1.0f64, f64::min);
    // Zoom on the range the accuracy covers, in whole 5 % steps, up to 100 %.
    let acc_lo = ((acc_min * 100.0 - 2.0) / 5.0).floor().max(0.0) * 5.0;

    let (w, h) = CURVES_SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let root = root.titled(title, (FONT, 22)).map_err(|e| draw_err(path, e))?;
        let (left, right) = root.split_horizontally(w / 2);
        let panels = [
            (left, "loss", format!("mean {loss_name} per sample"), 0.0, loss_max, 1.0),
            (right, "accuracy", "accuracy (%)".to_string(), acc_lo, 100.0, 100.0),
        ];
        for (area, caption, y_desc, y_lo, y_hi, scale) in panels {
            let is_loss = caption == "loss";
            let mut chart = ChartBuilder::on(&area)
                .caption(caption, (FONT, 18))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_max * 1.02, y_lo..y_hi)
                .map_err(|e| draw_err(path, e))?;
            chart
                .configure_mesh()
                .x_desc("training samples seen")
                .y_desc(y_desc)
                .x_label_formatter(&|v| samples_label(*v))
                .y_label_formatter(&|v| if is_loss { format!("{v:.2}") } else { format!("{v:.0}") })
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 15))
                .draw()
                .map_err(|e| draw_err(path, e))?;
            let train = |r: &MetricRow| if is_loss { r.train_loss } else { r.train_acc * scale };
            let test = |r: &MetricRow| {
                if is_loss {
                    r.test_loss
                } else {
                    r.test_acc.map(|a| a * scale)
                }
            };
            let blue = RGBColor(31, 119, 180);
            let red = RGBColor(214, 39, 40);
            if !steps.is_empty() {
                chart
                    .draw_series(LineSeries::new(
                        steps.iter().map(|r| (r.samples as f64, train(r))),
                        blue.stroke_width(2),
                    ))
                    .map_err(|e| draw_err(path, e))?
                    .label("train (recent batches)")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
            }
            chart
                .draw_series(
                    epochs
                        .iter()
                        .map(|r| Circle::new((r.samples as f64, train(r)), 6, blue.stroke_width(2))),
                )
                .map_err(|e| draw_err(path, e))?
                .label("train (epoch mean)")
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, blue.stroke_width(2)));
            let test_pts: Vec<(f64, f64)> = epochs
                .iter()
                .filter_map(|r| test(r).map(|v| (r.samples as f64, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(test_pts.iter().copied(), red.stroke_width(2)))
                .map_err(|e| draw_err(path, e))?;
            chart
                .draw_series(test_pts.iter().map(|&p| Circle::new(p, 5, red.filled())))
                .map_err(|e| draw_err(path, e))?
                .label("test (after each epoch)")
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, red.filled()));
            chart
                .configure_series_labels()
                .position(if is_loss {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| draw_err(path, e))?;
        }
        root.present().map_err(|e| draw_err(path, e))?;
    }
    write_png(path, &buf, w, h)
}

/// Width and height of [`write_sample_png`]'s picture for `side × side` images.
pub fn sample_png_size(side: usize) -> (u32, u32) {
    sample_png_size_of(side, side)
}

/// Width and height of [`write_sample_png`]'s picture for images of `height` rows
/// and `width` columns.
pub fn sample_png_size_of(height: usize, width: usize) -> (u32, u32) {
    let w = width as u32 * SAMPLE_SCALE;
    (w.max(160), height as u32 * SAMPLE_SCALE + SAMPLE_CAPTION)
}

/// The (height, width) of `data`'s samples as greyscale images: shape `[h, w]` or
/// `[1, h, w]`, or a flat shape whose length is a square (`[784]` is 28 × 28).
fn image_size(data: &Dataset) -> Result<(usize, usize)> {
    let flat_side = (data.features as f64).sqrt().round() as usize;
    match *data.shape() {
        [h, w] | [1, h, w] => Ok((h, w)),
        [n] if flat_side * flat_side == n => Ok((flat_side, flat_side)),
        _ => Err(MepError::invalid(
            "data",
            format!("samples of shape {}", data.shape_text()),
            "only greyscale images can be drawn: samples of shape [height, width] or [1, height, width] (Dataset::with_shape), or flat ones whose length is a square",
        )),
    }
}

/// Writes image `index` of `data` (greyscale images, e.g. MNIST's 28 × 28) as a PNG
/// at `path`: each pixel a [`SAMPLE_SCALE`]-pixel square, grey levels stretched from
/// the image's own minimum (black) to maximum (white), under a caption with the
/// index and label. The image's rows and columns are the data set's shape
/// (`[height, width]` or `[1, height, width]`; a flat shape of square length is
/// drawn square). Returns the picture's size ([`sample_png_size_of`]).
///
/// Errors: [`MepError::InvalidArgument`] `path` for a path not ending in `.png`,
/// `index` for an index past the data set, `data` for samples that are not
/// greyscale images (a colour shape such as `[3, 32, 32]`, a flat shape of
/// non-square length); [`MepError::Io`] naming `path`.
pub fn write_sample_png(data: &Dataset, index: usize, path: impl AsRef<Path>) -> Result<(u32, u32)> {
    let path = path.as_ref();
    png_path("path", path)?;
    let img = data.sample(index)?;
    let (height, width) = image_size(data)?;
    font()?;
    // In f64: the span of values near ±f32::MAX overflows f32 (every grey was 0).
    let lo = img.iter().map(|&v| v as f64).fold(f64::INFINITY, f64::min);
    let hi = img.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (w, h) = sample_png_size_of(height, width);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let caption = format!("#{index}: label {}", data.labels[index]);
        let style = TextStyle::from((FONT, 20).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
        root.draw_text(&caption, &style, (w as i32 / 2, SAMPLE_CAPTION as i32 / 2))
            .map_err(|e| draw_err(path, e))?;
        root.present().map_err(|e| draw_err(path, e))?;
    }
    // The image itself, centred below the caption, pixel by pixel.
    let x0 = (w - width as u32 * SAMPLE_SCALE) / 2;
    for (i, &v) in img.iter().enumerate() {
        let g = (((v as f64 - lo) / span) * 255.0).round().clamp(0.0, 255.0) as u8;
        let (r, c) = ((i / width) as u32, (i % width) as u32);
        for dy in 0..SAMPLE_SCALE {
            let y = SAMPLE_CAPTION + r * SAMPLE_SCALE + dy;
            for dx in 0..SAMPLE_SCALE {
                let x = x0 + c * SAMPLE_SCALE + dx;
                let o = ((y * w + x) * 3) as usize;
                buf[o..o + 3].fill(g);
            }
        }
    }
    write_png(path, &buf, w, h)?;
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_of_round_steps_are_distinct() {
        for max in [900.0, 2000.0, 2040.0, 6400.0, 60_000.0, 1_250_000.0, 3_000_000.0] {
            for step in [
                1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 250.0, 500.0, 1e3, 2e3, 5e3, 1e4, 1e5, 2e5, 5e5,
            ] {
                let ticks = (max / step) as usize;
                if !(2..=50).contains(&ticks) {
                    continue;
                }
                let labels: Vec<String> = (0..=ticks).map(|k| samples_label(k as f64 * step)).collect();
                let mut unique = labels.clone();
                unique.dedup();
                assert_eq!(unique.len(), labels.len(), "max {max}, step {step}: {labels:?}");
            }
        }
        assert_eq!(
            [500.0, 1000.0, 1500.0, 2000.0, 12_000.0, 1_500_000.0, 0.0].map(samples_label),
            ["500", "1k", "1.5k", "2k", "12k", "1.5M", "0"]
        );
    }

    #[test]
    fn only_png_paths_are_accepted() {
        for ok in ["a.png", "dir/b.PNG", "c.Png"] {
            assert!(check_png_path(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in ["p.jpg", "p", "p.png.txt", ""] {
            let e = check_png_path(Path::new(bad)).unwrap_err().to_string();
            assert!(
                e.contains(".png") && e.contains(if bad.is_empty() { "\"\"" } else { bad }),
                "{e}"
            );
        }
    }
}
