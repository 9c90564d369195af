//! Pinned objects need a BPF filesystem; many machines do not mount one.
use anyhow::{bail, Context as _, Result};
use std::{ffi::CString, fs, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// True if `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Where distributions mount the BPF filesystem; we mount it there when missing.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// Makes sure `pin_dir` exists on a bpffs. When the directory is under
/// `/sys/fs/bpf` and nothing is mounted there, mounts a bpffs first; anywhere
/// else it must already be on one (we do not mount over arbitrary folders).
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<()> {
    let default_mount = Path::new(DEFAULT_MOUNT);
    if pin_dir.starts_with(default_mount) && !is_bpffs(default_mount) {
        mount_bpffs(default_mount)?;
    }
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        bail!(
            "{} is not on a BPF filesystem: choose a pin directory under {DEFAULT_MOUNT} or mount one with `mount -t bpf bpf DIR`",
            pin_dir.display()
        );
    }
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("cannot create pin directory {}", pin_dir.display()))?;
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let target = CString::new(at.as_os_str().as_encoded_bytes())?;
    let fstype = CString::new("bpf")?;
    // SAFETY: all pointers are valid C strings; data is null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "{} is not a BPF filesystem and mounting one there failed: {err} (mount it with `mount -t bpf bpf {}`)",
            at.display(),
            at.display()
        );
    }
    tracing::info!("mounted a BPF filesystem at {}", at.display());
    Ok(())
}

/// `BPF_MAP_TYPE_ARRAY` and `BPF_MAP_TYPE_LRU_HASH`, for `create_pinned_map`.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// Creates a map with `bpf(BPF_MAP_CREATE)` and pins it at `path`: for maps
/// that are not the program's (the layout version), or that must exist with
/// other flags before the loader reuses them (benchmarks).
pub fn create_pinned_map(
    path: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    // The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the rest zero.
    let mut attr = [0u8; 128];
    for (i, v) in [map_type, key_size, value_size, max_entries, map_flags]
        .iter()
        .enumerate()
    {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: a zeroed bpf_attr of sufficient size with the create fields set.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        bail!(
            "creating a map for {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    let fd = fd as i32;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    // BPF_OBJ_PIN: { pathname: u64, bpf_fd: u32, file_flags: u32 }.
    let mut pin = [0u8; 128];
    pin[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: a zeroed bpf_attr with a valid path pointer and our map fd.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), pin.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd) };
    if rc != 0 {
        bail!("pinning {}: {err}", path.display());
    }
    Ok(())
}
