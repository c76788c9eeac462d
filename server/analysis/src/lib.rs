//! Spectral analysis: preprocessing, peak finding, multi-peak fits, chirality features and objectives (pure, no I/O).
