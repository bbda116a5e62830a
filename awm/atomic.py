"""Writes that never leave a half-written file: a temporary file in the same folder, renamed."""
import json
import os
import tempfile


def write_text_atomic(path, text):
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
