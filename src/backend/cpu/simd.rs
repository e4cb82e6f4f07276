//! Runtime selection of the vector instruction set for the element-wise loops.
//!
//! The crate is compiled for baseline x86-64 (SSE2: 4 floats per instruction), so
//! that one binary runs on any x86-64 CPU. Each loop here has a plain version and
//! one compiled for AVX2 + FMA (8 floats per instruction), chosen at run time; the
//! caller's closure is inlined into both. The loops are memory-bound passes over a
//! few hundred kB at most, for which AVX-512 brings nothing over AVX2 (and lowers
//! the clock of some Intel CPUs), so AVX2 is the widest used. The arithmetic is the
//! same in every version (Rust does not contract a·b + c into an FMA), so results do
//! not depend on the version chosen.

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

/// Defines `$name` (dispatching) over a body given once, compiled twice.
macro_rules! versions {
    ($(#[$doc:meta])* fn $name:ident<$($g:ident),*>($($arg:ident: $ty:ty),*) $(-> $ret:ty)? where { $($bounds:tt)* } $body:block) => {
        $(#[$doc])*
        #[inline]
        pub(super) fn $name<$($g),*>($($arg: $ty),*) $(-> $ret)? where $($bounds)* {
            #[inline(always)]
            fn plain<$($g),*>($($arg: $ty),*) $(-> $ret)? where $($bounds)* $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$($g),*>($($arg: $ty),*) $(-> $ret)? where $($bounds)* {
                plain($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked).
                return unsafe { avx2($($arg),*) };
            }
            plain($($arg),*)
        }
    };
}

versions! {
    /// `f(&mut y[i], x[i])` for every i.
    fn zip<T, F>(y: &mut [T], x: &[T], f: &F) where { T: Copy, F: Fn(&mut T, T) } {
        for (v, &xv) in y.iter_mut().zip(x) {
            f(v, xv);
        }
    }
}

versions! {
    /// `f(&mut y[i], x[i], z[i])` for every i.
    fn zip2<T, F>(y: &mut [T], x: &[T], z: &[T], f: &F) where { T: Copy, F: Fn(&mut T, T, T) } {
        for ((v, &xv), &zv) in y.iter_mut().zip(x).zip(z) {
            f(v, xv, zv);
        }
    }
}

versions! {
    /// `f(&mut y[i])` for every i.
    fn each<T, F>(y: &mut [T], f: &F) where { F: Fn(&mut T) } {
        y.iter_mut().for_each(f);
    }
}

versions! {
    /// `f(first + r, row r)` over the rows of a row-major matrix.
    fn rows<T, F>(y: &mut [T], cols: usize, first: usize, f: &F) where { F: Fn(usize, &mut [T]) } {
        for (j, row) in y.chunks_mut(cols).enumerate() {
            f(first + j, row);
        }
    }
}

versions! {
    /// `f(first + r, row r of y, row r of z)` over two matrices of one shape.
    fn rows2<T, F>(y: &mut [T], z: &mut [T], cols: usize, first: usize, f: &F) where { F: Fn(usize, &mut [T], &mut [T]) } {
        for (j, (ry, rz)) in y.chunks_mut(cols).zip(z.chunks_mut(cols)).enumerate() {
            f(first + j, ry, rz);
        }
    }
}

versions! {
    /// `f(first + r, rows r of the five matrices)` over five matrices of one shape.
    fn rows5<T, F>(m: [&mut [T]; 5], cols: usize, first: usize, f: &F) where { F: Fn(usize, [&mut [T]; 5]) } {
        let [m0, m1, m2, m3, m4] = m;
        let rows = m0.chunks_mut(cols).zip(m1.chunks_mut(cols)).zip(m2.chunks_mut(cols));
        let rows = rows.zip(m3.chunks_mut(cols)).zip(m4.chunks_mut(cols));
        for (j, ((((r0, r1), r2), r3), r4)) in rows.enumerate() {
            f(first + j, [r0, r1, r2, r3, r4]);
        }
    }
}

versions! {
    /// `out[i] = f(chunk i of x)` over chunks of `len` elements.
    fn chunks<T, F>(out: &mut [T], x: &[T], len: usize, f: &F) where { T: Copy, F: Fn(&[T]) -> T } {
        for (o, c) in out.iter_mut().zip(x.chunks(len)) {
            *o = f(c);
        }
    }
}
