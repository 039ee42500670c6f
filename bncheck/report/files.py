"""Writing report files: atomically (a reader never sees half a file), with the mode a plain ``open()`` gives."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` (str as UTF-8, or bytes) to ``path`` through a temporary file in the same folder, renamed into
    place. The file gets the permissions of a new file under the process's umask (e.g. 0644), not the temporary
    file's private 0600, so a CI artifact or a shared folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)      # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask
