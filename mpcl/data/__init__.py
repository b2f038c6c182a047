"""Data: raw-format readers (sources), dataset specs, .beton files, loaders and on-device
augmentations."""
