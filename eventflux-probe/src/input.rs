//! Files a user names on the command line or in a variable (a config, a binary, a log file):
//! regular files only, read up to a bound, opened so that a FIFO cannot hang us.
//!
//! `--config /dev/zero` would otherwise grow without end, a FIFO would block the open until a
//! writer (or reader) comes, and a multi-gigabyte sparse file would be read whole before its
//! first syntax error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a named file cannot be used, in one line with what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{} is a directory: give a file", .0.display())]
    Directory(PathBuf),
    #[error("{} is not a regular file (a FIFO, socket or device): give a regular file", .0.display())]
    NotRegular(PathBuf),
    #[error("{} is {size} bytes, more than the {limit} bytes a {what} may have", .path.display())]
    TooLarge { path: PathBuf, size: u64, limit: u64, what: &'static str },
    #[error("cannot read {}: {error}", .path.display())]
    Io { path: PathBuf, error: io::Error },
}

impl InputError {
    /// The I/O error underneath, if that is what it is.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            InputError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Opens `path` (symlinks followed) for `options`, without blocking on a FIFO, and checks
/// that it is a regular file.
fn open_regular(path: &Path, options: &mut OpenOptions) -> Result<File, InputError> {
    let file = options
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| InputError::Io { path: path.to_owned(), error })?;
    let meta = file.metadata().map_err(|error| InputError::Io { path: path.to_owned(), error })?;
    if meta.is_dir() {
        return Err(InputError::Directory(path.to_owned()));
    }
    if !meta.is_file() {
        return Err(InputError::NotRegular(path.to_owned()));
    }
    Ok(file)
}

/// Reads the regular file `path` whole, refusing one larger than `limit` bytes (`what` names
/// the kind of file in that error), and reading no more than its size at open.
pub fn read_regular(path: &Path, limit: Option<u64>, what: &'static str) -> Result<Vec<u8>, InputError> {
    let file = open_regular(path, OpenOptions::new().read(true))?;
    let size = file.metadata().map_err(|error| InputError::Io { path: path.to_owned(), error })?.len();
    if let Some(limit) = limit.filter(|l| size > *l) {
        return Err(InputError::TooLarge { path: path.to_owned(), size, limit, what });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(size).read_to_end(&mut data).map_err(|error| InputError::Io { path: path.to_owned(), error })?;
    Ok(data)
}

/// Opens `path` to append to it, creating it if missing; an existing path must be a regular
/// file (a FIFO would hang the first write, a device take the log nowhere).
pub fn append_regular(path: &Path) -> Result<File, InputError> {
    // Looked at first: opening a FIFO to write without a reader fails with a baffling ENXIO.
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(InputError::Directory(path.to_owned())),
        Ok(meta) if !meta.is_file() => return Err(InputError::NotRegular(path.to_owned())),
        _ => {}
    }
    open_regular(path, OpenOptions::new().create(true).append(true))
}

/// Why a file could not be read or opened, in a few words chosen by the error's kind; a kind
/// without words of ours keeps the error's own Display, unedited.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused() {
        assert!(matches!(read_regular(Path::new("/dev/zero"), Some(10), "config"), Err(InputError::NotRegular(_))));
        assert!(matches!(read_regular(Path::new("/"), None, "config"), Err(InputError::Directory(_))));
        assert!(matches!(append_regular(Path::new("/dev/null")), Err(InputError::NotRegular(_))));
        let dir = std::env::temp_dir().join(format!("input-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_regular(&fifo, None, "config"), Err(InputError::NotRegular(_))));
        assert!(matches!(append_regular(&fifo), Err(InputError::NotRegular(_))));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; 100]).unwrap();
        let e = read_regular(&big, Some(10), "config").unwrap_err();
        assert_eq!(e.to_string(), format!("{} is 100 bytes, more than the 10 bytes a config may have", big.display()));
        assert_eq!(read_regular(&big, Some(100), "config").unwrap().len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
