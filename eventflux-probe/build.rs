//! Builds the kernel programs (eventflux-probe-ebpf) for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker (`cargo xtask setup` installs both), into OUT_DIR, where
//! `src/bpf.rs` embeds them.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../eventflux-probe-ebpf");
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "eventflux-probe-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
