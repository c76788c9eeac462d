//! Response landscapes (data files + a pure evaluator) shared by the virtual lab and the optimizer benchmark.
