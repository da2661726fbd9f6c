"""The machinery that runs the neuron's equations (`hnn_bridge.functional`) fast.

`hnn_bridge.functional` holds the maths: `charge` (eq. 1a, 1c, 1d), the spike function
and its surrogate (eq. 1e, 1f, 5, 6), and the entry points `iir_multistep` /
`iir_spikes`. This package executes them, operation by operation in `charge`'s order, so
every executor gives the same bits:

- `fused`: the multistep forward and hand-written BPTT as preallocated ATen ops, and the
  autograd Functions `IIRMultiStep` / `IIRSpikes` around them;
- `native`: the same recurrences on the CPU in float32 as one compiled C loop nest
  (source: ``iir_native.c``);
- ``iir_kernels.cu``: the CUDA kernels of the CuPy backend
  (`hnn_bridge.adapters.cupy_kernels`), which also compile as plain C for CPU tests;
- `build`: the one C build helper (compiler, source files, library cache);
- `threads` and `denormals`: keeping small ops on one thread, and ``exp`` off subnormal
  results;
- `heap`: freed memory kept in the process heap, so that each training step reuses the
  last one's instead of faulting fresh pages in.

Nothing here imports `hnn_bridge.functional`: the executors take the neuron's
`Coefficients` and `IIRState` as arguments.
"""
