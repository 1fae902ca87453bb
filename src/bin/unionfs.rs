//! The `unionfs` command line (being written).
fn main() {}
