//! Training metrics as rows: one every few steps (the progress cadence) and one per
//! epoch, kept in memory for [`crate::plot`] and optionally streamed to a CSV file
//! as they arrive, so a long run's curve can be read while it trains (and survives
//! a crash up to the last row).
//!
//! ```
//! use mep::metrics::MetricsLog;
//! use mep::optim::StepStats;
//! # fn main() -> mep::Result<()> {
//! let path = std::env::temp_dir().join(format!("mep-doc-metrics-{}.csv", std::process::id()));
//! let mut log = MetricsLog::to_csv(&path)?;
//! // The running statistics the training loop reports after 10 and 20 samples:
//! let running = |samples, loss, accuracy| StepStats { samples, loss, accuracy, ..Default::default() };
//! log.record_progress(0, 0, 5, running(10, 2.0, 0.1))?;
//! log.record_progress(0, 0, 10, running(20, 1.5, 0.3))?;
//! // The second row covers samples 11–20 alone: loss (1.5·20 − 2·10)/10 = 1.
//! assert!((log.rows()[1].train_loss - 1.0).abs() < 1e-12);
//! assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3); // header + 2 rows
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```

use crate::optim::StepStats;
use crate::train::Evaluation;
use crate::{MepError, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a row summarises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// The training batches since the previous step row of the same epoch.
    Step,
    /// A whole epoch, with the test evaluation after it.
    Epoch,
}

impl RowKind {
    /// `step` or `epoch`, as in the CSV's `kind` column.
    pub fn name(self) -> &'static str {
        match self {
            RowKind::Step => "step",
            RowKind::Epoch => "epoch",
        }
    }
}

/// One row of metrics. Losses are mean costs per sample of the loss the model is
/// trained with; accuracies are fractions in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricRow {
    /// Step or epoch row.
    pub kind: RowKind,
    /// Epoch, 1-based.
    pub epoch: u64,
    /// Optimizer steps taken in the run so far.
    pub step: u64,
    /// Training samples seen in the run so far (the curves' x axis).
    pub samples: u64,
    /// Mean free-phase training loss: over the samples since the previous step row
    /// (step rows), or over the epoch (epoch rows).
    pub train_loss: f64,
    /// Free-phase training accuracy over the same samples.
    pub train_acc: f64,
    /// Test loss after the epoch (epoch rows only).
    pub test_loss: Option<f64>,
    /// Test accuracy after the epoch (epoch rows only).
    pub test_acc: Option<f64>,
    /// Wall seconds since the run began (the log was created; a continued log carries
    /// on from its earlier rows).
    pub seconds: f64,
}

/// The CSV header, in column order.
pub const CSV_HEADER: &str = "kind,epoch,step,samples,train_loss,train_acc,test_loss,test_acc,seconds";

impl MetricRow {
    /// Why this row cannot be a record of training, if it cannot: a loss that is not
    /// finite (a diverged run's), an accuracy outside [0, 1] (a percentage, say), or
    /// a negative or non-finite time.
    pub fn problem(&self) -> Option<String> {
        let show = |v: Option<f64>| v.map_or("none".to_string(), |v| v.to_string());
        let finite = |v: Option<f64>| v.map_or(true, f64::is_finite);
        let fraction = |v: Option<f64>| v.map_or(true, |v| (0.0..=1.0).contains(&v));
        let values = || {
            format!(
                "train loss {}, train accuracy {}, test loss {}, test accuracy {} at {} samples",
                self.train_loss,
                self.train_acc,
                show(self.test_loss),
                show(self.test_acc),
                self.samples
            )
        };
        if !(self.train_loss.is_finite() && finite(self.test_loss)) {
            Some(format!("{}: a loss is not finite (a diverged run's)", values()))
        } else if !(fraction(Some(self.train_acc)) && fraction(self.test_acc)) {
            Some(format!("{}: accuracies are fractions in [0, 1]", values()))
        } else if !(self.seconds.is_finite() && self.seconds >= 0.0) {
            Some(format!("{} seconds: times are finite and not negative", self.seconds))
        } else {
            None
        }
    }

    /// The row as a CSV line (no newline); missing test values are empty fields.
    pub fn to_csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{:.3}",
            self.kind.name(),
            self.epoch,
            self.step,
            self.samples,
            self.train_loss,
            self.train_acc,
            opt(self.test_loss),
            opt(self.test_acc),
            self.seconds
        )
    }
}

/// Where a resumed run stands, as its checkpoint records it: what the rows of a
/// metrics CSV it continues must agree with ([`MetricsLog::continue_csv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunPoint {
    /// Epochs done.
    pub epochs: u64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Training samples seen.
    pub samples: u64,
}

/// What [`MetricsLog::continue_csv`] found in the file it continues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Continued {
    /// Whether there was a file (else a new one was started).
    pub existed: bool,
    /// Rows kept (those of the checkpoint's epochs).
    pub kept: usize,
    /// Rows dropped (of later epochs, from an attempt that did not finish them).
    pub dropped: usize,
    /// The first and last epoch of the dropped rows.
    pub dropped_epochs: Option<(u64, u64)>,
    /// Whether a last line cut off without its newline was dropped.
    pub partial_line: bool,
    /// The last epoch with an epoch row among the kept rows (0: none): below the
    /// checkpoint's epochs, the curves have a gap.
    pub last_epoch: u64,
}

/// Rows of one training run, in memory and optionally in a CSV file.
pub struct MetricsLog {
    rows: Vec<MetricRow>,
    csv: Option<(PathBuf, BufWriter<File>)>,
    start: Instant,
    /// Seconds already on the clock when the log was created: a continued run's
    /// rows carry on from the last kept row's time.
    seconds_before: f64,
    /// The running statistics at the previous step row: (epoch, samples, loss sum,
    /// correct count), from which a step row's own window is differenced.
    last: (u64, u64, f64, u64),
}

impl Default for MetricsLog {
    fn default() -> Self {
        MetricsLog::new()
    }
}

impl MetricsLog {
    /// A log kept in memory only.
    pub fn new() -> MetricsLog {
        MetricsLog {
            rows: Vec::new(),
            csv: None,
            start: Instant::now(),
            seconds_before: 0.0,
            last: (u64::MAX, 0, 0.0, 0),
        }
    }

    /// A log that also writes every row to `path` (created or truncated; header
    /// first), flushed after each row.
    ///
    /// Errors: [`MepError::Io`] naming the path when it cannot be created.
    pub fn to_csv(path: impl AsRef<Path>) -> Result<MetricsLog> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(|e| MepError::io(&path, e))?;
        let mut log = MetricsLog::new();
        log.csv = Some((path, BufWriter::new(file)));
        log.write_line(CSV_HEADER)?;
        Ok(log)
    }

    /// A log continuing the CSV at `path` of a run resumed at `at` (after
    /// `at.epochs` epochs): its rows of those epochs are kept (in memory too, so that
    /// the curves show the whole run) and rows of later epochs, written by an attempt
    /// that did not finish them, are dropped, as is a last line cut off without its
    /// newline; the file is rewritten with the kept rows and new rows are appended,
    /// their times carrying on from the last kept row's. A path with no file starts a
    /// new log, as [`MetricsLog::to_csv`]. The returned [`Continued`] says what was
    /// kept and dropped, for the caller to report.
    ///
    /// Errors (the file is then left as it was): [`MepError::CorruptData`] naming
    /// the line when the file is not a metrics CSV; [`MepError::InvalidArgument`]
    /// (`metrics`) when its rows are another run's (a row of the checkpoint's epochs
    /// past its step or sample count, or its last epoch's row elsewhere);
    /// [`MepError::Io`] naming the path.
    pub fn continue_csv(path: impl AsRef<Path>, at: RunPoint) -> Result<(MetricsLog, Continued)> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok((MetricsLog::to_csv(path)?, Continued::default()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| MepError::io(path, e))?;
        // A last line without its newline is a row cut off by the failure that
        // stopped the run (a full disk): not a row at all.
        let (whole, partial_line) = match text.rfind('\n') {
            Some(i) if !text[i + 1..].trim().is_empty() => (&text[..=i], true),
            _ => (&text[..], false),
        };
        let rows = parse_csv(path, whole)?;
        let last_epoch_row = rows.iter().rfind(|r| r.kind == RowKind::Epoch && r.epoch <= at.epochs);
        // Rows of the checkpoint's epochs must be its run's: none past its step and
        // sample counts, and its last epoch's row exactly at them.
        let foreign = rows
            .iter()
            .filter(|r| r.epoch <= at.epochs)
            .find(|r| r.step > at.steps || r.samples > at.samples)
            .or(last_epoch_row.filter(|r| r.epoch == at.epochs && (r.step, r.samples) != (at.steps, at.samples)));
        if let Some(r) = foreign {
            return Err(MepError::invalid(
                "metrics",
                path.display(),
                format!(
                    "its row of epoch {} is at step {} after {} samples, but the checkpoint's run is at step {} after {} samples at epoch {}: the file holds another run's metrics; give another path (the file is left as it was)",
                    r.epoch, r.step, r.samples, at.steps, at.samples, at.epochs
                ),
            ));
        }
        let last_epoch = last_epoch_row.map_or(0, |r| r.epoch);
        let (kept, dropped): (Vec<MetricRow>, Vec<MetricRow>) = rows.into_iter().partition(|r| r.epoch <= at.epochs);
        let report = Continued {
            existed: true,
            kept: kept.len(),
            dropped: dropped.len(),
            dropped_epochs: dropped.first().zip(dropped.last()).map(|(a, b)| (a.epoch, b.epoch)),
            partial_line,
            last_epoch,
        };
        let mut log = MetricsLog::to_csv(path)?;
        for row in &kept {
            log.push(*row)?;
        }
        log.seconds_before = kept.last().map_or(0.0, |r| r.seconds);
        Ok((log, report))
    }

    /// Seconds since the run began (the log's creation, plus a continued run's
    /// earlier time).
    fn seconds(&self) -> f64 {
        self.seconds_before + self.start.elapsed().as_secs_f64()
    }

    /// The rows so far, in order.
    pub fn rows(&self) -> &[MetricRow] {
        &self.rows
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        if let Some((path, w)) = &mut self.csv {
            writeln!(w, "{line}")
                .and_then(|_| w.flush())
                .map_err(|e| MepError::io(path.clone(), e))?;
        }
        Ok(())
    }

    /// Appends a row (and writes it to the CSV file, if any).
    ///
    /// Errors: [`MepError::InvalidArgument`] (`row`) for a row that cannot be a
    /// record of training ([`MetricRow::problem`]: a non-finite loss, an accuracy
    /// outside [0, 1]); nothing is recorded then, so the log stays plottable.
    pub fn push(&mut self, row: MetricRow) -> Result<()> {
        if let Some(why) = row.problem() {
            return Err(MepError::invalid(
                "row",
                why,
                "record only finite losses and accuracies in [0, 1]; a diverged step reports MepError::Diverged instead of statistics",
            ));
        }
        self.write_line(&row.to_csv())?;
        self.rows.push(row);
        Ok(())
    }

    /// Records a progress report of epoch `epoch` (0-based) as a step row:
    /// `running` is the training loop's running statistics since the epoch began
    /// (what [`crate::Optimizer::train_epoch`] passes its progress callback),
    /// `samples_before` the samples of the earlier epochs and `steps` the optimizer
    /// steps of the run so far. The row covers only the samples since the previous
    /// step row of this epoch (the difference of the running sums), so the curve
    /// shows the current loss rather than the epoch's average so far. A report with
    /// no new samples is skipped.
    pub fn record_progress(&mut self, epoch: u64, samples_before: u64, steps: u64, running: StepStats) -> Result<()> {
        // The correct count as the integer it is (the accuracy is hits / samples):
        // differenced as fractions, a window of all hits or none came out a rounding
        // error outside [0, 1].
        let loss_sum = running.loss * running.samples as f64;
        let correct = (running.accuracy * running.samples as f64).round().max(0.0) as u64;
        let (e, n0, l0, c0) = if self.last.0 == epoch {
            self.last
        } else {
            (epoch, 0, 0.0, 0)
        };
        self.last = (e, running.samples, loss_sum, correct);
        let n = running.samples.saturating_sub(n0);
        if n == 0 {
            return Ok(());
        }
        self.push(MetricRow {
            kind: RowKind::Step,
            epoch: epoch + 1,
            step: steps,
            samples: samples_before + running.samples,
            train_loss: (loss_sum - l0) / n as f64,
            train_acc: correct.saturating_sub(c0).min(n) as f64 / n as f64,
            test_loss: None,
            test_acc: None,
            seconds: self.seconds(),
        })
    }

    /// Records epoch `epoch` (0-based): its training statistics, the test evaluation
    /// after it, the run's samples and steps so far.
    pub fn record_epoch(
        &mut self,
        epoch: u64,
        samples: u64,
        steps: u64,
        train: StepStats,
        test: Evaluation,
    ) -> Result<()> {
        self.push(MetricRow {
            kind: RowKind::Epoch,
            epoch: epoch + 1,
            step: steps,
            samples,
            train_loss: train.loss,
            train_acc: train.accuracy,
            test_loss: Some(test.loss),
            test_acc: Some(test.accuracy),
            seconds: self.seconds(),
        })
    }
}

/// Reads a CSV written by [`MetricsLog::to_csv`] back into rows.
///
/// Errors: [`MepError::Io`] when unreadable; [`MepError::CorruptData`] naming the
/// line when the header or a field is not what [`MetricsLog`] writes.
pub fn read_csv(path: impl AsRef<Path>) -> Result<Vec<MetricRow>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| MepError::io(path, e))?;
    parse_csv(path, &text)
}

/// The rows of `text`, the contents of the metrics CSV at `path` (named in errors).
/// Blank lines at the end (an editor's) are ignored.
fn parse_csv(path: &Path, text: &str) -> Result<Vec<MetricRow>> {
    let text = text.trim_end();
    let bad = |line: usize, why: String| MepError::CorruptData {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why} (expected a metrics CSV written by mep-mnist --metrics)"),
    };
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        return Err(bad(1, format!("header is not `{CSV_HEADER}`")));
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 9 {
            return Err(bad(n, format!("{} fields instead of 9", f.len())));
        }
        let num = |k: usize| {
            f[k].parse::<f64>()
                .map_err(|_| bad(n, format!("field {} is `{}`", k + 1, f[k])))
        };
        let int = |k: usize| {
            f[k].parse::<u64>()
                .map_err(|_| bad(n, format!("field {} is `{}`", k + 1, f[k])))
        };
        let opt = |k: usize| if f[k].is_empty() { Ok(None) } else { num(k).map(Some) };
        let kind = match f[0] {
            "step" => RowKind::Step,
            "epoch" => RowKind::Epoch,
            other => return Err(bad(n, format!("kind `{other}` is neither step nor epoch"))),
        };
        let row = MetricRow {
            kind,
            epoch: int(1)?,
            step: int(2)?,
            samples: int(3)?,
            train_loss: num(4)?,
            train_acc: num(5)?,
            test_loss: opt(6)?,
            test_acc: opt(7)?,
            seconds: num(8)?,
        };
        if let Some(why) = row.problem() {
            return Err(bad(n, why));
        }
        rows.push(row);
    }
    Ok(rows)
}
