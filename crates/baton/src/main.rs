//! The `baton` command. (Being built.)
fn main() {}
