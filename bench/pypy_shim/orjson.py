"""Bench-only stand-in for orjson on PyPy (orjson cannot build for PyPy 3.9): stdlib json, compact."""
import json

JSONDecodeError = json.JSONDecodeError
OPT_APPEND_NEWLINE = 1
_enc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
def dumps(obj, option=0):
    out = _enc.encode(obj).encode("utf-8")
    return out + b"\n" if option & OPT_APPEND_NEWLINE else out
def loads(data):
    return json.loads(data)
