//! Opening files a local user may have put in our way: a FIFO or a device
//! in place of a log (an `open` that never returns), a huge sparse "copy"
//! (gigabytes of holes read as zeros). Files are opened without blocking,
//! checked on the descriptor itself, and holes can be stepped over.
use std::{
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    },
    path::Path,
};

/// What is at a path.
#[derive(Debug)]
pub enum Opened {
    /// A regular file, opened for reading, with its metadata.
    File(File, fs::Metadata),
    Missing,
    /// Anything else (FIFO, device, socket, folder): not opened, or
    /// closed again at once; its metadata says what it is.
    NotRegular(fs::Metadata),
}

/// Opens `path` for reading if it is a regular file, without ever blocking.
///
/// The path is checked first, so a device is not even opened (opening some
/// has side effects); it is opened with `O_NONBLOCK` (a FIFO swapped in
/// meanwhile opens at once instead of waiting for a writer) and `O_NOCTTY`
/// (a terminal never becomes ours), close-on-exec as all of std's files; and
/// the descriptor is checked again, as the path may have changed in between.
pub fn open_regular(path: &Path) -> io::Result<Opened> {
    match fs::metadata(path) {
        Ok(m) if !m.is_file() => return Ok(Opened::NotRegular(m)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e),
    }
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Opened::NotRegular(meta));
    }
    Ok(Opened::File(file, meta))
}

/// What a file that is not a regular one is, for a warning.
pub fn kind(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Where the next data at or after `offset` starts (`SEEK_DATA`): `offset`
/// itself when there is no hole there or the file system cannot tell, the
/// file's end when only a hole follows.
pub fn data_from(file: &File, offset: u64, size: u64) -> u64 {
    let Ok(at) = libc::off_t::try_from(offset) else {
        return offset;
    };
    // SAFETY: lseek on a descriptor we own; we read with pread, so moving
    // the file position changes nothing else.
    let found = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if found >= 0 {
        return u64::try_from(found).unwrap_or(offset).max(offset);
    }
    match io::Error::last_os_error().raw_os_error() {
        // No data after `offset`: a hole up to the end.
        Some(libc::ENXIO) => size.max(offset),
        _ => offset,
    }
}

/// Reads all of `file` (from its start, whatever its position) if it holds
/// at most `max` bytes: `Ok(None)` if it is larger (also if it grew while
/// being read).
pub fn read_at_most(file: &File, max: u64) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt as _;
    let mut out = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(Some(out));
        }
        if (out.len() + n) as u64 > max {
            return Ok(None);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Makes a FIFO at `path`, for tests.
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths");
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        // Without a writer, a blocking open of a FIFO never returns.
        match open_regular(&fifo).unwrap() {
            Opened::NotRegular(m) => assert_eq!(kind(&m), "a FIFO"),
            other => panic!("{other:?}"),
        }
        match open_regular(Path::new("/dev/null")).unwrap() {
            Opened::NotRegular(m) => assert_eq!(kind(&m), "a character device"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            open_regular(dir.path()).unwrap(),
            Opened::NotRegular(_)
        ));
        assert!(matches!(
            open_regular(&dir.path().join("none")).unwrap(),
            Opened::Missing
        ));
        // A symbolic link to a FIFO is a FIFO.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(matches!(
            open_regular(&link).unwrap(),
            Opened::NotRegular(_)
        ));
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(open_regular(&file).unwrap(), Opened::File(..)));
    }

    #[test]
    fn holes_are_found_and_reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(1 << 30).unwrap();
        use std::os::unix::fs::FileExt as _;
        f.write_all_at(b"data\n", 1 << 30).unwrap();
        let size = f.metadata().unwrap().len();
        let at = data_from(&f, 0, size);
        // File systems without SEEK_DATA say "data here": never past it.
        assert!(at == 0 || (at > 1 << 29 && at <= 1 << 30), "{at}");
        assert_eq!(data_from(&f, size, size), size);
        assert_eq!(read_at_most(&f, 1 << 20).unwrap(), None);
        fs::write(&p, b"small").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(read_at_most(&f, 5).unwrap().unwrap(), b"small");
        let f = File::open(&p).unwrap();
        assert_eq!(read_at_most(&f, 4).unwrap(), None);
    }
}
