//! Step scalars on the device: the values that change from one optimizer step to the
//! next (the scheduled learning rate, Adam's bias corrections, the batch's sample
//! indices) live in one `u32` buffer that the host writes once per step, and the
//! kernels read them from there instead of from their arguments. A captured step
//! (a CUDA graph, [`super::Backend::begin_capture`]) can then be replayed unchanged
//! for every step: the graph bakes in the buffer's address, not its contents.
//!
//! Layout: `S` scalar slots of [`WORDS_PER_SLOT`] words each: the value as an `f64`
//! (two words, low first, for f64 backends), then the same value rounded to `f32`
//! (the word [`f32_word`], which the f32 kernels read, and which cuBLAS reads as α or
//! β in device pointer mode: [`super::Backend::gemm_ctl`]); then whatever the caller
//! appends (the training loop appends the batch's row indices, gathered by
//! [`super::Backend::gather_rows`] with `start = words(S)`). The `f32` word is the
//! `f64` rounded to nearest, exactly as a host scalar argument would be rounded, so a
//! step reads the same values either way.

/// Words per scalar slot: an `f64` (two words) and its `f32` rounding (one).
pub const WORDS_PER_SLOT: usize = 3;

/// Words taken by `slots` scalar slots (where the caller's appended words start).
pub const fn words(slots: usize) -> usize {
    WORDS_PER_SLOT * slots
}

/// The word holding slot `slot`'s value as `f32` bits.
pub const fn f32_word(slot: usize) -> usize {
    WORDS_PER_SLOT * slot + 2
}

/// Appends `scalars` as slot words ([`WORDS_PER_SLOT`] `u32`s each).
pub fn encode(scalars: &[f64], out: &mut Vec<u32>) {
    for &s in scalars {
        let bits = s.to_bits();
        out.push(bits as u32);
        out.push((bits >> 32) as u32);
        out.push((s as f32).to_bits());
    }
}

/// Scalar slot `slot` of an encoded buffer (its `f64`), or `None` past its end.
pub fn scalar(ctl: &[u32], slot: usize) -> Option<f64> {
    let lo = *ctl.get(WORDS_PER_SLOT * slot)? as u64;
    let hi = *ctl.get(WORDS_PER_SLOT * slot + 1)? as u64;
    Some(f64::from_bits(lo | (hi << 32)))
}

/// Scalar slot `slot` of an encoded buffer as the `f32` the kernels read, or `None`
/// past its end.
pub fn scalar_f32(ctl: &[u32], slot: usize) -> Option<f32> {
    ctl.get(f32_word(slot)).map(|w| f32::from_bits(*w))
}

/// Adam's per-step scalars for step `t` (1-based), in f64: `[decay, step,
/// inv_sqrt_bc2]` with decay = 1 − lr·wd, step = lr / (1 − β1ᵗ) and
/// inv_sqrt_bc2 = 1/√(1 − β2ᵗ) — the three slots [`super::Backend::adam`] reads.
pub fn adam_scalars(lr: f64, beta1: f64, beta2: f64, weight_decay: f64, t: u64) -> [f64; 3] {
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    let bc1 = 1.0 - beta1.powi(t);
    let bc2 = 1.0 - beta2.powi(t);
    [1.0 - lr * weight_decay, lr / bc1, 1.0 / bc2.sqrt()]
}

#[cfg(test)]
mod tests {
    use super::words as words_len;
    use super::*;

    #[test]
    fn scalars_round_trip_bit_for_bit() {
        let vals = [0.0, -0.0, 1.0, -3.25e-7, f64::MAX, f64::MIN_POSITIVE, 0.1 + 0.2];
        let mut words = vec![7u32];
        words.clear();
        encode(&vals, &mut words);
        assert_eq!(words.len(), words_len(vals.len()));
        for (i, v) in vals.iter().enumerate() {
            assert_eq!(scalar(&words, i).unwrap().to_bits(), v.to_bits());
            assert_eq!(scalar_f32(&words, i).unwrap().to_bits(), (*v as f32).to_bits());
        }
        assert_eq!(scalar(&words, vals.len()), None);
        assert_eq!(scalar_f32(&words, vals.len()), None);
    }

    #[test]
    fn adam_scalars_match_their_definition() {
        let [decay, step, ibc2] = adam_scalars(1e-3, 0.9, 0.999, 0.01, 3);
        assert_eq!(decay, 1.0 - 1e-3 * 0.01);
        assert!((step - 1e-3 / (1.0 - 0.9f64.powi(3))).abs() < 1e-18);
        assert!((ibc2 - 1.0 / (1.0 - 0.999f64.powi(3)).sqrt()).abs() < 1e-12);
    }
}
