"""The download engine against a local HTTP server on 127.0.0.1 (no external network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cellssl.cli import main
from cellssl.data.download import (
    DownloadFile,
    DownloadSpec,
    check_data_root,
    download,
    unpack_archive,
)
from cellssl.errors import ConfigError, DataError
from cellssl.plugins import hookimpl
from cellssl.plugins.manager import build_plugin_state, use_plugin_state


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # the next response stops after this many body bytes, then closes
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range header, bytes sent)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        """Silence the request log to keep test output clean."""

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        body = state.files.get(self.path)
        range_header = self.headers.get("Range")
        if body is None:
            self.send_error(404, "no such file")
            state.requests.append((self.path, range_header, 0))
            return
        start = 0
        if range_header and state.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                state.requests.append((self.path, range_header, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.cut_after is not None:
            payload = payload[: state.cut_after]
            state.cut_after = None
            self.close_connection = True
        # recorded before the body goes out: the client may return as soon as it has read the last byte
        state.requests.append((self.path, range_header, len(payload)))
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that are not a repeating pattern."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def spec_for(base: str, name: str, data: bytes, **kwargs: object) -> DownloadSpec:
    item = DownloadFile(url=f"{base}/{name}", path=f"sub/{name}", size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), **kwargs)  # type: ignore[arg-type]
    return DownloadSpec(name="fixture", files=(item,))


def test_full_download_is_verified_and_atomic(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = payload(300_000)
    state.files["/a.bin"] = data
    result = download(spec_for(base, "a.bin", data), tmp_path / "out", progress=False, chunk_size=4096)
    final = tmp_path / "out" / "sub" / "a.bin"
    assert final.read_bytes() == data
    assert result.downloaded == [final] and result.skipped == [] and result.unverified == []
    assert not (tmp_path / "out" / "sub" / "a.bin.part").exists()
    assert state.requests == [("/a.bin", None, 300_000)]
    # a second run finds the complete file and does not contact the server
    again = download(spec_for(base, "a.bin", data), tmp_path / "out", progress=False)
    assert again.skipped == [final] and again.downloaded == []
    assert len(state.requests) == 1


def test_resume_after_a_partial_part_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = payload(250_000, seed=2)
    state.files["/b.bin"] = data
    part = tmp_path / "sub" / "b.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100_000])
    download(spec_for(base, "b.bin", data), tmp_path, progress=False)
    assert (tmp_path / "sub" / "b.bin").read_bytes() == data
    assert state.requests == [("/b.bin", "bytes=100000-", 150_000)]  # only the missing bytes travelled
    assert not part.exists()


def test_server_without_range_support_restarts_from_zero(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = payload(50_000, seed=3)
    state.files["/c.bin"] = data
    state.honour_range = False
    part = tmp_path / "sub" / "c.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 20_000)  # garbage that must not survive
    download(spec_for(base, "c.bin", data), tmp_path, progress=False)
    assert (tmp_path / "sub" / "c.bin").read_bytes() == data
    assert state.requests == [("/c.bin", "bytes=20000-", 50_000)]


def test_interrupted_transfer_keeps_the_part_and_resumes(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = payload(120_000, seed=4)
    state.files["/d.bin"] = data
    spec = spec_for(base, "d.bin", data)
    state.cut_after = 70_000
    with pytest.raises(DataError, match=r"download of .*/d\.bin was interrupted .* after 70000 bytes\. The partial "
                                        r"file .*d\.bin\.part is kept: run the same command again to resume"):
        download(spec, tmp_path, progress=False, retries=0)
    assert (tmp_path / "sub" / "d.bin.part").stat().st_size == 70_000
    download(spec, tmp_path, progress=False)
    assert (tmp_path / "sub" / "d.bin").read_bytes() == data
    assert state.requests[-1] == ("/d.bin", "bytes=70000-", 50_000)
    # with retries the same interruption is healed within one call
    state.cut_after = 10_000
    download(spec_for(base, "d.bin", data), tmp_path / "again", progress=False, retries=2)
    assert (tmp_path / "again" / "sub" / "d.bin").read_bytes() == data
    assert [r[1] for r in state.requests[-2:]] == [None, "bytes=10000-"]


def test_checksum_mismatch_removes_the_part(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = payload(10_000, seed=5)
    state.files["/e.bin"] = data[:-1] + b"\xff" if data[-1] != 0xFF else data[:-1] + b"\x00"
    spec = spec_for(base, "e.bin", data)
    expected = hashlib.sha256(data).hexdigest()
    actual = hashlib.sha256(state.files["/e.bin"]).hexdigest()
    with pytest.raises(DataError, match=rf"checksum mismatch for sub/e\.bin from .*/e\.bin: sha256 is {actual}, "
                                        rf"expected {expected}\. The partial file .*e\.bin\.part was removed"):
        download(spec, tmp_path, progress=False)
    assert not (tmp_path / "sub" / "e.bin.part").exists()
    assert not (tmp_path / "sub" / "e.bin").exists()


def test_size_mismatch_and_missing_url(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.files["/f.bin"] = b"12345"
    spec = DownloadSpec("fixture", (DownloadFile(f"{base}/f.bin", "f.bin", size=6),))
    with pytest.raises(DataError, match=r"checksum mismatch for f\.bin .*: received 5 bytes, expected 6"):
        download(spec, tmp_path, progress=False)
    missing = DownloadSpec("fixture", (DownloadFile(f"{base}/nothing.bin", "n.bin"),))
    with pytest.raises(DataError, match=r"download of .*/nothing\.bin failed: HTTP 404"):
        download(missing, tmp_path, progress=False)


def test_existing_wrong_final_file_is_not_overwritten(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = payload(1000, seed=6)
    state.files["/g.bin"] = data
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.bin").write_bytes(b"old")
    with pytest.raises(DataError, match=r"g\.bin exists but does not match the download spec of 'fixture': its "
                                        r"size is 3 bytes, expected 1000\. Delete it"):
        download(spec_for(base, "g.bin", data), tmp_path, progress=False)
    assert (tmp_path / "sub" / "g.bin").read_bytes() == b"old"
    assert state.requests == []


def test_unverified_file_gets_a_checksum_sidecar(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.files["/h.bin"] = b"hello world"
    result = download(DownloadSpec("fixture", (DownloadFile(f"{base}/h.bin", "h.bin"),)), tmp_path, progress=False)
    assert result.unverified == [tmp_path / "h.bin"]
    assert (tmp_path / "h.bin.sha256").read_text() == f"{hashlib.sha256(b'hello world').hexdigest()}  h.bin\n"


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_archive_is_unpacked_once(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    data = _zip_bytes({"DATA/one.txt": b"1", "DATA/deep/two.txt": b"22"})
    state.files["/data.zip"] = data
    spec = DownloadSpec("fixture", (DownloadFile(f"{base}/data.zip", "data.zip", len(data),
                                                 hashlib.sha256(data).hexdigest(), unpack=True),))
    result = download(spec, tmp_path, progress=False)
    assert result.unpacked == [tmp_path / "data.zip"]
    assert (tmp_path / "DATA" / "deep" / "two.txt").read_bytes() == b"22"
    (tmp_path / "DATA" / "one.txt").write_bytes(b"edited")
    again = download(spec, tmp_path, progress=False)
    assert again.unpacked == [] and (tmp_path / "DATA" / "one.txt").read_bytes() == b"edited"


def test_unsafe_archive_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"../escape.txt": b"x"}))
    with pytest.raises(DataError, match=r"unsafe member path '\.\./escape\.txt'"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_missing_or_incomplete_roots_and_targets(tmp_path: Path) -> None:
    hint = "Get it with: cellssl data download fixture --to DIR"
    with pytest.raises(DataError, match=rf"fixture data root not found: {tmp_path}/absent \(data\.root\) does not "
                                        rf"exist or is not a folder\. {hint}"):
        check_data_root(tmp_path / "absent", ["a.csv"], dataset="fixture", how_to_get=hint)
    (tmp_path / "root" / "A").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"fixture data at {tmp_path}/root \(data\.root\) is incomplete: missing "
                                        r"A/meta\.csv, B\. Get it"):
        check_data_root(tmp_path / "root", ["A", "A/meta.csv", "B"], dataset="fixture", how_to_get=hint)
    assert check_data_root(tmp_path / "root", ["A"], dataset="fixture", how_to_get=hint) == tmp_path / "root"
    with pytest.raises(ConfigError, match=r"config key 'data\.root': is required"):
        check_data_root("", ["A"], dataset="fixture", how_to_get=hint)
    spec = DownloadSpec("fixture", (DownloadFile("http://127.0.0.1:9/x", "x"),))
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"download target .*/file exists and is not a folder"):
        download(spec, tmp_path / "file", progress=False)
    with pytest.raises(DataError, match=r"the parent folder of the download target .*/no/such does not exist"):
        download(spec, tmp_path / "no" / "such", progress=False)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match=r"must be a relative file path without '\.\.'"):
        DownloadFile("http://x", "../up.bin")
    with pytest.raises(ValueError, match="sha256 of a must be 64 lowercase hex digits"):
        DownloadFile("http://x", "a", sha256="ABC")
    with pytest.raises(ValueError, match=r"is marked unpack but is not a \.zip"):
        DownloadFile("http://x", "a.bin", unpack=True)
    with pytest.raises(ValueError, match="lists a path twice"):
        DownloadSpec("x", (DownloadFile("http://x", "a"), DownloadFile("http://y", "a")))


@dataclass
class _FixtureDownloadConfig:
    base: str = ""


def test_cli_download_command(server: tuple[str, ServerState], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    base, state = server
    data = payload(5000, seed=7)
    state.files["/cli.bin"] = data

    class Plugin:
        @staticmethod
        @hookimpl
        def cellssl_register_downloads(registry: object) -> None:
            registry.add("fixture", lambda config: spec_for(config.base, "cli.bin", data),  # type: ignore[attr-defined]
                         _FixtureDownloadConfig, "a fixture file")

    state_ = build_plugin_state(extra_plugins=[("fx", "fixture-dist", Plugin)], load_entry_points=False)
    with use_plugin_state(state_):
        assert main(["data", "download"]) == 0
        assert "fixture          a fixture file  (fixture-dist)" in capsys.readouterr().out
        assert main(["data", "download", "fixture", f"base={base}", "--to", str(tmp_path / "d"),
                     "--no-progress"]) == 0
        assert "fixture: 1 downloaded, 0 already complete, 0 unpacked" in capsys.readouterr().out
        assert (tmp_path / "d" / "sub" / "cli.bin").read_bytes() == data
        assert main(["data", "download", "fixture", f"base={base}"]) == 2
        assert "config key '--to': say where to put the data" in capsys.readouterr().err
        assert main(["data", "download", "nope", "--to", str(tmp_path)]) == 2
        assert "unknown download 'nope'" in capsys.readouterr().err
        assert main(["data", "download", "fixture", "colour=red", "--to", str(tmp_path)]) == 2
        assert "colour" in capsys.readouterr().err
