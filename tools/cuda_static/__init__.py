"""Static analysis of the compiled CUDA kernels, no GPU needed: cuda_resources reads the
cubins' registers, spills, shared memory and occupancy (`make cuda-resources`); gpu_model
builds a performance model (estimates) on top of it. Run them as modules from the
repository root, e.g. `python -m tools.cuda_static.cuda_resources`."""
