//! Builds the XDP program (`xdp-ebpf`) for the BPF target with the nightly
//! toolchain and bpf-linker, and leaves the object in OUT_DIR, from where
//! `src/program.rs` embeds it into the `sipguard` binary. `cargo xtask setup`
//! installs what this needs.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xdp-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sipguard-xdp",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
