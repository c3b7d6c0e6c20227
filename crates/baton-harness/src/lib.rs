//! Benchmarks and fault runners. (Being built.)
