//! Optimizer engine: SNOBFIT, Gaussian-process Bayesian optimisation and baselines behind one ask/tell interface (pure, no I/O).
