"""Benchmarks, one module each: ``loader`` (FFCV against a DataLoader), ``step`` (the training
step: samples/s, memory, MFU, over precision settings), ``augment`` (mpcl's GPU augmentation
against kornia's), and ``gpu_check`` (the whole CUDA check in one call). ``record`` holds what
their reports share: the machine, the versions, a marked section of a markdown file."""
