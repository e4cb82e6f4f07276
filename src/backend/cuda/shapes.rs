//! Launch shapes of the kernels, shared by the CUDA backend and the host runner
//! (`host.rs`, feature `host-kernels`) so the host tests run exactly the shapes the
//! GPU gets.

/// Threads per block of the 1-D kernels.
pub const THREADS: u32 = 256;
/// Block of the row-wise cost kernels and of `col_sum`: 32 lanes × 8 rows.
pub const ROW_BLOCK: (u32, u32, u32) = (32, 8, 1);

/// A grid × block launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Blocks per grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per block (x, y, z).
    pub block: (u32, u32, u32),
}

/// 1-D grid-stride launch for `n` elements: blocks of [`THREADS`], at most
/// `max_blocks` of them (the loops stride over the rest).
pub fn grid_1d(n: usize, max_blocks: u32) -> Shape {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, max_blocks.max(1) as usize) as u32;
    Shape {
        grid: (blocks, 1, 1),
        block: (THREADS, 1, 1),
    }
}

/// Launch of the row-wise kernels: `items` rows (or column tiles of 32) over blocks
/// of [`ROW_BLOCK`], `per_block` items per block, at most `max_blocks` blocks.
pub fn grid_rows(items: usize, per_block: u32, max_blocks: u32) -> Shape {
    let blocks = items.div_ceil(per_block as usize).clamp(1, max_blocks.max(1) as usize) as u32;
    Shape {
        grid: (blocks, 1, 1),
        block: ROW_BLOCK,
    }
}

/// `ns_iteration`'s rows per strip and threads per block (`MEP_NS_STRIP`,
/// `MEP_NS_THREADS` in `kernels/gram.cu`).
pub const NS_STRIP: u32 = 2;
/// See [`NS_STRIP`].
pub const NS_THREADS: u32 = 256;
/// `ns_iteration`'s largest k (`MEP_NS_MAX_K`: a strip's arrays in shared memory).
pub const NS_MAX_K: usize = 256;

/// Launch of `ns_iteration` (`kernels/gram.cu`): one block of [`NS_THREADS`] per
/// strip of [`NS_STRIP`] rows of the k × k results, at most `max_blocks` blocks (a
/// block then takes several strips).
pub fn ns_strips(k: usize, max_blocks: u32) -> Shape {
    let blocks = k.div_ceil(NS_STRIP as usize).clamp(1, max_blocks.max(1) as usize) as u32;
    Shape {
        grid: (blocks, 1, 1),
        block: (NS_THREADS, 1, 1),
    }
}
