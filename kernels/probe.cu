// The probe kernel: Cuda::probe (and so Device::auto) compiles, loads and launches it
// to prove that the driver accepts this NVRTC's code and can run it, before a CUDA
// device is chosen over the CPU.
#include "common.cuh"

// probe_iota: out[i] = i + 1 for i < n. Launch: 1-D grid-stride over n.
extern "C" __global__ void probe_iota(u64 n, u32* __restrict__ out) {
    MEP_GRID_STRIDE(i, n) { out[i] = (u32)i + 1u; }
}
