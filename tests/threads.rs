//! `set_cpu_threads` after loading data: loading must not start the CPU thread pool.
//! Alone in its binary (so its own process), because the pool is process-wide.

use mep::data::{write_idx, DataSplits};
use mep::{smep, Device, Sequential};

#[test]
fn threads_can_be_set_after_loading_data_and_building_a_model() {
    let dir = std::env::temp_dir().join(format!("mep-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (prefix, n) in [("train", 40usize), ("t10k", 10)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let pixels: Vec<u8> = (0..n * 16).map(|i| (i * 37 % 256) as u8).collect();
        write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte")), &[n, 4, 4], &pixels).unwrap();
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n], &labels).unwrap();
    }
    let data = DataSplits::load_idx(&dir, None).unwrap();
    let mut model = Sequential::new(&Device::Cpu)
        .flatten()
        .linear(16, 8)
        .relu()
        .linear(8, 2)
        .build(0)
        .unwrap();
    mep::set_cpu_threads(1).expect("loading data and building a model must not start the pool");
    let mut opt = smep(&model).build().unwrap();
    // The pool now has the one thread asked for, and training runs on it.
    assert_eq!(rayon::current_num_threads(), 1);
    let b = data.train.batches(8, mep::Shuffle::None).unwrap().next().unwrap();
    opt.step(&mut model, &b.x, &b.y).unwrap();
    assert!(mep::set_cpu_threads(2).is_err(), "a second call is refused");
    std::fs::remove_dir_all(&dir).ok();
}
