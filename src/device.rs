//! Where a model lives: the CPU backend or a CUDA device.

use crate::Result;

/// The executor a model and its optimizer run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The rayon CPU backend (f32).
    Cpu,
    /// CUDA device with this ordinal (NVRTC kernels + cuBLAS).
    Cuda(usize),
}

impl Device {
    /// CUDA device 0 when the driver, NVRTC and cuBLAS are usable, else the CPU,
    /// with a one-line notice on stderr saying why.
    pub fn auto() -> Device {
        match crate::backend::cuda::probe(0) {
            Ok(_) => Device::Cuda(0),
            Err(e) => {
                eprintln!("mep: using the CPU backend ({e})");
                Device::Cpu
            }
        }
    }

    /// Checks that the device is usable (a CUDA probe; the CPU always is).
    pub fn check(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => crate::backend::cuda::probe(i).map(|_| ()),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::MepError;
    /// `cpu`, `cuda`, `cuda:N` (`auto` is handled by callers via [`Device::auto`]).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        if s == "cuda" || s == "gpu" {
            return Ok(Device::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            if let Ok(i) = n.parse() {
                return Ok(Device::Cuda(i));
            }
        }
        Err(crate::MepError::invalid("device", s, "use auto, cpu, cuda or cuda:N"))
    }
}
