//! `gemm_map` (row-major GEMM → column-major cuBLAS call) checked without a GPU: a
//! naive column-major SGEMM with cuBLAS's exact argument semantics (transa, transb, m,
//! n, k, α, A, lda, B, ldb, β, C, ldc), driven by the mapping, must reproduce the CPU
//! backend's row-major `gemm` (f64) for every transpose combination.

use mep::backend::cpu::Cpu;
use mep::backend::cuda::gemm_map::{gemm_map, Operand};
use mep::backend::Backend;
use mep::rng::Rng;

/// cuBLAS `gemm` semantics, column-major: element (i, j) of a matrix with leading
/// dimension ld is at i + j·ld; op(X) = X or Xᵀ. With β = 0, C is not read.
#[allow(clippy::too_many_arguments)]
fn colmajor_gemm(
    transa: bool,
    transb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    beta: f64,
    c: &mut [f64],
    ldc: usize,
) {
    // op(A) is m×k: stored m×k (lda ≥ m) or, transposed, k×m (lda ≥ k).
    assert!(lda >= if transa { k } else { m }.max(1), "lda too small");
    assert!(ldb >= if transb { n } else { k }.max(1), "ldb too small");
    assert!(ldc >= m.max(1), "ldc too small");
    let opa = |i: usize, p: usize| if transa { a[p + i * lda] } else { a[i + p * lda] };
    let opb = |p: usize, j: usize| if transb { b[j + p * ldb] } else { b[p + j * ldb] };
    for j in 0..n {
        for i in 0..m {
            let s: f64 = (0..k).map(|p| opa(i, p) * opb(p, j)).sum();
            let old = if beta == 0.0 { 0.0 } else { beta * c[i + j * ldc] };
            c[i + j * ldc] = alpha * s + old;
        }
    }
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let d: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
    let r: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    d / r.max(1e-300)
}

#[test]
fn mapping_matches_cpu_gemm_for_all_transposes() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng::new(seed);
    let cpu = Cpu::<f64>::new();
    for trial in 0..40 {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (m, n, k) = (
                1 + rng.below(17) as usize,
                1 + rng.below(17) as usize,
                1 + rng.below(17) as usize,
            );
            let alpha = rng.uniform_range(-2.0, 2.0);
            let beta = if trial % 3 == 0 {
                0.0
            } else {
                rng.uniform_range(-2.0, 2.0)
            };
            let mut randv = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f64>>();
            let a = randv(m * k);
            let b = randv(k * n);
            let mut c0 = randv(m * n);
            if beta == 0.0 {
                c0[0] = f64::NAN; // β = 0 must ignore C entirely
            }

            let mut want = c0.clone();
            cpu.gemm(ta, tb, m, n, k, alpha, &a, &b, beta, &mut want).unwrap();

            let g = gemm_map(ta, tb, m, n, k);
            let pick = |o: Operand| if o == Operand::A { &a } else { &b };
            let mut got = c0.clone();
            colmajor_gemm(
                g.transa,
                g.transb,
                g.m,
                g.n,
                g.k,
                alpha,
                pick(g.first),
                g.lda,
                pick(g.second),
                g.ldb,
                beta,
                &mut got,
                g.ldc,
            );

            let e = rel_err(&got, &want);
            assert!(
                e <= 1e-12,
                "seed {seed}: ta={ta} tb={tb} m={m} n={n} k={k} β={beta}: rel err {e:e}"
            );
        }
    }
}

#[test]
fn leading_dimensions_are_never_zero() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let g = gemm_map(ta, tb, 0, 0, 0);
        assert!(g.lda >= 1 && g.ldb >= 1 && g.ldc >= 1);
    }
}
