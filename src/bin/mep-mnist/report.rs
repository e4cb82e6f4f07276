//! What the run tells the user: standard output that survives a closed pipe, notices
//! on standard error, errors in the flags' terms, and saving that rescues the model.

use crate::args::*;

/// `1 epoch`, `2 epochs`.
pub(crate) fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Standard output that never panics: the first write error (e.g. a closed pipe,
/// `mep-mnist … | head -n 1`) is kept, later output is dropped, and the run stops
/// training cleanly (the model is still saved) and then reports it.
pub(crate) struct Out {
    pub(crate) failed: Option<std::io::Error>,
}

impl Out {
    pub(crate) fn line(&mut self, s: impl std::fmt::Display) {
        use std::io::Write;
        if self.failed.is_none() {
            let mut o = std::io::stdout().lock();
            if let Err(e) = writeln!(o, "{s}").and_then(|_| o.flush()) {
                self.failed = Some(e);
            }
        }
    }
}

/// Saves the model to `path`; if that fails, writes it next to the system's temporary
/// directory instead so the trained weights are not lost, and says where.
pub(crate) fn save_or_rescue(
    path: &std::path::Path,
    save: impl Fn(&std::path::Path) -> mep::Result<()>,
) -> mep::Result<()> {
    let Err(e) = save(path) else {
        return Ok(());
    };
    let rescue = std::env::temp_dir().join(format!(
        "mep-rescued-{}-{}.safetensors",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    match save(&rescue) {
        Ok(()) => Err(mep::MepError::invalid(
            "save",
            path.display(),
            format!("{e}; the trained weights were written to {} instead", rescue.display()),
        )),
        Err(e2) => Err(mep::MepError::invalid(
            "save",
            path.display(),
            format!("{e}; writing them to {} failed too: {e2}", rescue.display()),
        )),
    }
}

/// `e` with its argument named `name` (the flag) when it is an invalid argument.
pub(crate) fn renamed(name: &'static str, e: mep::MepError) -> mep::MepError {
    match e {
        mep::MepError::InvalidArgument { value, fix, .. } => mep::MepError::invalid(name, value, fix),
        e => e,
    }
}

/// Checks that `path` can be written (see [`mep::io::check_writable`]), naming option
/// `name` in the error.
pub(crate) fn check_writable_as(name: &'static str, path: &std::path::Path) -> mep::Result<()> {
    match mep::io::check_writable(path) {
        Ok(()) => Ok(()),
        Err(mep::MepError::InvalidArgument { value, fix, .. }) => Err(mep::MepError::invalid(name, value, fix)),
        Err(e) => Err(mep::MepError::invalid(
            name,
            path.display(),
            format!("cannot be written: {e}"),
        )),
    }
}

/// The test evaluation. The library refuses a loss that is not finite (the model's
/// outputs overflowed); this says when, and what to do in `mep-mnist`'s terms.
pub(crate) fn evaluate_test(
    model: &mep::Model,
    test: &mep::model::DeviceDataset,
    when: &str,
) -> mep::Result<mep::train::Evaluation> {
    model.evaluate_on(test).map_err(|e| match e {
        mep::MepError::NonFinite(m) => mep::MepError::NonFinite(format!(
            "test loss {when}: {m}; the model diverged or its weights overflow the outputs (check the checkpoint, or train with a lower --lr or with the spectral constraint on)"
        )),
        e => e,
    })
}

/// Says what continuing the metrics CSV at `path` for a run resumed after `start`
/// epochs kept and dropped, where that is not simply "all of it".
pub(crate) fn report_continued(path: &std::path::Path, start: u64, found: &mep::metrics::Continued) {
    let p = path.display();
    if !found.existed && start > 0 {
        notice(format_args!(
            "note: {p} did not exist: its rows start at epoch {}",
            start + 1
        ));
    }
    if found.partial_line {
        notice(format_args!(
            "dropped the last line of {p}, a row cut off without its newline (the run that wrote it stopped mid-row)"
        ));
    }
    if let Some((a, b)) = found.dropped_epochs {
        let epochs = if a == b {
            format!("epoch {a}")
        } else {
            format!("epochs {a}–{b}")
        };
        notice(format_args!(
            "dropped {} of {epochs} from {p}: the checkpoint resumed is at epoch {start}",
            plural(found.dropped as u64, "row")
        ));
    }
    if found.existed && found.last_epoch < start {
        notice(format_args!(
            "note: {p} has epoch rows up to epoch {} only and the checkpoint is at epoch {start}: the curves have a gap",
            found.last_epoch
        ));
    }
}

/// A checkpoint's refusal of this run's normalisation, in the flags' terms: `--dataset
/// mnist` always uses MNIST's constants (so the fix is `--dataset idx --normalize`),
/// and without `--normalize` the value refused was computed, not typed.
pub(crate) fn explain_normalization(
    e: mep::MepError,
    args: &Args,
    shape: &mep::checkpoint::DataShape,
) -> mep::MepError {
    let mep::MepError::InvalidArgument {
        name: "normalize", fix, ..
    } = &e
    else {
        return e;
    };
    let Some(now) = shape.normalization else { return e };
    let how = match (args.dataset, args.normalize) {
        (DatasetArg::Mnist, _) => "MNIST's constants, as --dataset mnist always uses",
        (_, Some(_)) => "given by --normalize",
        (_, None) => "computed from the training pixels",
    };
    let fix = match args.dataset {
        // The checkpoint's own numbers, from the message's `--normalize M,S`.
        DatasetArg::Mnist => fix.replace("(mep-mnist: --normalize", "(mep-mnist: --dataset idx --normalize"),
        _ => fix.clone(),
    };
    mep::MepError::invalid("normalize", format!("{},{} ({how})", now.mean, now.std), fix)
}

/// Says that metrics could not be recorded and that training goes on without them.
pub(crate) fn metrics_failed(e: &mep::MepError) {
    notice(format_args!(
        "warning: metrics are no longer recorded ({e}); training goes on and is saved, and the run ends with this error"
    ));
}

/// A line on standard error, `mep-mnist: …` (never panics).
pub(crate) fn notice(s: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "mep-mnist: {s}");
}

/// `10k` for 10 000, else the number.
pub(crate) fn count_text(n: usize) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
