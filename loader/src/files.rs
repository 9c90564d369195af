//! Opening files a local user may have put in our way: a FIFO or a device
//! in place of a log (an `open` that never returns), a huge sparse "copy"
//! (gigabytes of holes read as zeros). Files are opened without blocking,
//! checked on the descriptor itself, and holes can be stepped over.
use std::{
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
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
/// Only a regular file is ever really opened: the path is first opened with
/// `O_PATH` (symbolic links followed), which has no side effects on what it
/// names (a device opened for reading may arm a watchdog or rewind a tape,
/// a FIFO opened for reading wakes its writer), and that descriptor is
/// checked. Only if it is a regular file is that very file, not the path
/// again, reopened for reading through `/proc/self/fd`, so a name flipped to
/// a device in between is never opened. `O_NONBLOCK` and `O_NOCTTY` stay as
/// a second guard, close-on-exec as all of std's files.
pub fn open_regular(path: &Path) -> io::Result<Opened> {
    let handle = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e),
    };
    let seen = handle.metadata()?;
    if !seen.is_file() {
        return Ok(Opened::NotRegular(seen));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))?;
    let meta = file.metadata()?;
    // The magic link names the file itself; checked anyway.
    if !meta.is_file() || (meta.dev(), meta.ino()) != (seen.dev(), seen.ino()) {
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

/// Reads a small regular file whole (a key, `resolv.conf`), never blocking
/// (see `open_regular`) and never reading more than `max` bytes: anything
/// else is an error that says what is there instead.
pub fn read_small(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = match open_regular(path)? {
        Opened::File(f, _) => f,
        Opened::Missing => return Err(io::ErrorKind::NotFound.into()),
        Opened::NotRegular(m) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}, not a regular file: not read", kind(&m)),
            ))
        }
    };
    read_at_most(&file, max)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes: not read"),
        )
    })
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

    /// Opens `fifo` for writing in a thread: that open only returns once
    /// someone opened the FIFO for reading. Says so on the channel.
    fn blocked_writer(fifo: &Path) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo = fifo.to_owned();
        std::thread::spawn(move || {
            let _w = fs::OpenOptions::new().write(true).open(&fifo);
            let _ = tx.send(());
        });
        rx
    }

    /// Lets a blocked writer go by opening its FIFO for reading ourselves.
    fn release(fifo: &Path, rx: &std::sync::mpsc::Receiver<()>) {
        let _r = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_name_flipped_to_a_fifo_is_never_opened_for_reading() {
        // A local user who can write the folder flips a name between a
        // regular file and a link to a FIFO (standing in for a device whose
        // open has side effects): a writer blocked on the FIFO is woken by
        // any open for reading, which must never happen.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let woken = blocked_writer(&fifo);
        let target = dir.path().join("log");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (dir, fifo, target, stop) = (
                dir.path().to_owned(),
                fifo.clone(),
                target.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let (reg, lnk) = (dir.join("reg"), dir.join("lnk"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fs::write(&reg, b"x").unwrap();
                    fs::rename(&reg, &target).unwrap();
                    std::os::unix::fs::symlink(&fifo, &lnk).unwrap();
                    fs::rename(&lnk, &target).unwrap();
                }
            })
        };
        let (mut files, mut others) = (0, 0);
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(2) {
            match open_regular(&target).unwrap() {
                Opened::File(..) => files += 1,
                Opened::NotRegular(_) => others += 1,
                Opened::Missing => {}
            }
            if woken.try_recv().is_ok() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                flipper.join().unwrap();
                panic!("the FIFO was opened for reading ({files} files, {others} others)");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        assert!(files > 0 && others > 0, "{files} files, {others} others");
        release(&fifo, &woken);
    }

    #[test]
    fn links_to_fifos_and_devices_are_refused_without_opening_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let woken = blocked_writer(&fifo);
        let (to_fifo, to_null) = (dir.path().join("a"), dir.path().join("b"));
        std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
        std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
        // In a thread: a blocking open would never return.
        let (tx, rx) = std::sync::mpsc::channel();
        let (a, b) = (to_fifo.clone(), to_null.clone());
        std::thread::spawn(move || {
            let kinds = [&a, &b].map(|p| match open_regular(p).unwrap() {
                Opened::NotRegular(m) => kind(&m),
                other => panic!("{other:?}"),
            });
            let _ = tx.send(kinds);
        });
        let kinds = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("open_regular blocked");
        assert_eq!(kinds, ["a FIFO", "a character device"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(woken.try_recv().is_err(), "the FIFO was opened for reading");
        release(&fifo, &woken);
    }

    #[test]
    fn small_files_are_read_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (small, big, fifo) = (
            dir.path().join("small"),
            dir.path().join("big"),
            dir.path().join("fifo"),
        );
        fs::write(&small, b"key\n").unwrap();
        fs::File::create(&big).unwrap().set_len(1 << 40).unwrap();
        mkfifo(&fifo);
        assert_eq!(read_small(&small, 64).unwrap(), b"key\n");
        let err = read_small(&big, 64).unwrap_err().to_string();
        assert!(err.contains("larger than 64 bytes"), "{err}");
        // Without a writer, a blocking read of a FIFO never returns.
        let err = read_small(&fifo, 64).unwrap_err().to_string();
        assert!(err.contains("a FIFO, not a regular file"), "{err}");
        let err = read_small(Path::new("/dev/zero"), 64).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let err = read_small(&dir.path().join("none"), 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
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
