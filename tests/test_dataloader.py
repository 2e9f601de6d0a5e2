"""The pretraining loader: deterministic, disjoint across ranks, exact resume."""

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.dataloader import tokenizing_distributed_data_loader
from nanochat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    files, doc_id = [], 0
    for shard in range(3):
        path = root / f"shard_{shard:05d}.parquet"
        writer = None
        for _ in range(4):
            texts = []
            for _ in range(5):
                words = (f"word{(doc_id * 7 + j) % 50}" for j in range(3 + doc_id % 11))
                texts.append(f"doc{doc_id}x " + " ".join(words))
                doc_id += 1
            table = pa.table({"text": texts})
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
        files.append(str(path))
    all_docs = [t for f in files for t in pq.read_table(f).column("text").to_pylist()]
    tok = Tokenizer.train_from_iterator(all_docs, 300)
    return files, tok


def _take(loader, n):
    out = []
    for _ in range(n):
        x, y, state = next(loader)
        out.append((x.clone(), y.clone(), state))
    return out


def test_shapes_targets_and_bos(corpus):
    files, tok = corpus
    x, y, state = next(tokenizing_distributed_data_loader(tok, 2, 16, "train", files=files, rank=0, world_size=1))
    assert x.shape == y.shape == (2, 16)
    assert (x.flatten()[1:] == y.flatten()[:-1]).all()
    assert x[0, 0].item() == tok.get_bos_token_id()
    assert set(state) == {"epoch", "shard", "row_group", "doc", "token"}


def test_deterministic(corpus):
    files, tok = corpus
    a = _take(tokenizing_distributed_data_loader(tok, 2, 8, "train", files=files, rank=0, world_size=1), 10)
    b = _take(tokenizing_distributed_data_loader(tok, 2, 8, "train", files=files, rank=0, world_size=1,
                                                 tokenizer_batch_size=3), 10)
    for (xa, ya, sa), (xb, yb, sb) in zip(a, b):
        assert (xa == xb).all() and (ya == yb).all() and sa == sb


def test_ranks_disjoint(corpus):
    files, tok = corpus
    seen = []
    for rank in range(2):
        loader = tokenizing_distributed_data_loader(tok, 1, 32, "train", files=files, rank=rank, world_size=2)
        ids = set()
        for x, _, state in _take(loader, 6):
            assert state["epoch"] > 0 or state["row_group"] % 2 == rank
            ids |= set(re.findall(r"doc(\d+)x", tok.decode(x.flatten().tolist())))
        seen.append(ids)
    assert seen[0] and seen[1] and not seen[0] & seen[1]


@pytest.mark.parametrize("k", [1, 4, 13])
def test_resume_gives_identical_next_batches(corpus, k):
    files, tok = corpus
    straight = _take(tokenizing_distributed_data_loader(tok, 2, 8, "train", files=files, rank=0, world_size=1), k + 8)
    state = straight[k - 1][2]
    resumed = _take(tokenizing_distributed_data_loader(tok, 2, 8, "train", files=files, rank=0, world_size=1,
                                                       resume_state=state), 8)
    for (xa, ya, _), (xb, yb, _) in zip(straight[k:], resumed):
        assert (xa == xb).all() and (ya == yb).all()


def test_loops_over_epochs(corpus, caplog):
    files, tok = corpus
    loader = tokenizing_distributed_data_loader(tok, 4, 64, "train", files=files[:1], rank=0, world_size=1)
    epochs = {state["epoch"] for _, _, state in _take(loader, 12)}
    assert max(epochs) >= 1


def test_a_rank_without_row_groups_is_an_error_not_a_hang(corpus):
    # 4 row groups per shard: rank 5 of 6 would wait forever for a document; it says why instead
    files, tok = corpus
    with pytest.raises(ValueError, match="rank 5 of 6 has no data: the shards have at most 4 row groups"):
        next(tokenizing_distributed_data_loader(tok, 2, 16, "train", files=files, rank=5, world_size=6))
