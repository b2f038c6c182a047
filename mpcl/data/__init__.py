"""Data: raw-format readers (sources), dataset specs, loaders and on-device augmentations."""
