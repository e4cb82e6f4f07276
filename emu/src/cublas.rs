//! The cuBLAS calls the backend makes, emulated: handle management and
//! `cublasSgemm_v2`, validated as strictly as cuBLAS (and then some) and computed
//! with f64 accumulation.
//!
//! SGEMM checks: a current context; a live handle whose stream exists, and operands
//! that no other stream used (by a kernel or a GEMM) unless an event orders the
//! handle's stream after that use (else the GEMM would race the other stream's work
//! on a GPU; several backends, each on its own stream, may alternate on their own
//! buffers, and a backend's branches are joined by events); transposes N or T; m, n, k ≥ 0; lda/ldb/ldc at least the stored
//! rows; α/β readable (host pointer mode, or 4 bytes of live device memory each in
//! device pointer mode, read when the GEMM runs); and that each operand's whole extent,
//! (columns − 1)·ld + rows elements, lies in one live allocation. With β = 0 the
//! whole of C's extent is first filled with NaN, so nothing can depend on its old
//! contents (padding rows included).

// The exported functions are the CUDA C API: their safety contract is NVIDIA's
// documentation of each call (valid out-pointers, NUL-terminated names, ...).
#![allow(clippy::missing_safety_doc)]

use crate::driver::{current_context_set, faulted, note_use, other_stream_user, stream_is_valid};
use crate::graph::{self, Op, Scalar, Sgemm};
use crate::{check_failed, count, memory, COUNTERS};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Mutex;

pub type Status = c_int;
const SUCCESS: Status = 0;
const NOT_INITIALIZED: Status = 1;
const INVALID_VALUE: Status = 7;
const EXECUTION_FAILED: Status = 13;

struct Handle {
    stream: usize,
    device_pointers: bool,
}

static HANDLES: Mutex<Option<HashMap<usize, Handle>>> = Mutex::new(None);
static NEXT: Mutex<usize> = Mutex::new(0x7B1A_0000);

fn with_handles<T>(f: impl FnOnce(&mut HashMap<usize, Handle>) -> T) -> T {
    f(HANDLES.lock().unwrap().get_or_insert_with(HashMap::new))
}

fn fail(code: Status, msg: String) -> Status {
    check_failed(&msg);
    code
}

#[no_mangle]
pub unsafe extern "C" fn cublasCreate_v2(h: *mut *mut c_void) -> Status {
    if !current_context_set() {
        return fail(NOT_INITIALIZED, "cublasCreate with no current CUDA context".into());
    }
    let id = {
        let mut n = NEXT.lock().unwrap();
        *n += 16;
        *n
    };
    with_handles(|t| {
        t.insert(
            id,
            Handle {
                stream: 0,
                device_pointers: false,
            },
        )
    });
    *h = id as *mut c_void;
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasDestroy_v2(h: *mut c_void) -> Status {
    if with_handles(|t| t.remove(&(h as usize))).is_none() {
        return fail(
            NOT_INITIALIZED,
            format!("cublasDestroy of {:#x}, not a live handle", h as usize),
        );
    }
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasSetStream_v2(h: *mut c_void, s: *mut c_void) -> Status {
    if !stream_is_valid(s as usize) {
        return fail(
            INVALID_VALUE,
            format!("cublasSetStream: stream {:#x} does not exist", s as usize),
        );
    }
    match with_handles(|t| t.get_mut(&(h as usize)).map(|x| x.stream = s as usize)) {
        Some(()) => SUCCESS,
        None => fail(NOT_INITIALIZED, "cublasSetStream on a dead handle".into()),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetStream_v2(h: *mut c_void, s: *mut *mut c_void) -> Status {
    match with_handles(|t| t.get(&(h as usize)).map(|x| x.stream)) {
        Some(v) => {
            *s = v as *mut c_void;
            SUCCESS
        }
        None => fail(NOT_INITIALIZED, "cublasGetStream on a dead handle".into()),
    }
}

/// Accepted when the workspace is live device memory of at least the size given
/// (the emulated GEMM needs none).
#[no_mangle]
pub extern "C" fn cublasSetWorkspace_v2(h: *mut c_void, ws: *mut c_void, bytes: usize) -> Status {
    if with_handles(|t| t.get(&(h as usize)).is_none()) {
        return fail(
            NOT_INITIALIZED,
            format!("cublasSetWorkspace: {:#x} is not a live handle", h as usize),
        );
    }
    if bytes > 0 {
        if let Err(m) = memory::range("cublasSetWorkspace workspace", ws as u64, bytes as u64) {
            return fail(INVALID_VALUE, m);
        }
    }
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasSetPointerMode_v2(h: *mut c_void, mode: c_int) -> Status {
    match with_handles(|t| t.get_mut(&(h as usize)).map(|x| x.device_pointers = mode == 1)) {
        Some(()) => SUCCESS,
        None => fail(NOT_INITIALIZED, "cublasSetPointerMode on a dead handle".into()),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetVersion_v2(_h: *mut c_void, v: *mut c_int) -> Status {
    *v = 130000;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cublasGetProperty(prop: c_int, v: *mut c_int) -> Status {
    // MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
    *v = match prop {
        0 => 13,
        _ => 0,
    };
    SUCCESS
}

/// One operand: `rows × cols` stored column-major with leading dimension `ld`.
struct Operand {
    name: &'static str,
    ptr: u64,
    rows: i64,
    cols: i64,
    ld: i64,
}

impl Operand {
    fn check(&self) -> Result<*mut f32, String> {
        if self.ld < self.rows.max(1) {
            return Err(format!(
                "ld{} = {} is below the {} stored rows of {}",
                self.name.to_lowercase(),
                self.ld,
                self.rows,
                self.name
            ));
        }
        if self.rows == 0 || self.cols == 0 {
            return Ok(std::ptr::null_mut());
        }
        let elems = (self.cols - 1) * self.ld + self.rows;
        memory::range(&format!("operand {}", self.name), self.ptr, elems as u64 * 4)
            .map(|p| p as *mut f32)
            .map_err(|m| format!("{m} ({}: {}×{}, ld {})", self.name, self.rows, self.cols, self.ld))
    }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasSgemm_v2(
    h: *mut c_void,
    ta: c_int,
    tb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: *const f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: *const f32,
    c: *mut f32,
    ldc: c_int,
) -> Status {
    count(&COUNTERS.cublas_calls);
    if faulted() {
        return EXECUTION_FAILED;
    }
    let Some((stream, device_ptrs)) = with_handles(|t| t.get(&(h as usize)).map(|x| (x.stream, x.device_pointers)))
    else {
        return fail(
            NOT_INITIALIZED,
            format!("cublasSgemm: {:#x} is not a live handle", h as usize),
        );
    };
    if alpha.is_null() || beta.is_null() {
        return fail(INVALID_VALUE, "cublasSgemm: null α or β".into());
    }
    // α and β as cuBLAS reads them: values now (host pointer mode), or device
    // addresses read when the GEMM runs (device pointer mode).
    let scalar = |p: *const f32| {
        if device_ptrs {
            Scalar::Device(p as u64)
        } else {
            Scalar::Host(*p)
        }
    };
    let (al, be) = (scalar(alpha), scalar(beta));
    // Operands another stream used, with no event ordering the handle's stream after
    // that use, would race it on a GPU (C is written; A, B and device α/β read).
    // Checked at the call, captured or not: a replay's order is the graph's, checked
    // by its dependencies.
    let mut operands = vec![("A", a as u64, false), ("B", b as u64, false), ("C", c as u64, true)];
    for (name, s) in [("α", al), ("β", be)] {
        if let Scalar::Device(p) = s {
            operands.push((name, p, false));
        }
    }
    for &(name, ptr, write) in &operands {
        if let Some(other) = other_stream_user(ptr, stream, write) {
            return fail(
                INVALID_VALUE,
                format!(
                    "cublasSgemm: operand {name} was used on stream {other:#x}, and nothing orders the handle's stream {stream:#x} after that use: the GEMM would race that stream's work"
                ),
            );
        }
    }
    for &(_, ptr, write) in &operands {
        note_use(ptr, stream, write);
    }
    let g = Sgemm {
        handle: h as usize,
        ta,
        tb,
        m,
        n,
        k,
        alpha: al,
        a: a as u64,
        lda,
        b: b as u64,
        ldb,
        beta: be,
        c: c as u64,
        ldc,
    };
    // On a capturing stream the call is recorded and runs at each replay.
    if graph::record_if_capturing(stream, || Op::Sgemm(g)) {
        return SUCCESS;
    }
    match sgemm(&g) {
        Ok(()) => SUCCESS,
        Err((code, m)) => fail(code, format!("cublasSgemm: {m}")),
    }
}

/// Runs one SGEMM (a direct call or a replay), with every check of the module docs.
unsafe fn sgemm(g: &Sgemm) -> Result<(), (Status, String)> {
    let Sgemm {
        handle: h,
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        c,
        ldc,
    } = *g;
    crate::trace(|| format!("sgemm ta {ta} tb {tb} m {m} n {n} k {k}"));
    let bad = |m: String| (INVALID_VALUE, m);
    if !current_context_set() {
        return Err((EXECUTION_FAILED, "no current CUDA context on this thread".into()));
    }
    let Some(stream) = with_handles(|t| t.get(&h).map(|x| x.stream)) else {
        return Err((NOT_INITIALIZED, format!("{h:#x} is not a live handle")));
    };
    if !stream_is_valid(stream) {
        return Err(bad(format!("the handle's stream {stream:#x} was destroyed")));
    }
    let op = |t: c_int, what: &str| match t {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad(format!("trans{what} = {t} (only N and T are valid for real data)"))),
    };
    let (ta, tb) = (op(ta, "a")?, op(tb, "b")?);
    if m < 0 || n < 0 || k < 0 {
        return Err(bad(format!("negative size m={m} n={n} k={k}")));
    }
    // A device α or β is read now, when the GEMM runs (a replay reads that replay's).
    let value = |s: Scalar, what: &str| match s {
        Scalar::Host(v) => Ok(v as f64),
        Scalar::Device(p) => memory::range(&format!("device pointer {what}"), p, 4)
            .map(|q| *(q as *const f32) as f64)
            .map_err(bad),
    };
    let (al, be) = (value(alpha, "α")?, value(beta, "β")?);
    let (m, n, k) = (m as i64, n as i64, k as i64);
    let opa = Operand {
        name: "A",
        ptr: a,
        rows: if ta { k } else { m },
        cols: if ta { m } else { k },
        ld: lda as i64,
    };
    let opb = Operand {
        name: "B",
        ptr: b,
        rows: if tb { n } else { k },
        cols: if tb { k } else { n },
        ld: ldb as i64,
    };
    let opc = Operand {
        name: "C",
        ptr: c,
        rows: m,
        cols: n,
        ld: ldc as i64,
    };
    let pc = opc.check().map_err(bad)?;
    let (pa, pb) = if k > 0 && m > 0 && n > 0 {
        (opa.check().map_err(bad)?, opb.check().map_err(bad)?)
    } else {
        (std::ptr::null_mut(), std::ptr::null_mut())
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let ldc = ldc as i64;
    if be == 0.0 {
        let extent = ((n - 1) * ldc + m) as usize;
        std::slice::from_raw_parts_mut(pc, extent).fill(f32::NAN);
    }
    let ea = |i: i64, p: i64| *pa.add((if ta { i * lda as i64 + p } else { p * lda as i64 + i }) as usize) as f64;
    let eb = |p: i64, j: i64| *pb.add((if tb { p * ldb as i64 + j } else { j * ldb as i64 + p }) as usize) as f64;
    for j in 0..n {
        for i in 0..m {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += ea(i, p) * eb(p, j);
            }
            let cij = pc.add((j * ldc + i) as usize);
            let old = if be == 0.0 { 0.0 } else { *cij as f64 };
            *cij = (al * acc + be * old) as f32;
        }
    }
    Ok(())
}

/// Runs a GEMM recorded during a stream capture (a graph replay), with the same
/// checks as a direct call; a failure is the driver's launch failure.
pub(crate) unsafe fn replay(g: &Sgemm) -> crate::driver::CUresult {
    match sgemm(g) {
        Ok(()) => crate::driver::SUCCESS,
        Err((_, m)) => {
            check_failed(&format!("cublasSgemm replayed from a graph: {m}"));
            crate::driver::LAUNCH_FAILED
        }
    }
}
