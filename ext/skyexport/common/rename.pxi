# The no-replace rename that publishes an export (platform.h: the system call of each
# platform, or a refusal).

cdef extern from "platform.h" nogil:
    int sx_rename_noreplace(const char* oldpath, const char* newpath)


def rename_noreplace(src, dst):
    """Rename `src` to `dst` atomically, failing with FileExistsError if `dst` exists (even
    as an empty directory, which plain rename(2) would silently replace).  Raises
    NotImplementedError where the platform or file system cannot (platform.h:
    renameat2(RENAME_NOREPLACE) on Linux, renamex_np(RENAME_EXCL) on macOS, MoveFileExW on
    Windows)."""
    cdef bytes s = os.fsencode(src), d = os.fsencode(dst)
    cdef const char* sp = s
    cdef const char* dp = d
    cdef int rc, err = 0
    with nogil:
        rc = sx_rename_noreplace(sp, dp)
        if rc != 0:
            err = errno
    if rc == 0:
        return
    if err == EINVAL or err == ENOSYS:
        raise NotImplementedError("no rename without replace on this platform or file system")
    raise OSError(err, strerror(err).decode("utf-8", "replace"), os.fsdecode(src), None,
                  os.fsdecode(dst))
