//! The CPU backend's GEMM: C ← αAB + βC, split into panels over the
//! [`super::pool`] threads, each panel one single-threaded call of the GEMM library.
//!
//! Library, per product (chosen from the whole product's shape, so every panel of
//! it uses the same one), by measurement:
//! - products with fewer than 32 rows or columns (the settle loop's 64×10×128 and
//!   the output layer's 10×128×64): the `gemm` crate, about 2× matrixmultiply's rate
//!   on an AMD EPYC (Zen 4), one thread;
//! - larger ones: matrixmultiply on CPUs that run AVX-512 at full width (its AVX-512
//!   kernels; issue 11 measured 150–170 GFLOP/s per core on an Intel Xeon), the
//!   `gemm` crate elsewhere. On stable Rust the `gemm` crate runs AVX2+FMA kernels
//!   only (its AVX-512 ones need nightly), which on Zen 4, whose AVX-512 units are
//!   256 bits wide, is no loss: 100–103 against matrixmultiply's 87–107 GFLOP/s on
//!   the seed's 128×128×784, 128³ and 64×128×784 products (BENCHMARKS.md §6).
//!
//! `MEP_CPU_GEMM=gemm` or `MEP_CPU_GEMM=matrixmultiply` forces one library for every
//! product, to re-measure the choice on another CPU without rebuilding.

use super::pool::pool;
use super::Scalar;
use std::sync::OnceLock;

/// GEMMs below this many FLOPs run on one thread: a fork costs about a microsecond
/// with spinning helpers, so a split pays from a few hundred kFLOP.
pub(super) const PAR_FLOPS: f64 = 2e5;

/// Panels start at multiples of this many rows: matrixmultiply computes C in tiles
/// of up to 16 rows and scales partial tiles by α separately, so a panel boundary
/// inside a tile would change the rounding of α·AB (measured with k > 256).
const PANEL_ALIGN: usize = 16;

/// Fewest rows of C per panel with matrixmultiply (whose blocking does not depend
/// on the shape otherwise).
const MIN_PANEL_ROWS: usize = 16;

/// Fewest rows of C per panel with the `gemm` crate, so that every panel takes the same path through the
/// `gemm` crate (0.18) as the whole product and rounds alike:
/// - no split at all for n = 1 or k ≤ 2, which take its matrix–vector paths, nor
///   for a transposed B with n ≤ 32, whose path through the crate follows m·n;
/// - at least 16 rows (a one-row panel would take a matrix–vector path too);
/// - with n ≤ 64 and k > 512, more than 64 rows: below 65 rows × 64 columns the crate
///   blocks k in chunks of 512 instead of evenly, which changes the sums' order.
///
/// `panels_do_not_change_results` checks this on random shapes.
fn min_panel_rows(n: usize, k: usize, tb: bool) -> usize {
    if n <= 1 || k <= 2 || (tb && n <= 32) {
        usize::MAX
    } else if n <= 64 && k > 512 {
        65
    } else {
        16
    }
}

/// A row-major matrix operand: base pointer and (row, column) strides in elements.
#[derive(Clone, Copy)]
struct Operand<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

/// C's base pointer, shareable across the panel tasks (each writes its own panel).
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);
// SAFETY: the panel tasks write disjoint parts of C, and `gemm` does not return until
// they have finished.
unsafe impl<T> Send for OutPtr<T> {}
unsafe impl<T> Sync for OutPtr<T> {}
unsafe impl<T> Send for Operand<T> {}
unsafe impl<T> Sync for Operand<T> {}

/// C (`m × n`, row-major) ← α op(A) op(B) + β C, where op(A) is `m × k` (A stored
/// `k × m` when `ta`) and op(B) is `k × n` (stored `n × k` when `tb`). With β = 0, C is
/// not read (BLAS semantics). Lengths are checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<T: Scalar>(
    threads: usize,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    gemm_on(library(m, n), threads, ta, tb, m, n, k, alpha, a, b, beta, c);
}

/// [`gemm`] on a given library.
#[allow(clippy::too_many_arguments)]
fn gemm_on<T: Scalar>(
    lib: Library,
    threads: usize,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let (mi, ni, ki) = (m as isize, n as isize, k as isize);
    let a = Operand {
        ptr: a.as_ptr(),
        rs: if ta { 1 } else { ki },
        cs: if ta { mi } else { 1 },
    };
    let b = Operand {
        ptr: b.as_ptr(),
        rs: if tb { 1 } else { ni },
        cs: if tb { ki } else { 1 },
    };
    let cp = OutPtr(c.as_mut_ptr());
    let flops = 2.0 * (m * n * k) as f64;
    let min_rows = match lib {
        Library::Gemm => min_panel_rows(n, k, tb),
        Library::MatrixMultiply => MIN_PANEL_ROWS,
    };
    let parts = if flops >= PAR_FLOPS {
        threads.min(m / min_rows).max(1)
    } else {
        1
    };
    if parts == 1 || n == 0 {
        // SAFETY: the operands cover m×k, k×n and m×n elements (checked by the caller).
        unsafe { kernel(lib, m, n, k, alpha, a, b, beta, cp.0, ni) };
        return;
    }
    // Panels of C's rows (a multiple of PANEL_ALIGN rows each), one per thread. Only rows are
    // split: each row of C is then computed by the same library code whatever the
    // panel count, so results do not depend on the thread count (checked by
    // `panels_do_not_change_results`). Splitting columns does change them: the
    // library's blocking of B^T operands follows the column count.
    let step = m.div_ceil(parts).next_multiple_of(PANEL_ALIGN);
    let mut tasks = m.div_ceil(step);
    if m - (tasks - 1) * step < min_rows {
        // A short last panel joins the one before it (a one-row panel would take
        // the library's matrix–vector path, which sums in another order).
        tasks -= 1;
    }
    pool().run(threads, tasks, &|t| {
        let lo = t * step;
        let hi = if t + 1 == tasks { m } else { lo + step };
        let (cp, a) = (cp, a);
        let ap = Operand {
            // SAFETY: rows lo..hi of op(A) are in bounds (lo < m).
            ptr: unsafe { a.ptr.offset(lo as isize * a.rs) },
            ..a
        };
        // SAFETY: panel t covers rows lo..hi of C and of op(A); panels are disjoint.
        unsafe { kernel(lib, hi - lo, n, k, alpha, ap, b, beta, cp.0.add(lo * n), ni) };
    });
}

/// One single-threaded GEMM of the library on strided operands; C has row stride
/// `ldc` and unit column stride.
///
/// # Safety
/// The operands must cover the elements their strides address.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<T: Scalar>(
    lib: Library,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Operand<T>,
    b: Operand<T>,
    beta: T,
    c: *mut T,
    ldc: isize,
) {
    if lib == Library::MatrixMultiply {
        return matrixmultiply_kernel(m, n, k, alpha, a, b, beta, c, ldc);
    }
    // `gemm` computes dst ← α·dst + β·lhs·rhs; with read_dst = false dst is not read.
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc,
        beta != T::zero(),
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        beta,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
    clear_upper_registers();
}

/// Leaves the vector registers' upper halves clean after a library call: code that
/// returns with them dirty makes later SSE code on Intel CPUs pay a state-transition
/// penalty (issue 11 measured the rest of a step 2.4× slower after faer's kernels).
#[inline]
fn clear_upper_registers() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present (checked above).
        unsafe { std::arch::x86_64::_mm256_zeroupper() };
    }
}

/// The GEMM library of one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Library {
    Gemm,
    MatrixMultiply,
}

/// Rows or columns below which a product is narrow (see the module docs).
const NARROW: usize = 32;

/// The library for an `m × n` product (see the module docs).
fn library(m: usize, n: usize) -> Library {
    static CHOICE: OnceLock<(Option<Library>, bool)> = OnceLock::new();
    let (forced, wide_avx512) = *CHOICE.get_or_init(|| {
        let forced = match std::env::var("MEP_CPU_GEMM").as_deref() {
            Ok("gemm") => Some(Library::Gemm),
            Ok("matrixmultiply") => Some(Library::MatrixMultiply),
            _ => None,
        };
        (forced, full_width_avx512())
    });
    match forced {
        Some(lib) => lib,
        None if m < NARROW || n < NARROW || !wide_avx512 => Library::Gemm,
        None => Library::MatrixMultiply,
    }
}

/// AVX-512 with 512-bit wide units: AVX-512F on any CPU but AMD's family 19h (Zen 4),
/// which splits each 512-bit operation into two 256-bit halves.
fn full_width_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return false;
        }
        let (vendor, sig) = (__cpuid(0), __cpuid(1));
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let base = (sig.eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((sig.eax >> 20) & 0xFF)
        } else {
            base
        };
        !(amd && family == 0x19)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`kernel`] on matrixmultiply (f32 and f64 only, like the backend).
#[allow(clippy::too_many_arguments)]
unsafe fn matrixmultiply_kernel<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Operand<T>,
    b: Operand<T>,
    beta: T,
    c: *mut T,
    ldc: isize,
) {
    use std::any::TypeId;
    // The same call on matrixmultiply's f32 or f64 entry point (T is one of them).
    macro_rules! call {
        ($f:path, $t:ty) => {
            $f(
                m,
                k,
                n,
                alpha.f64() as $t,
                a.ptr.cast(),
                a.rs,
                a.cs,
                b.ptr.cast(),
                b.rs,
                b.cs,
                beta.f64() as $t,
                c.cast(),
                ldc,
                1,
            )
        };
    }
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        call!(matrixmultiply::sgemm, f32);
    } else {
        call!(matrixmultiply::dgemm, f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random<T: Scalar>(rng: &mut Rng, n: usize) -> Vec<T> {
        (0..n).map(|_| T::of(rng.normal())).collect()
    }

    fn check<T: Scalar>(lib: Library, rng: &mut Rng, (m, n, k): (usize, usize, usize)) {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = random::<T>(rng, m * k);
            let b = random::<T>(rng, k * n);
            let c0 = random::<T>(rng, m * n);
            for beta in [0.0, 0.5] {
                let (alpha, beta) = (T::of(1.5), T::of(beta));
                let mut one = c0.clone();
                gemm_on(lib, 1, ta, tb, m, n, k, alpha, &a, &b, beta, &mut one);
                for threads in [2, 3, 5] {
                    let mut many = c0.clone();
                    gemm_on(lib, threads, ta, tb, m, n, k, alpha, &a, &b, beta, &mut many);
                    assert!(
                        one == many,
                        "{lib:?} {m}x{n}x{k} ta={ta} tb={tb} β={beta:?} ({}): {threads} threads differ from 1",
                        std::any::type_name::<T>()
                    );
                }
            }
        }
    }

    /// Results are bit-identical for every panel count (thread count), so CPU runs
    /// reproduce on any machine; checked for both libraries on the seed step's
    /// shapes, on shapes at the edges of [`min_panel_rows`] and on random ones, in
    /// f32 and f64.
    #[test]
    fn panels_do_not_change_results() {
        let mut rng = Rng::new(0x5eed ^ std::process::id() as u64);
        let mut shapes = vec![
            (128, 128, 784),
            (64, 128, 784),
            (128, 784, 64),
            (128, 784, 128),
            (128, 128, 128),
            (97, 33, 301),
            (200, 10, 70),
            (33, 257, 129),
            (283, 44, 864),
            (130, 64, 600),
            (100, 65, 700),
            (260, 1, 900),
            (300, 7, 2),
            (200, 4, 256),
            (260, 2, 64),
            (64, 10, 128),
            (96, 16, 100),
            (200, 33, 64),
        ];
        for _ in 0..12 {
            let mut dim = |lo: f64, hi: f64| rng.uniform_range(lo, hi) as usize;
            shapes.push((dim(16.0, 300.0), dim(1.0, 100.0), dim(1.0, 900.0)));
        }
        for lib in [Library::Gemm, Library::MatrixMultiply] {
            for &shape in &shapes {
                check::<f32>(lib, &mut rng, shape);
                check::<f64>(lib, &mut rng, shape);
            }
        }
    }
}
