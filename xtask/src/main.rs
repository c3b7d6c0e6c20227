//! cargo xtask. (Being built.)
fn main() {}
