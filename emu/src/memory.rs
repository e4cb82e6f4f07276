//! Device memory: host memory behind an allocation table.
//!
//! Each allocation is its own mapping, `[guard page][data pages][guard page]`, with
//! the data placed flush against the trailing guard page, so a kernel that reads or
//! writes past the end of a buffer faults at once; a freed allocation's pages are
//! released and made inaccessible but stay reserved (never reused), so a late access
//! faults too. The fault handler reports such faults as device memory errors. Copies,
//! memsets, frees and launch arguments are checked against the table ([`range`],
//! [`free`]) and fail with a message instead of faulting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

struct Alloc {
    size: u64,
    map: usize,
    map_len: usize,
    live: bool,
}

/// Allocations by device address (their first data byte).
static TABLE: Mutex<BTreeMap<u64, Alloc>> = Mutex::new(BTreeMap::new());
/// The span of every mapping made, for the fault handler.
static LO: AtomicU64 = AtomicU64::new(u64::MAX);
static HI: AtomicU64 = AtomicU64::new(0);

fn page() -> usize {
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Allocates `size` bytes (filled with 0xFF bytes, a NaN in every f32) and returns
/// the device address.
pub fn alloc(size: usize) -> Result<u64, String> {
    let pg = page();
    // Data flush against the trailing guard; sizes round up to 4 bytes (f32/u32).
    let rounded = size.div_ceil(4) * 4;
    let data_pages = rounded.div_ceil(pg).max(1);
    let map_len = (data_pages + 2) * pg;
    // SAFETY: a fresh anonymous mapping; the guard pages are then made inaccessible.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(format!("out of host memory for a {size}-byte device allocation"));
    }
    let map = map as usize;
    unsafe {
        libc::mprotect(map as *mut _, pg, libc::PROT_NONE);
        libc::mprotect((map + (data_pages + 1) * pg) as *mut _, pg, libc::PROT_NONE);
    }
    let addr = (map + (data_pages + 1) * pg - rounded) as u64;
    unsafe { std::ptr::write_bytes(addr as *mut u8, 0xFF, rounded) };
    LO.fetch_min(map as u64, Relaxed);
    HI.fetch_max((map + map_len) as u64, Relaxed);
    TABLE.lock().unwrap().insert(
        addr,
        Alloc {
            size: size as u64,
            map,
            map_len,
            live: true,
        },
    );
    Ok(addr)
}

/// Frees the allocation that starts at `addr`.
pub fn free(addr: u64) -> Result<(), String> {
    let mut t = TABLE.lock().unwrap();
    match t.get_mut(&addr) {
        Some(a) if a.live => {
            a.live = false;
            // Release the pages but keep the addresses reserved and inaccessible.
            unsafe {
                libc::madvise(a.map as *mut _, a.map_len, libc::MADV_DONTNEED);
                libc::mprotect(a.map as *mut _, a.map_len, libc::PROT_NONE);
            }
            Ok(())
        }
        Some(_) => Err(format!("double free of device address {addr:#x}")),
        None => Err(format!(
            "free of {addr:#x}, which is not the start of a device allocation"
        )),
    }
}

/// Checks that `[addr, addr + bytes)` lies inside one live allocation and returns the
/// host pointer to it. `what` names the access in the message.
pub fn range(what: &str, addr: u64, bytes: u64) -> Result<*mut u8, String> {
    let t = TABLE.lock().unwrap();
    let Some((&base, a)) = t.range(..=addr).next_back() else {
        return Err(format!("{what}: {addr:#x} is not device memory"));
    };
    if addr >= base + a.size.max(1) {
        return Err(format!(
            "{what}: {addr:#x} is not device memory (the allocation below it ends at {:#x})",
            base + a.size
        ));
    }
    if !a.live {
        return Err(format!("{what}: {addr:#x} is in a freed allocation (use after free)"));
    }
    if addr + bytes > base + a.size {
        return Err(format!(
            "{what}: {bytes} bytes at {addr:#x} overrun the {}-byte allocation at {base:#x} by {} bytes",
            a.size,
            addr + bytes - (base + a.size)
        ));
    }
    Ok(addr as *mut u8)
}

/// The live allocation containing `addr`, as (start, size), if any.
pub fn containing(addr: u64) -> Option<(u64, u64)> {
    let t = TABLE.lock().unwrap();
    let (&base, a) = t.range(..=addr).next_back()?;
    (a.live && addr < base + a.size.max(1)).then_some((base, a.size))
}

/// Bytes held by live allocations.
pub fn live_bytes() -> u64 {
    TABLE.lock().unwrap().values().filter(|a| a.live).map(|a| a.size).sum()
}

/// The kernel now running, for the fault message (written before each launch).
pub static RUNNING: Mutex<[u8; 64]> = Mutex::new([0; 64]);
static mut OLD_SEGV: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

/// Installs the fault handler (once): a SIGSEGV inside a device mapping is reported
/// as a device memory error and ends the process; any other fault goes to the
/// handler that was there before (e.g. Rust's stack overflow report).
pub fn install_fault_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(
            libc::SIGSEGV,
            &sa,
            std::ptr::addr_of_mut!(OLD_SEGV) as *mut libc::sigaction,
        );
    });
}

extern "C" fn on_segv(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let addr = unsafe { (*info).si_addr() } as u64;
    if addr >= LO.load(Relaxed) && addr < HI.load(Relaxed) {
        // Only async-signal-safe calls: format into a stack buffer, write(2), _exit.
        let mut buf = [0u8; 200];
        let mut n = 0;
        let mut put = |s: &[u8]| {
            for &b in s {
                if n < buf.len() {
                    buf[n] = b;
                    n += 1;
                }
            }
        };
        put(b"mep-emu: error: device memory fault at 0x");
        for i in (0..16).rev() {
            put(&[b"0123456789abcdef"[((addr >> (4 * i)) & 15) as usize]]);
        }
        put(b" (out-of-bounds access or use after free) in kernel ");
        if let Ok(k) = RUNNING.try_lock() {
            let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            put(&k[..end]);
        }
        put(b"\n");
        unsafe {
            libc::write(2, buf.as_ptr() as *const _, n);
            libc::_exit(86);
        }
    }
    // Not ours: hand over to the previous handler.
    unsafe {
        let old = std::ptr::addr_of!(OLD_SEGV).cast::<libc::sigaction>().read();
        if old.sa_flags & libc::SA_SIGINFO != 0 && old.sa_sigaction > 1 {
            let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(old.sa_sigaction);
            f(sig, info, ctx);
        } else if old.sa_sigaction > 1 {
            let f: extern "C" fn(i32) = std::mem::transmute(old.sa_sigaction);
            f(sig);
        } else {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        }
    }
}
