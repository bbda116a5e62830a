"""Writes that never leave a half-written file: a temporary file in the same folder, renamed."""
import json
import os
import tempfile


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()   # read once: temporary files and folders are private until given the usual mode


def usual_mode(path):
    """Give a file or folder made by tempfile the mode an ordinary one would have."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~UMASK)


def write_text_atomic(path, text):
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        usual_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
