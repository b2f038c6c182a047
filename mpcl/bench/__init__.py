"""Benchmarks, one module each: ``loader`` (FFCV against a DataLoader), ``step`` (the training
step: samples/s, memory, MFU, over precision settings), ``augment`` (mpcl's GPU augmentation
against kornia's), and ``gpu_check`` (the whole CUDA check in one call). ``options`` holds each
one's settings and command line options, ``cli`` the ``mpcl bench`` subcommands, and ``record``
what their reports share: the machine, the versions, the results folder and the record file."""
