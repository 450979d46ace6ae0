"""The Ray engine's per-block read of a source, without Ray: the driver's id pass and the workers' block reader
(:mod:`selector.ray_engine`) give exactly the rows, ids and errors of the local loader, and format adapters read
a :class:`selector.data.formats.Piece` of a file as the whole-source read gives it.

The reading functions are plain functions the Ray stage calls, so they run here in-process; ``tests/test_ray.py``
runs them on Ray.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Image as ImageFeature
from PIL import Image

import selector
from selector.data.formats import FORMATS, ID_FIELDS, Piece, jsonl_lines, next_offset
from selector.errors import DataError
from selector.ray_engine import RaySource, _Files, _read_options, _read_shard, _rows_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "selector", "example_data", "llava_mini.json")
COLUMNS = ["id", "image", "images", "messages", "error", "source"]


def _png(color=(10, 200, 30), size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_folder(tmp_path):
    """An image folder with good, corrupt and empty images, and a good image outside it."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "red.png").write_bytes(_png((200, 0, 0)))
    (images / "sub" / "blue.png").write_bytes(_png((0, 0, 200)))
    (images / "broken.png").write_bytes(b"not an image at all")
    (images / "empty.png").write_bytes(b"")
    (tmp_path / "outside.png").write_bytes(_png())
    return images


def _llava(i: int, row_id, image=None, answer="An answer."):
    row = {"conversations": [{"from": "human", "value": ("<image>\n" if image else "") + f"Q{i}?"}]}
    row["conversations"].append({"from": "gpt", "value": answer})
    if row_id is not None:
        row["id"] = row_id
    if image is not None:
        row["image"] = image
    return row


def _jsonl_source(tmp_path):
    """LLaVA JSONL: blank lines, an unparsable line, missing ids (``stem:line<n>``), duplicates, and images from
    an image folder (good, nested, missing, corrupt, empty, outside the root)."""
    _image_folder(tmp_path)
    images = ["red.png", "sub/blue.png", "gone.png", "broken.png", "empty.png", "../outside.png", None]
    lines = []
    for i in range(23):
        row_id = None if i % 5 == 3 else ("dup" if i % 4 == 0 else f"r{i}")
        lines.append(json.dumps(_llava(i, row_id, images[i % len(images)], answer="" if i == 9 else "Fine.")))
        if i % 6 == 2:
            lines.append("   ")
    lines.insert(11, "{not json")
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path), str(tmp_path / "images")


def _parquet_source(tmp_path, suffix=".parquet"):
    """Messages rows in three table shards (small row groups): embedded image bytes, image paths, missing ids
    (``stem:row<i>`` counted across files) and an id repeated across shards."""
    images = _image_folder(tmp_path)
    folder = tmp_path / "shards"
    folder.mkdir()
    rows = []
    for i in range(17):
        image = {"bytes": _png((i * 10, 0, 0)), "path": None} if i % 3 == 0 else ["red.png", "broken.png", None][i % 3]
        row = {
            "id": None if i % 4 == 1 else ("same" if i % 5 == 0 else f"p{i}"),
            "messages": [
                {"role": "user", "content": ("<image>" if image else "") + f"Say {i}"},
                {"role": "assistant", "content": "ok" if i != 7 else " "},
            ],
            "images": [image] if image else [],
        }
        rows.append(row)
    schema = pa.schema(
        {
            "id": pa.string(),
            "messages": pa.list_(pa.struct({"role": pa.string(), "content": pa.string()})),
            "images": pa.list_(pa.struct({"bytes": pa.binary(), "path": pa.string()})),
        }
    )
    normalized = [
        {**row, "images": [img if isinstance(img, dict) else {"bytes": None, "path": img} for img in row["images"]]}
        for row in rows
    ]
    for k, (a, b) in enumerate([(0, 6), (6, 7), (7, 17)]):
        table = pa.Table.from_pylist(normalized[a:b], schema=schema)
        path = folder / f"train-{k:05d}-of-00003{suffix}"
        if suffix == ".parquet":
            pq.write_table(table, path, row_group_size=2)
        else:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=3)
    return str(folder), str(images)


def _minigpt4_source(tmp_path):
    """A cc_sbu_align folder: filter_cap.json and its image folder, with a missing image and a bad annotation."""
    folder = tmp_path / "cc_sbu_align"
    (folder / "image").mkdir(parents=True)
    annotations = []
    for i in range(9):
        if i != 4:
            (folder / "image" / f"{i}.jpg").write_bytes(_png((0, i * 20, 0)))
        annotations.append({"image_id": str(i), "caption": f"A picture {i}."})
    annotations.insert(6, {"caption": "no image id"})
    annotations.append({"image_id": "3", "caption": "the same image again"})
    (folder / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    return str(folder), None


def _json_source(tmp_path):
    _image_folder(tmp_path)
    rows = [_llava(i, None if i % 2 else "j", "red.png" if i % 3 else None) for i in range(7)] + ["not an object"]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    return str(path), str(tmp_path / "images")


SOURCES = {
    "jsonl": _jsonl_source,
    "parquet": _parquet_source,
    "arrow": lambda tmp_path: _parquet_source(tmp_path, ".arrow"),
    "minigpt4": _minigpt4_source,
    "json": _json_source,
}


def _read_like_the_workers(source: RaySource, out, shard_size: int, root: str | None = None):
    """The Ray engine's reading stage run in-process: index on the driver, each shard read by `_read_shard`."""
    source.shard_size = shard_size
    index = source.index()
    files = _Files(root or str(out))
    options = _read_options(source)
    files.mkdir(files.path("input"))  # as the engine's driver does before the pipeline
    stems = []
    for start in range(0, index.n_rows, shard_size):
        end = min(start + shard_size, index.n_rows)
        stem = files.path("input", f"rows-{start}-{end}")
        shard = {"start": start, "end": end, "input": stem + ".parquet", "input_key": "k"}
        _read_shard(root or files.root, {**shard, "read": index.read_spec(start, end)}, options)
        stems.append(stem)
    return _rows_dataset(files, stems, str(out / "all"))


def _rows(ds):
    """Every canonical column of every row, images as their stored bytes and paths."""
    raw = ds.select_columns(COLUMNS).cast_column("image", ImageFeature(decode=False))
    return raw.cast_column("images", [ImageFeature(decode=False)]).to_list()


@pytest.mark.parametrize("kind", sorted(SOURCES))
@pytest.mark.parametrize("shard_size", [2, 5])
def test_per_block_read_equals_the_local_loader(kind, shard_size, tmp_path):
    path, image_root = SOURCES[kind](tmp_path)
    local = selector.load_instructions(path, image_root=image_root)
    source = RaySource(path, image_root=image_root)
    read = _read_like_the_workers(source, tmp_path / "out", shard_size)
    assert len(source) == len(local)
    assert read.features == local.features
    assert _rows(read) == _rows(local)
    assert source._fingerprint == local._fingerprint  # same shard keys: one engine resumes the other's run
    errors = [e for e in local["error"] if e]
    assert errors and any("#" in i for i in local["id"])  # the sources hold broken rows and renamed ids


def test_blocks_go_through_an_object_store_uri(tmp_path, monkeypatch):
    from pyarrow import fs

    # an "s3://" URI served by a folder: the engine's non-local path (streams, no rename) without a network
    (tmp_path / "bucket").mkdir()
    store = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())
    local_init = _Files.__init__

    def init(self, root: str) -> None:
        if not root.startswith("s3://"):
            return local_init(self, root)
        self.fs, self.root, self.local = store, root.removeprefix("s3://"), False

    monkeypatch.setattr(_Files, "__init__", init)
    path, image_root = _jsonl_source(tmp_path)
    read = _read_like_the_workers(RaySource(path, image_root=image_root), tmp_path / "scratch", 4, "s3://run")
    assert _rows(read) == _rows(selector.load_instructions(path, image_root=image_root))
    assert len(os.listdir(tmp_path / "bucket" / "run" / "input")) == 2 * 6  # shards and their markers


def test_the_fixtures_cover_the_cases_the_loader_names(tmp_path):
    path, image_root = _jsonl_source(tmp_path)
    ds = selector.load_instructions(path, image_root=image_root)
    kinds = {e.split(":")[0] for e in ds["error"] if e}
    assert {"missing_image", "corrupt_image", "empty_image", "image_outside_root", "invalid_json"} <= kinds
    assert "train:line5" in ds["id"] and "dup#2" in ds["id"]  # line 4 is blank
    path, image_root = _parquet_source(tmp_path / "p")
    ids = selector.load_instructions(path, image_root=image_root)["id"]
    assert "train-00002-of-00003:row9" in ids and "same#1" in ids  # fallback ids counted across the shards


def _pieces(path, offset, sizes):
    """Pieces covering a file in runs of ``sizes`` records (JSONL pieces seek to their first record)."""
    starts = [(byte, line) for line, byte, _ in jsonl_lines(path)] if path.endswith(".jsonl") else None
    first, pieces = 0, []
    for size in sizes:
        seek = starts[first] if starts is not None and first < len(starts) else (None, 1)
        pieces.append(Piece(path, first, first + size, offset, *seek))
        first += size
    return pieces


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_pieces_of_each_file_read_as_the_whole_source(kind, tmp_path):
    from selector.data.load import _plan

    path, image_root = SOURCES[kind](tmp_path)
    plan = _plan(path, "auto", image_root, None)
    read = FORMATS[plan.format].read
    roots = tuple(plan.image_roots)
    whole = list(read(plan.source.files, roots))
    pieced, offset = [], 0
    for file in plan.source.files:
        n = sum(1 for _ in read((file,), roots, Piece(file, offset=offset), ID_FIELDS))
        for piece in _pieces(file, offset, [1, 3, 2, n]):
            pieced.extend(read((file,), roots, piece))
        offset = next_offset(file, offset, n)
    assert pieced == whole


def test_the_driver_reads_only_the_id_column_of_a_table(tmp_path, monkeypatch):
    import selector.data.formats as formats

    path, image_root = _parquet_source(tmp_path)
    seen = []
    real = formats._arrow_batches

    def spy(file, first=0, stop=None, columns=None):
        seen.append(columns)
        return real(file, first, stop, columns)

    source = RaySource(path, image_root=image_root)
    source.plan()  # the plan (the loader's own) lists image paths; the id pass is what is checked here
    monkeypatch.setattr(formats, "_arrow_batches", spy)
    source.index()
    assert seen == [ID_FIELDS] * 3


def test_a_source_changed_after_the_id_pass_is_an_error(tmp_path):
    path, image_root = _jsonl_source(tmp_path)
    source = RaySource(path, image_root=image_root)
    source.shard_size = 100
    index = source.index()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_llava(99, "late")) + "\n")
    files = _Files(str(tmp_path / "out"))
    shard = {"start": 0, "end": index.n_rows, "input": files.path("rows.parquet"), "input_key": "k"}
    # the driver said the file ends at row n; the worker reading to its end finds one more
    spec = json.loads(index.read_spec(0, index.n_rows))
    spec["pieces"][0]["stop"] = None
    with pytest.raises(DataError, match="changed while the run read them"):
        _read_shard(files.root, {**shard, "read": json.dumps(spec)}, _read_options(source))


def test_an_empty_source_is_the_loaders_error(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(DataError, match="the dataset has no rows"):
        len(RaySource(str(path), format="llava"))
