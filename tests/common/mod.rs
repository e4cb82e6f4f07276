//! Shared helpers for the integration tests: fresh random inputs, f64 linear
//! algebra references, and small networks on the f64 CPU backend.
#![allow(dead_code)]

use mep::backend::cpu::Cpu;
use mep::backend::cuda::Cuda;
use mep::backend::{Backend, NormRule};
use mep::ep::{compute_gradients, Energy, GradConfig, Grads, Workspace};
use mep::nn::activation::ActChain;
use mep::nn::{Activation, Arch, Network};
use mep::rng::Rng;
use mep::Loss;

/// A seed that differs between runs (printed so a failure can be replayed with
/// `MEP_TEST_SEED`).
pub fn fresh_seed(tag: &str) -> u64 {
    let seed = std::env::var("MEP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("[{tag}] seed {seed} (replay with MEP_TEST_SEED={seed})");
    seed
}

pub fn normals(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| scale * rng.normal()).collect()
}

pub fn labels(rng: &mut Rng, n: usize, classes: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(classes as u64) as u32).collect()
}

pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

/// Eigenvalues of a symmetric n×n matrix (cyclic Jacobi, f64).
pub fn sym_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-26 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

/// Singular values of a rows×cols row-major matrix (via the smaller Gram matrix).
pub fn singular_values(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let (k, wide) = if rows <= cols { (rows, true) } else { (cols, false) };
    let mut g = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            g[i * k + j] = if wide {
                (0..cols).map(|t| m[i * cols + t] * m[j * cols + t]).sum()
            } else {
                (0..rows).map(|t| m[t * cols + i] * m[t * cols + j]).sum()
            };
        }
    }
    let mut s: Vec<f64> = sym_eigenvalues(g, k).into_iter().map(|e| e.max(0.0).sqrt()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s
}

/// A network on the f64 CPU backend.
pub fn net64(sizes: &[usize], hidden: Activation, energy: Energy, seed: u64) -> Network<Cpu<f64>> {
    Network::new(Cpu::<f64>::new(), Arch::mlp(sizes, hidden).unwrap(), energy, seed).unwrap()
}

/// Flattens all parameters (W then b per block).
pub fn flat_params(net: &Network<Cpu<f64>>) -> Vec<f64> {
    net.to_host()
        .unwrap()
        .into_iter()
        .flat_map(|(w, b)| w.into_iter().chain(b))
        .collect()
}

pub fn flat_grads(g: &Grads<Cpu<f64>>) -> Vec<f64> {
    g.w.iter()
        .zip(&g.b)
        .flat_map(|(w, b)| w.iter().chain(b.iter()).copied())
        .collect()
}

/// Sets parameters from a flat vector (inverse of `flat_params`).
pub fn set_flat(net: &mut Network<Cpu<f64>>, flat: &[f64]) {
    let mut off = 0;
    let mut vals = Vec::new();
    for blk in net.arch.blocks().to_vec() {
        let w = flat[off..off + blk.out * blk.inp].to_vec();
        off += blk.out * blk.inp;
        let b = flat[off..off + blk.out].to_vec();
        off += blk.out;
        vals.push((w, b));
    }
    net.set_from_host(&vals).unwrap();
}

/// A workspace holding the batch (x, y).
pub fn workspace(net: &Network<Cpu<f64>>, x: &[f64], y: &[u32]) -> Workspace<Cpu<f64>> {
    let mut ws = Workspace::new(&net.backend, &net.arch, y.len()).unwrap();
    ws.load_host_batch(x, y).unwrap();
    ws
}

/// Mean cost of inference (forward pass or free equilibrium) on (x, y).
pub fn mean_cost(net: &Network<Cpu<f64>>, x: &[f64], y: &[u32], loss: Loss) -> f64 {
    let mut ws = workspace(net, x, y);
    let rows = y.len();
    mep::ep::inference(net, &mut ws, rows).unwrap();
    let mut stats = vec![0.0; 2];
    net.backend
        .cost_stats(
            rows,
            net.arch.outputs(),
            mep::ep::output(net, &ws),
            &ws.y,
            loss,
            &mut stats,
        )
        .unwrap();
    stats[0] / rows as f64
}

/// Central finite differences of `mean_cost` with respect to every parameter.
pub fn finite_diff(net: &mut Network<Cpu<f64>>, x: &[f64], y: &[u32], loss: Loss, h: f64) -> Vec<f64> {
    let p = flat_params(net);
    let mut g = vec![0.0; p.len()];
    for i in 0..p.len() {
        let mut q = p.clone();
        q[i] = p[i] + h;
        set_flat(net, &q);
        let up = mean_cost(net, x, y, loss);
        q[i] = p[i] - h;
        set_flat(net, &q);
        let down = mean_cost(net, x, y, loss);
        g[i] = (up - down) / (2.0 * h);
    }
    set_flat(net, &p);
    g
}

/// The gradient (EP estimate or Backprop) for (x, y) under `cfg`.
pub fn gradient(net: &Network<Cpu<f64>>, cfg: &GradConfig, x: &[f64], y: &[u32]) -> Vec<f64> {
    let mut ws = workspace(net, x, y);
    let mut grads = Grads::new(&net.backend, &net.arch).unwrap();
    compute_gradients(net, cfg, &mut ws, y.len(), &mut grads).unwrap();
    flat_grads(&grads)
}

/// The CUDA backend on device 0, or `None` (with a message) when there is none;
/// panics instead when `MEP_REQUIRE_GPU=1`.
pub fn gpu() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(c) => {
            eprintln!("testing {}", c.name());
            Some(c)
        }
        Err(e) if std::env::var("MEP_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("MEP_REQUIRE_GPU=1 but CUDA is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no usable GPU ({e}); set MEP_REQUIRE_GPU=1 to make this an error");
            None
        }
    }
}

/// The emulated GPU's counters (`emu/`), when it is the driver this process loaded:
/// (names, values). `None` on a real GPU or without one.
pub fn emulator_counters() -> Option<Vec<(String, u64)>> {
    use std::ffi::{c_char, c_int, c_void, CStr};
    extern "C" {
        fn dlopen(name: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;
    const RTLD_NOLOAD: c_int = 4;
    // SAFETY: RTLD_NOLOAD only finds the already loaded driver; the symbols have the
    // signatures emu/src/lib.rs exports.
    unsafe {
        let h = dlopen(c"libcuda.so".as_ptr(), RTLD_NOW | RTLD_NOLOAD);
        if h.is_null() {
            return None;
        }
        let read = dlsym(h, c"mep_emu_counters".as_ptr());
        let names = dlsym(h, c"mep_emu_counter_names".as_ptr());
        if read.is_null() || names.is_null() {
            return None;
        }
        let read: unsafe extern "C" fn(*mut u64, usize) -> usize = std::mem::transmute(read);
        let names: unsafe extern "C" fn() -> *const c_char = std::mem::transmute(names);
        let mut v = [0u64; 32];
        let n = read(v.as_mut_ptr(), v.len());
        let names = CStr::from_ptr(names()).to_string_lossy().into_owned();
        Some(names.split(',').map(String::from).zip(v[..n].iter().copied()).collect())
    }
}

// ---- f32 kernel checks (host-compiled and CUDA kernels against the CPU backend) ----

/// Relative tolerance of the f32 kernel-vs-CPU checks: ‖Δ‖/‖ref‖.
pub const KERNEL_TOL: f64 = 1e-5;

/// A seed that differs between runs (`fresh_seed`) and its generator.
pub fn rng() -> (u64, Rng) {
    let seed = fresh_seed("kernels");
    (seed, Rng::new(seed))
}

/// `len` normals times `scale`, in f32.
pub fn randn(rng: &mut Rng, len: usize, scale: f64) -> Vec<f32> {
    (0..len).map(|_| (rng.normal() * scale) as f32).collect()
}

/// Asserts ‖got − want‖/‖want‖ ≤ [`KERNEL_TOL`] (‖Δ‖ when want is all zeros).
#[track_caller]
pub fn close(what: &str, seed: u64, got: &[f32], want: &[f32]) {
    let r = norm(want.iter().map(|&w| w as f64));
    within_norm(what, seed, got, want, if r == 0.0 { 1.0 } else { r }, "‖ref‖");
}

/// ‖got − want‖ / ‖scale‖ ≤ [`KERNEL_TOL`], where `scale` holds the magnitudes of the
/// terms each output sums: what f32 rounding is relative to when the sum nearly
/// cancels (an error relative to the result would fail a correct kernel there).
#[track_caller]
pub fn close_to_scale(what: &str, seed: u64, got: &[f32], want: &[f32], scale: &[f64]) {
    assert_eq!(scale.len(), want.len(), "{what} (seed {seed}): scale length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what} (seed {seed}): non-finite output"
    );
    let r = norm(scale.iter().copied()).max(f64::MIN_POSITIVE);
    within_norm(what, seed, got, want, r, "‖Σ|terms|‖");
}

/// Δa = φ(s⋆ + u) − φ(s⋆) against another backend's, element by element, within
/// 64 ε of |Δa| + |u|: the deviations are accurate relative to themselves (not to
/// φ(s⋆), which is what a subtraction would give and this would fail).
#[track_caller]
pub fn close_delta(what: &str, seed: u64, got: &[f32], want: &[f32], u: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what} (seed {seed}): lengths");
    for (i, ((&g, &w), &uv)) in got.iter().zip(want).zip(u).enumerate() {
        let bound = 64.0 * f32::EPSILON as f64 * ((w as f64).abs() + (uv as f64).abs());
        assert!(
            (g as f64 - w as f64).abs() <= bound,
            "{what} (seed {seed}), entry {i}: got {g:e}, want {w:e} (±{bound:e}, u = {uv:e})"
        );
    }
}

/// The Euclidean norm, in f64.
fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// Asserts ‖got − want‖ / `denom` ≤ [`KERNEL_TOL`]; `denom_name` says what `denom` is.
#[track_caller]
fn within_norm(what: &str, seed: u64, got: &[f32], want: &[f32], denom: f64, denom_name: &str) {
    assert_eq!(got.len(), want.len(), "{what} (seed {seed}): lengths");
    let e = norm(got.iter().zip(want).map(|(g, w)| *g as f64 - *w as f64)) / denom;
    assert!(
        e <= KERNEL_TOL,
        "{what} (seed {seed}): ‖Δ‖/{denom_name} = {e:e} > {KERNEL_TOL:e}\n got  {got:?}\n want {want:?}"
    );
}

/// Identity, every single activation, every pair, and one triple.
pub fn chains() -> Vec<ActChain> {
    use Activation::*;
    let acts = [Relu, Sigmoid, Tanh, HardSigmoid];
    let mut v = vec![ActChain::IDENTITY];
    for a in acts {
        v.push(ActChain::single(a));
        for b in acts {
            v.push(ActChain::single(a).then(b).unwrap());
        }
    }
    v.push(ActChain::single(Tanh).then(Relu).unwrap().then(Sigmoid).unwrap());
    let mut long = ActChain::IDENTITY;
    for i in 0..ActChain::MAX {
        long = long.then(acts[i % 4]).unwrap();
    }
    v.push(long);
    v
}

/// A Newton–Schulz iteration's inputs as orthogonalisation meets them: the Gram
/// matrix A = s²·XXᵀ of a random `k × (k + extra)` X normalised to ‖X‖_F = 1, scaled
/// by s² ∈ [0.5, 1.5] (a later iteration's spectrum reaches past 1), and a random Q.
pub fn ns_inputs(r: &mut Rng, k: usize) -> (Vec<f32>, Vec<f32>) {
    let n = k + r.below(40) as usize;
    let x = normals(r, k * n, 1.0);
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let s2 = 0.5 + r.uniform();
    let mut a = vec![0.0f32; k * k];
    for i in 0..k {
        for j in 0..k {
            let d: f64 = (0..n).map(|t| x[i * n + t] * x[j * n + t]).sum();
            a[i * k + j] = (s2 * d / (norm * norm)) as f32;
        }
    }
    let q = randn(r, k * k, 1.0 / (k as f64).sqrt());
    (a, q)
}

/// `NsNorm`'s (scale_gram, scale_q), or no norm: every kind of `Backend::ns_iteration` call.
pub const NS_NORMS: [Option<(bool, bool)>; 4] = [None, Some((true, true)), Some((true, false)), Some((false, true))];

/// One `Backend::ns_iteration` case and its expected results ([`within`]'s pairs).
pub struct NsCase {
    /// Σu² (1 without a norm).
    pub sum_sq: f32,
    /// The Gram matrix the iteration gets.
    pub gram: Vec<f32>,
    /// Q' = P·Q (times s with `scale_q`) and A' = P·A·P.
    pub want_q: (Vec<f64>, Vec<f64>),
    pub want_a: (Vec<f64>, Vec<f64>),
}

/// The case of normalised Gram matrix `a` and Q (`None`: Q = I) under `norm`
/// ([`NS_NORMS`]): with a norm, a random Σu² (norms from 0.3 to 30) and
/// s = 1 / (√Σu² + eps); the iteration gets `a`/s² when `scale_gram` (else `a`), and
/// the definition takes that input times s² (in f64, rounded to f32 as the kernel's
/// scaled load is), its Q' times s when `scale_q`.
pub fn ns_case(
    r: &mut Rng,
    k: usize,
    coeffs: (f64, f64, f64),
    a: &[f32],
    q: Option<&[f32]>,
    norm: Option<(bool, bool)>,
    eps: f64,
) -> NsCase {
    let Some((scale_gram, scale_q)) = norm else {
        let (want_q, want_a) = ns_iteration_reference(k, coeffs, a, q);
        return NsCase {
            sum_sq: 1.0,
            gram: a.to_vec(),
            want_q,
            want_a,
        };
    };
    let size = 0.3 * 100f64.powf(r.uniform());
    let sum_sq = (size * size) as f32;
    let s = 1.0 / ((sum_sq as f64).sqrt() + eps);
    let (gram, a_def) = if scale_gram {
        let gram: Vec<f32> = a.iter().map(|v| (*v as f64 / (s * s)) as f32).collect();
        let a_def = gram.iter().map(|v| (*v as f64 * s * s) as f32).collect();
        (gram, a_def)
    } else {
        (a.to_vec(), a.to_vec())
    };
    let (want_q, want_a) = ns_iteration_reference(k, coeffs, &a_def, q);
    let want_q = if scale_q {
        (
            want_q.0.iter().map(|v| v * s).collect(),
            want_q.1.iter().map(|v| v * s).collect(),
        )
    } else {
        want_q
    };
    NsCase {
        sum_sq,
        gram,
        want_q,
        want_a,
    }
}

/// f64 definition of one Newton–Schulz iteration (`Backend::ns_iteration`) on f32
/// inputs: P = aI + bA + cA², Q' = P·Q (P when `q` is `None`) and A' = P·A·P, each
/// with a bound on an f32 evaluation's error: the same sums over |A| and |Q| (for
/// A', along Horner's rule, the longest chain an implementation may take), times
/// 4(k + 3)ε per product on the way.
#[allow(clippy::type_complexity)]
pub fn ns_iteration_reference(
    k: usize,
    (a, b, c): (f64, f64, f64),
    gram: &[f32],
    q: Option<&[f32]>,
) -> ((Vec<f64>, Vec<f64>), (Vec<f64>, Vec<f64>)) {
    let mul = |x: &[f64], y: &[f64]| -> Vec<f64> {
        let mut o = vec![0.0; k * k];
        for i in 0..k {
            for m in 0..k {
                let xim = x[i * k + m];
                for j in 0..k {
                    o[i * k + j] += xim * y[m * k + j];
                }
            }
        }
        o
    };
    let eye = |v: f64| -> Vec<f64> { (0..k * k).map(|e| if e / k == e % k { v } else { 0.0 }).collect() };
    let lin = |x: &[f64], s: f64, y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * s + q).collect() };
    let am: Vec<f64> = gram.iter().map(|v| *v as f64).collect();
    let aa: Vec<f64> = am.iter().map(|v| v.abs()).collect();
    let p = lin(&mul(&am, &am), c, &lin(&am, b, &eye(a)));
    let p_abs = lin(&mul(&aa, &aa), c.abs(), &lin(&aa, b.abs(), &eye(a.abs())));
    let eps = 4.0 * (k as f64 + 3.0) * f32::EPSILON as f64;
    let (qn, qn_bound) = match q {
        None => (p.clone(), p_abs.clone()),
        Some(q) => {
            let qm: Vec<f64> = q.iter().map(|v| *v as f64).collect();
            let qa: Vec<f64> = qm.iter().map(|v| v.abs()).collect();
            (mul(&p, &qm), mul(&p_abs, &qa).iter().map(|v| 2.0 * v).collect())
        }
    };
    let an = mul(&mul(&p, &am), &p);
    // |A|·p̄(|A|)² by Horner with |hᵢ|: the sums every rounding in the chain scales with.
    let h = mep::backend::ns_horner_coeffs((a, b, c)).map(f64::abs);
    let mut hb = lin(&aa, h[0], &eye(h[1]));
    for hi in &h[2..] {
        hb = lin(&mul(&hb, &aa), 1.0, &eye(*hi));
    }
    let an_bound: Vec<f64> = mul(&hb, &aa).iter().map(|v| 5.0 * v).collect();
    let tol = |bound: Vec<f64>| bound.iter().map(|v| eps * v + 1e-30).collect();
    ((qn, tol(qn_bound)), (an, tol(an_bound)))
}

/// Checks `got` against `(want, tol)` entry by entry.
pub fn within(what: &str, seed: u64, got: &[f32], (want, tol): &(Vec<f64>, Vec<f64>)) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (e, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        let d = (*g as f64 - w).abs();
        assert!(
            d <= *t,
            "{what}, entry {e}: got {g}, want {w} (|Δ| {d:e} > {t:e}; seed {seed})"
        );
    }
}

/// `scale_by_inv_norm`'s `InversePowerOfTwo` and `OrKeep` rules on another backend
/// against the CPU's, on `x` with a squared norm of `own` (x's own), 1e-30, 3e30, 0,
/// ∞ and NaN: the power of two and the "keep" branch bit for bit, OrKeep's division
/// to rounding. `run(rule, s)` runs the other backend with `sumsq = [s]` on a `y`
/// filled with 5.0 and returns it.
pub fn norm_rules_match_the_cpu(seed: u64, x: &[f32], own: f32, run: impl Fn(NormRule, f32) -> Vec<f32>) {
    let cpu = Cpu::<f32>::new();
    for s in [own, 1e-30, 3e30, 0.0, f32::INFINITY, f32::NAN] {
        for rule in [NormRule::InversePowerOfTwo, NormRule::OrKeep] {
            let mut want = vec![5.0f32; x.len()];
            cpu.scale_by_inv_norm(&x.to_vec(), &vec![s], rule, &mut want).unwrap();
            let got = run(rule, s);
            if rule == NormRule::InversePowerOfTwo || !(s > 0.0 && s.is_finite()) {
                assert!(
                    got == want,
                    "seed {seed}: scale_by_inv_norm {rule:?} with s = {s} differs from the CPU's"
                );
            } else {
                close(&format!("scale_by_inv_norm {rule:?} s = {s}"), seed, &got, &want);
            }
        }
    }
}
