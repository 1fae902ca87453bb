//! Tells the xtask which target it was built for: the workspace builds every program for the
//! host triple by name (`.cargo/config.toml`), so unionfs lands in `target/<triple>/<profile>/`.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=XTASK_TARGET={target}");
}
