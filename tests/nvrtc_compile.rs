//! Every kernel module compiles with NVRTC for sm_80 and sm_90, and each PTX defines
//! the expected `.entry` points. Needs NVRTC only (no GPU): skips with a message when
//! it cannot be loaded, fails instead when `MEP_REQUIRE_NVRTC=1`
//! (`export LD_LIBRARY_PATH="$(bash scripts/install-nvrtc.sh):$LD_LIBRARY_PATH"`).

use mep::backend::cuda::{nvrtc, sources};

/// The kernels each module must define (kept by hand: a kernel renamed or dropped in
/// a `.cu` file must fail here, not only at `Cuda::new`).
const EXPECTED: &[(&str, &[&str])] = &[
    ("cost", &["cost_grad", "cost_stats_partial", "argmax"]),
    ("data", &["gather_rows", "gather_batch", "gather_labels"]),
    ("fused", &["layered_nudged_phase", "hopfield_settle_phase"]),
    (
        "gram",
        &[
            "ns_gram_poly",
            "ns_orthogonalize",
            "spectral_power",
            "square_products",
            "ns_iteration",
        ],
    ),
    (
        "optim",
        &[
            "axpby",
            "lincomb",
            "nesterov",
            "fill",
            "scale_by_inv_norm",
            "spectral_clamp",
            "axpby_ctl",
            "adam",
        ],
    ),
    ("probe", &["probe_iota"]),
    ("reduce", &["col_sum", "sum_sq", "nesterov_sum_sq", "reduce_partials"]),
    (
        "settle",
        &[
            "bias_act",
            "layered_error",
            "layered_settle",
            "hopfield_settle",
            "act_grad_mul",
            "act_grad_mul_into",
        ],
    ),
];

fn nvrtc_or_skip() -> bool {
    match nvrtc::nvrtc_version() {
        Ok((major, minor)) => {
            eprintln!("NVRTC {major}.{minor}");
            true
        }
        Err(e) if std::env::var("MEP_REQUIRE_NVRTC").as_deref() == Ok("1") => {
            panic!("MEP_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: NVRTC is not usable ({e}); set MEP_REQUIRE_NVRTC=1 to make this an error");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    // Compile for real, not from a cache left by an earlier run.
    let cache = std::env::temp_dir().join(format!("mep-ptx-test-{}", std::process::id()));
    std::env::set_var("MEP_PTX_CACHE", &cache);

    let modules: Vec<&str> = sources::ALL.iter().map(|(m, _)| *m).collect();
    let expected: Vec<&str> = EXPECTED.iter().map(|(m, _)| *m).collect();
    assert_eq!(modules, expected, "kernel modules embedded by build.rs");
    for (m, names) in EXPECTED {
        let found = sources::ENTRIES.iter().find(|(e, _)| e == m).map(|(_, n)| *n).unwrap();
        assert_eq!(found, *names, "kernels found by build.rs in {m}.cu");
    }

    for arch in ["sm_80", "sm_90"] {
        let t = std::time::Instant::now();
        let ptx = nvrtc::compile_all(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        eprintln!("{arch}: {} modules in {:.2?}", ptx.len(), t.elapsed());
        assert_eq!(ptx.len(), EXPECTED.len());
        for ((name, code), (want, entries)) in ptx.iter().zip(EXPECTED) {
            assert_eq!(name, want);
            assert!(
                code.contains(&format!(".target {arch}")),
                "{name}.cu PTX for {arch} has no `.target {arch}`"
            );
            for e in *entries {
                assert!(
                    code.contains(&format!(".entry {e}(")),
                    "{name}.cu for {arch}: no `.entry {e}` in the PTX"
                );
            }
        }
        // Second time round the PTX comes from the disk cache, unchanged.
        let again = nvrtc::compile_all(arch).unwrap();
        assert_eq!(again, ptx, "cached PTX differs for {arch}");
    }
    let cached = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    // Per module and architecture: one .ptx and one .cubin.
    assert_eq!(cached, 2 * 2 * EXPECTED.len(), "cache files in {}", cache.display());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bad_arch_is_an_error_not_a_panic() {
    assert!(nvrtc::compile("fill", sources::OPTIM_CU, "sm_90; rm -rf /").is_err());
    if nvrtc::nvrtc_available() {
        assert!(nvrtc::compile("fill", sources::OPTIM_CU, "sm_1").is_err());
    }
}

#[test]
fn a_damaged_cache_entry_is_recompiled_not_loaded() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mep-ptx-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fresh = nvrtc::compile_cached("fill", sources::OPTIM_CU, "sm_90", Some(&dir)).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    let ext = |f: &std::path::PathBuf| f.extension().unwrap().to_string_lossy().into_owned();
    let mut exts: Vec<String> = files.iter().map(ext).collect();
    exts.sort();
    assert_eq!(
        exts,
        ["cubin", "ptx"],
        "one PTX and one cubin entry, no temporary files left: {files:?}"
    );
    let file = files.iter().find(|f| ext(f) == "ptx").unwrap();
    assert_eq!(nvrtc::load_cached(file).as_deref(), Some(fresh.as_str()));
    // Damage it two ways, keeping `.entry` in the text (what the old check looked
    // for): truncated mid-file, and one byte of the PTX overwritten.
    let full = std::fs::read_to_string(file).unwrap();
    let cut = full.find(".entry").unwrap() + 40;
    let damaged = [full[..cut].to_string(), full.replacen("fill", "fjll", 1)];
    for text in damaged {
        std::fs::write(file, &text).unwrap();
        assert!(nvrtc::load_cached(file).is_none(), "a damaged entry was accepted");
        let again = nvrtc::compile_cached("fill", sources::OPTIM_CU, "sm_90", Some(&dir)).unwrap();
        assert_eq!(again, fresh, "the recompiled PTX differs");
        assert_eq!(
            nvrtc::load_cached(file).as_deref(),
            Some(fresh.as_str()),
            "the entry was not rewritten"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_architectures_get_a_cubin_virtual_ones_only_ptx() {
    if !nvrtc_or_skip() {
        return;
    }
    let real = nvrtc::compile_module("fill", sources::OPTIM_CU, "sm_90", None).unwrap();
    let cubin = real.cubin.expect("no cubin for sm_90");
    assert_eq!(&cubin[..4], b"\x7fELF", "the cubin is not an ELF image");
    assert!(real.ptx.contains(".entry fill"));
    let virt = nvrtc::compile_module("fill", sources::OPTIM_CU, "compute_90", None).unwrap();
    assert!(virt.cubin.is_none(), "a virtual architecture has no machine code");
}
