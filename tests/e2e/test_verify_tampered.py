"""``flamingo-corpus verify`` on tampered outputs: one thing damaged per case, the report names it.

The LAION and MMC4 sample builds run once (the session fixtures); each case works on its own copy
(``shutil.copytree``), changes one thing (a manifest field, sizes.json, a tar, a tar member, an
index row or file, a link to something outside the output) and runs the command as users do,
``cli.main(["verify", DIR])``: it must exit 1, print the report (no traceback), and the report
must name what was changed.  The untouched copies pass.  docs/output.md ("What verify checks")
lists the same checks for users.

``flamingo-corpus stats`` gets the damaged outputs too: one clear line and exit status 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flamingo_corpus import cli
from flamingo_corpus.output.index import INDEX_SCHEMA
from flamingo_corpus.output.verify import verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

Case = Callable[[Path], List[str]]  # tampers with an output copy; returns what the report must say
LAION: Dict[str, Case] = {}
MMC4: Dict[str, Case] = {}


def laion(fn: Case) -> Case:
    LAION[fn.__name__] = fn
    return fn


def mmc4(fn: Case) -> Case:
    MMC4[fn.__name__] = fn
    return fn


# --- helpers ---------------------------------------------------------------------------------------


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, m) -> None:
    (d / "manifest.json").write_text(json.dumps(m, indent=2))


def _edit_manifest(d: Path, edit: Callable[[dict], None]) -> None:
    m = _manifest(d)
    edit(m)
    _write_manifest(d, m)


def _shard(m: dict, name: str) -> dict:
    return next(s for s in m["shards"] if s["name"] == name)


Member = Tuple[tarfile.TarInfo, bytes]


def _members(path: Path) -> List[Member]:
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()]


def _regular(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def _rewrite_tar(d: Path, name: str, edit: Callable[[List[Member]], List[Member]]) -> None:
    """Rewrite shard ``name`` with its members edited, and give the manifest the new tar's size
    and sha256 (so that what is found is the members' damage, not the bytes')."""
    path = d / name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in edit(_members(path)):
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path.write_bytes(buf.getvalue())
    _edit_manifest(
        d,
        lambda m: _shard(m, name).update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest()),
    )


def _replace_member(d: Path, shard: str, name: str, data: bytes) -> None:
    """Shard ``shard`` with member ``name`` holding ``data`` instead (manifest updated)."""
    _rewrite_tar(d, shard, lambda ms: [_regular(i.name, data) if i.name == name else (i, b) for i, b in ms])


def _first_key(d: Path, name: str) -> str:
    return _members(d / name)[0][0].name.partition(".")[0]


def _index_file(d: Path) -> Path:
    (path,) = sorted((d / "index").glob("*.parquet"))
    return path


def _rows(d: Path) -> List[dict]:
    return pq.read_table(_index_file(d)).to_pylist()


def _write_rows(d: Path, rows: List[dict], schema: pa.Schema = INDEX_SCHEMA) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), _index_file(d))


def _row(rows: List[dict], id_: str) -> dict:
    return next(r for r in rows if r["id"] == id_)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _outside(d: Path) -> Path:
    """A folder beside the output copy: what links point at."""
    out = d.parent / "elsewhere"
    out.mkdir(exist_ok=True)
    return out


def _link_outside(d: Path, name: str) -> None:
    """Move ``name`` out of the output and leave a symbolic link to it in its place."""
    target = _outside(d) / Path(name).name
    shutil.move(str(d / name), target)
    os.symlink(target, d / name)


# --- manifest.json -----------------------------------------------------------------------------------


@laion
def manifest_not_json(d):
    (d / "manifest.json").write_text('{"unit": "rows", "shards": [')
    return ["manifest.json: not JSON"]


@laion
def manifest_a_list(d):
    _write_manifest(d, [_manifest(d)])
    return ["manifest.json: a list, not a JSON object"]


@laion
def manifest_empty_object(d):
    _write_manifest(d, {})
    return ["manifest.json: unit is missing"]


@laion
def manifest_without_shards(d):
    _edit_manifest(d, lambda m: m.pop("shards"))
    return ["manifest.json: shards is missing, not a list"]


@laion
def manifest_shards_not_a_list(d):
    _edit_manifest(d, lambda m: m.update(shards={"000000.tar": 1}))
    return ["manifest.json: shards is an object, not a list"]


@laion
def shard_entry_without_name(d):
    _edit_manifest(d, lambda m: m["shards"][1].pop("name"))
    return ["manifest.json: shards[1] has no name", "000001.tar: a tar the manifest does not list"]


@laion
def shard_entry_without_bytes(d):
    _edit_manifest(d, lambda m: _shard(m, "000001.tar").pop("bytes"))
    return ["manifest.json: shard 000001.tar: bytes is missing"]


@laion
def shard_entry_without_sha256(d):
    _edit_manifest(d, lambda m: _shard(m, "000001.tar").pop("sha256"))
    return ["manifest.json: shard 000001.tar: sha256 is missing"]


@laion
def shard_entry_without_count(d):
    _edit_manifest(d, lambda m: _shard(m, "000001.tar").pop("count"))
    return ["manifest.json: shard 000001.tar: count is missing"]


@laion
def shard_entry_not_an_object(d):
    _edit_manifest(d, lambda m: m["shards"].append("000009.tar"))
    return ["manifest.json: shards[5] is a string, not an object"]


@laion
def shard_name_leaving_the_output(d):
    (_outside(d) / "x.tar").write_bytes(b"\0" * 1024)
    _edit_manifest(d, lambda m: m["shards"].append({"name": "../elsewhere/x.tar", "count": 0, "bytes": 1024}))
    return ["manifest.json: shards[5] has name '../elsewhere/x.tar', not a shard name"]


@laion
def shard_listed_twice(d):
    _edit_manifest(d, lambda m: m["shards"].append(dict(m["shards"][0])))
    return ["manifest.json: shard 000000.tar is listed twice"]


@laion
def wrong_sha256(d):
    _edit_manifest(d, lambda m: _shard(m, "000002.tar").update(sha256="0" * 64))
    return ["000002.tar: bytes or sha256 differ from the manifest"]


@laion
def sha256_not_hex(d):
    _edit_manifest(d, lambda m: _shard(m, "000002.tar").update(sha256="not a digest"))
    return ["manifest.json: shard 000002.tar: sha256 is 'not a digest', not 64 hex digits"]


@laion
def wrong_count(d):
    m = _manifest(d)
    n = _shard(m, "000002.tar")["count"]
    _shard(m, "000002.tar")["count"] = n + 1
    _write_manifest(d, m)
    return [f"000002.tar: {n} samples, manifest says {n + 1}", "manifest.json: totals.kept is"]


@laion
def negative_count(d):
    _edit_manifest(d, lambda m: _shard(m, "000003.tar").update(count=-1))
    return ["manifest.json: shard 000003.tar: count is -1, not a count >= 0"]


@laion
def count_of_the_wrong_type(d):
    _edit_manifest(d, lambda m: _shard(m, "000003.tar").update(count="41"))
    return ["manifest.json: shard 000003.tar: count is '41', not a count >= 0"]


@laion
def totals_not_adding_up(d):
    _edit_manifest(d, lambda m: m["totals"].update(dropped=m["totals"]["dropped"] + 1))
    return ["do not add up to the", "drops add up to"]


@laion
def negative_total(d):
    _edit_manifest(d, lambda m: m["totals"].update(kept=-5))
    return ["manifest.json: totals.kept is -5, not a count >= 0"]


@laion
def totals_not_an_object(d):
    _edit_manifest(d, lambda m: m.update(totals=[1, 2]))
    return ["manifest.json: totals is a list, not an object"]


@laion
def drops_disagree_with_the_index(d):
    def edit(m):
        m["drops"]["clip/low_similarity"] -= 1
        m["drops"]["image/too_small"] += 1

    _edit_manifest(d, edit)
    return ["rows dropped as clip/low_similarity, the manifest says", "rows dropped as image/too_small"]


@laion
def rows_in_disagree(d):
    _edit_manifest(d, lambda m: m["totals"].update(rows_in=m["totals"]["rows_in"] + 3))
    return ["rows in,", "accounted for"]


@laion
def unit_unknown(d):
    _edit_manifest(d, lambda m: m.update(unit="pictures"))
    return ["manifest.json: unit is 'pictures', not 'rows' or 'documents'"]


# --- sizes.json --------------------------------------------------------------------------------------


@laion
def sizes_missing(d):
    (d / "sizes.json").unlink()
    return ["sizes.json: missing"]


@laion
def sizes_not_json(d):
    (d / "sizes.json").write_text("000000.tar: 41\n")
    return ["sizes.json: not JSON"]


@laion
def sizes_a_list(d):
    (d / "sizes.json").write_text("[41, 40]")
    return ["sizes.json: a list, not a JSON object"]


@laion
def sizes_wrong_count(d):
    sizes = json.loads((d / "sizes.json").read_text())
    sizes["000001.tar"] += 2
    (d / "sizes.json").write_text(json.dumps(sizes))
    return [f"sizes.json: 000001.tar holds {sizes['000001.tar']} samples, the manifest says"]


@laion
def sizes_extra_shard(d):
    sizes = json.loads((d / "sizes.json").read_text())
    sizes["000099.tar"] = 3
    (d / "sizes.json").write_text(json.dumps(sizes))
    return ["sizes.json: 000099.tar is not a shard the manifest lists"]


@laion
def sizes_without_a_shard(d):
    sizes = json.loads((d / "sizes.json").read_text())
    del sizes["000004.tar"]
    (d / "sizes.json").write_text(json.dumps(sizes))
    return ["sizes.json: no entry for 000004.tar"]


@laion
def sizes_a_fifo(d):
    (d / "sizes.json").unlink()
    os.mkfifo(d / "sizes.json")  # opened without blocking, and refused: not a regular file
    return ["sizes.json: unreadable", "not a regular file"]


# --- the tars ----------------------------------------------------------------------------------------


@laion
def tar_missing(d):
    (d / "000003.tar").unlink()
    return ["000003.tar: missing", "manifest totals.kept is"]


@laion
def tar_truncated(d):
    path = d / "000001.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 100])
    return ["000001.tar: not a readable tar", "000001.tar: bytes or sha256 differ"]


@laion
def tar_bytes_flipped(d):
    _flip(d / "000001.tar", 5000)
    return ["000001.tar: bytes or sha256 differ"]


@laion
def tar_header_flipped(d):
    _flip(d / "000002.tar", 0)  # the first member's name: the header checksum no longer matches
    return ["000002.tar: not a readable tar", "000002.tar: bytes or sha256 differ"]


@laion
def tar_not_a_tar(d):
    path = d / "000000.tar"
    path.write_bytes(b"PK\x03\x04 this is not a tar " * 100)
    return ["000000.tar: not a readable tar"]


@laion
def tar_not_listed(d):
    shutil.copy(d / "000000.tar", d / "000099.tar")
    return ["000099.tar: a tar the manifest does not list"]


@laion
def partial_tar_left(d):
    (d / "000005.tar.tmp").write_bytes(b"\0" * 512)
    return ["000005.tar.tmp: a partial shard left by an interrupted write"]


@laion
def tar_is_a_folder(d):
    (d / "000004.tar").unlink()
    (d / "000004.tar").mkdir()
    return ["000004.tar: not a regular file"]


@laion
def member_symlink(d):
    _rewrite_tar(d, "000001.tar", lambda ms: ms + [_special("0000009999.jpg", tarfile.SYMTYPE, "/etc/passwd")])
    return ["000001.tar: member '0000009999.jpg' is a symbolic link (to '/etc/passwd'), not a regular file"]


@laion
def member_hardlink(d):
    _rewrite_tar(d, "000001.tar", lambda ms: ms + [_special("0000009999.txt", tarfile.LNKTYPE, "/etc/shadow")])
    return ["000001.tar: member '0000009999.txt' is a hard link (to '/etc/shadow')"]


@laion
def member_directory(d):
    _rewrite_tar(d, "000001.tar", lambda ms: [_special("0000009999", tarfile.DIRTYPE)] + ms)
    return ["000001.tar: member '0000009999' is a directory"]


@laion
def member_device(d):
    _rewrite_tar(d, "000001.tar", lambda ms: ms + [_special("0000009999.png", tarfile.CHRTYPE)])
    return ["000001.tar: member '0000009999.png' is a device"]


@laion
def member_dotdot_name(d):
    _rewrite_tar(d, "000002.tar", lambda ms: ms + [_regular("../../escape.txt", b"boo")])
    return ["000002.tar: member '../../escape.txt' has an absolute name or '..'"]


@laion
def member_absolute_name(d):
    _rewrite_tar(d, "000002.tar", lambda ms: ms + [_regular("/tmp/absolute.txt", b"boo")])
    return ["000002.tar: member '/tmp/absolute.txt' has an absolute name or '..'"]


@laion
def member_in_a_folder(d):
    _rewrite_tar(d, "000002.tar", lambda ms: ms + [_regular("sub/0000009999.txt", b"boo")])
    return ["000002.tar: member 'sub/0000009999.txt' is in a folder"]


@laion
def member_unexpected_extension(d):
    key = _first_key(d, "000003.tar")
    _rewrite_tar(d, "000003.tar", lambda ms: ms[:3] + [_regular(f"{key}.exe", b"MZ")] + ms[3:])
    return [f"000003.tar: member '{key}.exe': extension 'exe' is not one the contract allows"]


@laion
def member_key_not_ten_digits(d):
    _rewrite_tar(d, "000003.tar", lambda ms: ms + [_regular("sample42.txt", b"a caption")])
    return ["000003.tar: member key 'sample42' is not 10 digits"]


@laion
def member_twice(d):
    _rewrite_tar(d, "000003.tar", lambda ms: ms[:3] + [ms[2]] + ms[3:])
    return [f"000003.tar: member '{_members(d / '000003.tar')[2][0].name}' appears twice"]


@laion
def duplicate_key_across_shards(d):
    first = _members(d / "000000.tar")[:3]  # the first sample: jpg, json, txt
    key = first[0][0].name.partition(".")[0]
    _rewrite_tar(d, "000001.tar", lambda ms: first + ms)
    return [f"000001.tar: keys also in 000000.tar: '{key}'"]


@laion
def laion_sample_without_txt(d):
    key = _first_key(d, "000002.tar")
    _rewrite_tar(d, "000002.tar", lambda ms: [m for m in ms if m[0].name != f"{key}.txt"])
    return [f"000002.tar: sample {key} lacks txt"]


@laion
def laion_sample_without_image(d):
    key = _first_key(d, "000002.tar")
    _rewrite_tar(d, "000002.tar", lambda ms: [m for m in ms if not m[0].name.startswith(f"{key}.jp")])
    return [f"000002.tar: sample {key} lacks an image"]


@laion
def laion_members_not_together(d):
    key = _first_key(d, "000002.tar")
    _rewrite_tar(d, "000002.tar", lambda ms: ms[1:] + ms[:1])  # its jpg moves to the end
    return [f"000002.tar: the members of sample {key} are not together"]


@laion
def laion_caption_not_utf8(d):
    key = _first_key(d, "000004.tar")
    _replace_member(d, "000004.tar", f"{key}.txt", b"\xff\xfe bad")
    return [f"000004.tar: {key}.txt: the caption is not UTF-8"]


@laion
def laion_image_not_an_image(d):
    key = _first_key(d, "000004.tar")
    _replace_member(d, "000004.tar", f"{key}.jpg", b"<html>")
    return [f"000004.tar: {key}.jpg: not a jpg image"]


@laion
def laion_json_names_another_key(d):
    key = _first_key(d, "000004.tar")

    def edit(ms):
        out = []
        for i, b in ms:
            if i.name == f"{key}.json":
                b = json.dumps({**json.loads(b), "key": "0000000999"}).encode()
                i = _regular(i.name, b)[0]
            out.append((i, b))
        return out

    _rewrite_tar(d, "000004.tar", edit)
    return [f"000004.tar: {key}.json: its json names key '0000000999'"]


@laion
def laion_json_names_another_id(d):
    key = _first_key(d, "000004.tar")

    def edit(ms):
        out = []
        for i, b in ms:
            if i.name == f"{key}.json":
                b = json.dumps({**json.loads(b), "id": "metadata.parquet:9999"}).encode()
                i = _regular(i.name, b)[0]
            out.append((i, b))
        return out

    _rewrite_tar(d, "000004.tar", edit)
    return [f"{key} in 000004.tar (id 'metadata.parquet:9999' in its json"]


# --- the index -----------------------------------------------------------------------------------------


@laion
def index_deleted(d):
    shutil.rmtree(d / "index")
    return ["index: no parquet files"]


@laion
def index_truncated(d):
    path = _index_file(d)
    path.write_bytes(path.read_bytes()[:5000])
    return [f"index/{path.name}: not a readable parquet file"]


@laion
def index_not_parquet(d):
    _index_file(d).write_text("id,status\nmetadata.parquet:0,kept\n")
    return [f"index/{_index_file(d).name}: not a readable parquet file"]


@laion
def index_stray_file(d):
    (d / "index" / "notes.txt").write_text("hello")
    return ["index/notes.txt: not an index file"]


@laion
def index_column_missing(d):
    table = pq.read_table(_index_file(d))
    pq.write_table(table.drop_columns(["reason"]), _index_file(d))
    return [f"index/{_index_file(d).name}: no column 'reason'"]


@laion
def index_column_of_the_wrong_type(d):
    table = pq.read_table(_index_file(d))
    i = table.schema.get_field_index("row")
    pq.write_table(table.set_column(i, "row", table.column("row").cast(pa.string())), _index_file(d))
    return [f"index/{_index_file(d).name}: column 'row' is string, not int64"]


@laion
def index_duplicated_id(d):
    rows = _rows(d)
    rows.append(dict(_row(rows, "metadata.parquet:5")))
    _write_rows(d, rows)
    return ["index: 1 row ids appear more than once: 'metadata.parquet:5' (2 times)"]


@laion
def index_missing_id(d):
    _write_rows(d, [r for r in _rows(d) if r["id"] != "metadata.parquet:7"])
    return ["rows missing", "'metadata.parquet:7'"]


@laion
def index_one_duplicated_one_missing(d):
    """The case counts alone cannot see: as many rows as the manifest accounts for."""
    rows = _rows(d)
    i = next(i for i, r in enumerate(rows) if r["id"] == "metadata.parquet:7")
    rows[i] = dict(_row(rows, "metadata.parquet:5"))
    _write_rows(d, rows)
    return ["'metadata.parquet:5' (2 times)", "rows missing", "'metadata.parquet:7'"]


@laion
def index_id_not_its_row(d):
    rows = _rows(d)
    _row(rows, "metadata.parquet:9")["row"] = 90
    _write_rows(d, rows)
    return ["ids do not match their row column: 'metadata.parquet:9' (row 90)"]


@laion
def index_id_of_another_form(d):
    rows = _rows(d)
    _row(rows, "metadata.parquet:9")["id"] = "row nine"
    _write_rows(d, rows)
    return ["row ids are not <source>:<row>: 'row nine'", "'metadata.parquet:9'"]


@laion
def index_kept_row_pointing_nowhere(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "kept" and r["shard"] == "000001.tar")
    key, row["key"] = row["key"], "0000099999"
    _write_rows(d, rows)
    return [
        f"kept rows point at a key no tar holds: '{row['id']}' (0000099999 in 000001.tar)",
        f"keys in the tars have no kept row in the index: {key} (000001.tar)",
    ]


@laion
def index_kept_row_in_another_shard(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "kept" and r["shard"] == "000001.tar")
    row["shard"] = "000002.tar"
    _write_rows(d, rows)
    return [f"'{row['id']}' ({row['key']} in 000002.tar, the key is in 000001.tar)"]


@laion
def index_kept_row_without_key(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "kept")
    row["key"] = None
    _write_rows(d, rows)
    return [f"kept rows have no key (10 digits): '{row['id']}'"]


@laion
def index_dropped_row_without_reason(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "dropped")
    row["reason"] = None
    _write_rows(d, rows)
    return [f"dropped rows have no reason: '{row['id']}'"]


@laion
def index_dropped_row_without_stage(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "dropped")
    row["stage"] = ""
    _write_rows(d, rows)
    return [f"dropped rows have no stage: '{row['id']}'"]


@laion
def index_unregistered_reason(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "dropped" and r["stage"] == "download")
    row["reason"] = "gremlins"
    _write_rows(d, rows)
    return [f"drop download/gremlins is not a (stage, reason) pair of the registry (1 rows, e.g. '{row['id']}')"]


@laion
def index_reason_of_another_kind(d):
    rows = _rows(d)
    row = next(r for r in rows if r["status"] == "dropped")
    row["stage"], row["reason"] = "align", "unassigned"  # an MMC4 image's reason
    _write_rows(d, rows)
    return ["drop align/unassigned is registered for image rows, not row"]


@laion
def index_status_unknown(d):
    rows = _rows(d)
    rows[3]["status"] = "maybe"
    _write_rows(d, rows)
    return [f"rows have a status other than kept or dropped: '{rows[3]['id']}'"]


# --- links to what lies outside the output --------------------------------------------------------------


@laion
def manifest_a_link(d):
    _link_outside(d, "manifest.json")
    return ["manifest.json: a symbolic link"]


@laion
def sizes_a_link(d):
    _link_outside(d, "sizes.json")
    return ["sizes.json: a symbolic link"]


@laion
def tar_a_link(d):
    _link_outside(d, "000001.tar")
    return ["000001.tar: a symbolic link"]


@laion
def index_folder_a_link(d):
    _link_outside(d, "index")
    return ["index/: a symbolic link"]


@laion
def index_file_a_link(d):
    _link_outside(d, f"index/{_index_file(d).name}")
    return [f"index/{_index_file(d).name}: a symbolic link"]


# --- MMC4 --------------------------------------------------------------------------------------------


@mmc4
def mmc4_document_not_json(d):
    key = _first_key(d, "000001.tar")
    _replace_member(d, "000001.tar", f"{key}.json", b'{"text_list": [')
    return [f"000001.tar: {key}.json: not JSON"]


@mmc4
def mmc4_document_not_a_document(d):
    key = _first_key(d, "000001.tar")
    _replace_member(d, "000001.tar", f"{key}.json", json.dumps({"key": key}).encode())
    return [f"000001.tar: {key}.json: not an MMC4 document"]


@mmc4
def mmc4_document_with_an_image_member(d):
    key = _first_key(d, "000001.tar")
    _rewrite_tar(d, "000001.tar", lambda ms: ms[:1] + [_regular(f"{key}.jpg", b"\xff\xd8\xff")] + ms[1:])
    return [f"000001.tar: member '{key}.jpg': extension 'jpg' is not one the contract allows (json)"]


@mmc4
def mmc4_image_missing(d):
    rows = _rows(d)
    doc = next(r for r in rows if r["kind"] == "image" and r["position"] == 1)["doc_id"]
    _write_rows(d, [r for r in rows if r["id"] != f"{doc}#0"])
    return ["images missing", f"'{doc}#0'", "images, the manifest accounts for"]


@mmc4
def mmc4_image_duplicated_and_one_missing(d):
    rows = _rows(d)
    doc = next(r for r in rows if r["kind"] == "image" and r["position"] == 1)["doc_id"]
    i = next(i for i, r in enumerate(rows) if r["id"] == f"{doc}#1")
    rows[i] = dict(_row(rows, f"{doc}#0"))
    _write_rows(d, rows)
    return [f"'{doc}#0' (2 times)", "images missing", f"'{doc}#1'"]


@mmc4
def mmc4_document_duplicated_and_one_missing(d):
    rows = _rows(d)
    i = next(i for i, r in enumerate(rows) if r["id"] == "docs.jsonl:9")
    rows[i] = dict(_row(rows, "docs.jsonl:8"))
    _write_rows(d, rows)
    return ["'docs.jsonl:8' (2 times)", "lines not in the index", "'docs.jsonl:9'", "images whose document is not"]


@mmc4
def mmc4_image_kept_apart_from_its_document(d):
    rows = _rows(d)
    image = next(r for r in rows if r["kind"] == "image" and r["status"] == "kept")
    image["key"] = "0000000999"
    _write_rows(d, rows)
    return ["kept images are not kept with their document (the key and shard of one of its kept", f"'{image['id']}'"]


@mmc4
def mmc4_image_of_no_document(d):
    rows = _rows(d)
    image = dict(next(r for r in rows if r["kind"] == "image" and r["status"] == "dropped"))
    image.update(id="nowhere.jsonl:1#0", doc_id="nowhere.jsonl:1", position=0)
    rows.append(image)
    _write_rows(d, rows)
    return ["images whose document is not in the index: 'nowhere.jsonl:1#0'"]


@mmc4
def mmc4_images_section_missing(d):
    _edit_manifest(d, lambda m: m.pop("images"))
    return ["manifest.json: no images section, the index holds"]


# --- the cases ---------------------------------------------------------------------------------------------


def _copy(build, tmp_path: Path) -> Path:
    out, _ = build
    return Path(shutil.copytree(out, tmp_path / "out", symlinks=True))


def _verify_fails_naming(d: Path, expected: List[str], capsys) -> str:
    assert cli.main(["verify", str(d)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.out.startswith("FAILED:"), captured.out
    missing = [e for e in expected if e not in captured.out]
    assert not missing, f"the report does not say {missing}:\n{captured.out}"
    return captured.out


def test_there_are_enough_cases():
    assert len(LAION) + len(MMC4) >= 40


@pytest.mark.parametrize("case", sorted(LAION))
def test_laion_tampered(case, sample_build, tmp_path, capsys):
    d = _copy(sample_build, tmp_path)
    expected = LAION[case](d)
    _verify_fails_naming(d, expected, capsys)


@pytest.mark.parametrize("case", sorted(MMC4))
def test_mmc4_tampered(case, mmc4_build, tmp_path, capsys):
    d = _copy(mmc4_build, tmp_path)
    expected = MMC4[case](d)
    _verify_fails_naming(d, expected, capsys)


def test_untouched_copies_pass(sample_build, mmc4_build, tmp_path, capsys):
    for i, build in enumerate((sample_build, mmc4_build)):
        d = Path(shutil.copytree(build[0], tmp_path / f"copy{i}"))
        assert cli.main(["verify", str(d)]) == 0
        assert capsys.readouterr().out.startswith("OK:")
        assert verify(str(d), quick=True).ok


def test_quick_verify_reports_a_damaged_manifest_instead_of_raising(sample_build, tmp_path):
    d = _copy(sample_build, tmp_path)
    _edit_manifest(d, lambda m: m["shards"][0].pop("bytes"))
    report = verify(str(d), quick=True)
    assert not report.ok and "manifest.json: shard 000000.tar: bytes is missing" in str(report)
    (d / "manifest.json").write_text("[]")
    assert "a list, not a JSON object" in str(verify(str(d), quick=True))


def test_a_missing_output_directory_is_one_line_and_status_2(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path / "nothing-here")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().count("\n") == 0
    assert "nothing-here: no such directory" in captured.err


def test_the_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split()).lower()
    assert "exit status 0" in text and "1 when" in text and "2 when" in text


# --- stats on damaged outputs: one line, status 2 ----------------------------------------------------------


def _stats_manifest_list(d):
    _write_manifest(d, [])
    return "manifest.json: a JSON list, not an object"


def _stats_manifest_not_json(d):
    (d / "manifest.json").write_text("{")
    return "no readable manifest.json"


def _stats_manifest_shards(d):
    _edit_manifest(d, lambda m: m.update(shards=[{"name": "../x.tar", "bytes": "many"}]))
    return "shards[0] is not an entry with a shard name"


def _stats_manifest_counts(d):
    _edit_manifest(d, lambda m: m["shards"][0].update(bytes="many"))
    return "shards[0] (000000.tar): count and bytes must be counts >= 0"


def _stats_manifest_recipe(d):
    _edit_manifest(d, lambda m: m.update(recipe=["laion"]))
    return "recipe is not an object"


def _stats_manifest_link(d):
    _link_outside(d, "manifest.json")
    return "manifest.json: a symbolic link"


def _stats_index_truncated(d):
    _index_file(d).write_bytes(_index_file(d).read_bytes()[:3000])
    return "index"


def _stats_index_not_parquet(d):
    _index_file(d).write_text("a,b\n1,2\n")
    return "index"


def _stats_index_column_missing(d):
    pq.write_table(pq.read_table(_index_file(d)).drop_columns(["status"]), _index_file(d))
    return "has no column 'status'"


def _stats_index_column_type(d):
    table = pq.read_table(_index_file(d))
    i = table.schema.get_field_index("source_index")
    pq.write_table(table.set_column(i, "source_index", table.column(i).cast(pa.string())), _index_file(d))
    return "column 'source_index' is string, not int64"


def _stats_index_folder_link(d):
    _link_outside(d, "index")
    return "index: a symbolic link"


def _stats_index_file_link(d):
    _link_outside(d, f"index/{_index_file(d).name}")
    return ".parquet: a symbolic link"


def _stats_index_deleted(d):
    shutil.rmtree(d / "index")
    return "index"


def _stats_tars_not_tars(d):
    for path in d.glob("*.tar"):
        path.write_bytes(b"not a tar" * 200)
    return "is not a readable tar"


def _stats_tar_link(d):
    for path in sorted(d.glob("*.tar")):
        _link_outside(d, path.name)
    return ".tar: a symbolic link"


STATS_DAMAGE: Dict[str, Callable[[Path], str]] = {
    f.__name__[len("_stats_") :]: f
    for f in (
        _stats_manifest_list,
        _stats_manifest_not_json,
        _stats_manifest_shards,
        _stats_manifest_counts,
        _stats_manifest_recipe,
        _stats_manifest_link,
        _stats_index_truncated,
        _stats_index_not_parquet,
        _stats_index_column_missing,
        _stats_index_column_type,
        _stats_index_folder_link,
        _stats_index_file_link,
        _stats_index_deleted,
        _stats_tars_not_tars,
        _stats_tar_link,
    )
}


@pytest.mark.parametrize("damage", sorted(STATS_DAMAGE))
def test_stats_on_a_damaged_output_is_one_line_and_status_2(damage, sample_build, tmp_path, capsys):
    d = _copy(sample_build, tmp_path)
    expected = STATS_DAMAGE[damage](d)
    report = tmp_path / "report.html"
    assert cli.main(["stats", str(d), "--output", str(report)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flamingo-corpus: ") and expected in lines[0], captured.err
    assert not report.exists()


def test_stats_on_a_missing_directory_is_one_line_and_status_2(tmp_path, capsys):
    assert cli.main(["stats", str(tmp_path / "nothing"), "--output", str(tmp_path / "r.html")]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "nothing" in captured.err
