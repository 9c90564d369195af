//! Where libxdp's dispatcher object lives. sipguard uses the object of the
//! libxdp installed on the box, so the dispatcher it builds has the version
//! the box's `xdp-loader` and `xdp-filter` expect.
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The object's file name, as libxdp looks it up.
pub const FILE: &str = "xdp-dispatcher.o";

/// libxdp's override of its object directory (`LIBXDP_OBJECT_PATH`): when
/// set, libxdp looks only there, and so does sipguard.
pub const ENV: &str = "LIBXDP_OBJECT_PATH";

/// libxdp's compiled-in object directories on Debian/Ubuntu (multiarch),
/// Fedora/Arch and source installs.
const DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/bpf",
    "/usr/lib/aarch64-linux-gnu/bpf",
    "/usr/lib64/bpf",
    "/usr/lib/bpf",
    "/usr/local/lib/bpf",
];

/// The dispatcher object's path, or an error saying where it was looked for.
pub fn find() -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os(ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => DIRS.iter().map(PathBuf::from).collect(),
    };
    find_in(&dirs)
}

fn find_in(dirs: &[PathBuf]) -> Result<PathBuf> {
    for dir in dirs {
        let path = dir.join(FILE);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "libxdp's {FILE} not found in {} (install xdp-tools, or set {ENV})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Reads the object, refusing anything that is not a plausible BPF ELF
/// object of a sane size (it is loaded into the kernel).
pub fn read(path: &Path) -> Result<Vec<u8>> {
    const MAX: u64 = 4 << 20;
    let len = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .len();
    if len > MAX {
        bail!(
            "{} is {len} bytes, more than a dispatcher object's {MAX}",
            path.display()
        );
    }
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("{} is not an ELF object", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_object_names_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_in(&[dir.path().join("a"), dir.path().join("b")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/a, ") && err.contains("/b (install xdp-tools"),
            "{err}"
        );
    }

    #[test]
    fn found_in_the_first_directory_that_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join(FILE), b"x").unwrap();
        assert_eq!(find_in(&[a, b.clone()]).unwrap(), b.join(FILE));
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("not an ELF"));
    }
}
