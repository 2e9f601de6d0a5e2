//! rustbpe: a byte-level BPE trainer.
//!
//! Training has two phases:
//! 1. counting — text arrives in buffers of documents; each buffer is split into chunks by the
//!    split pattern and the chunks are counted in parallel (rayon); counts accumulate across
//!    buffers, so memory grows with the number of *distinct* chunks, not with the text.
//! 2. merging — every distinct chunk becomes a word of byte ids with its count. Pair counts are
//!    computed once (in parallel) and then updated incrementally: a merge touches only the words
//!    that contain the pair (found through a per-pair list of word indices). The best pair comes
//!    from a max-heap with lazy refresh: a popped entry whose count is stale is pushed back with
//!    the current count. Ties go to the smallest pair (left id, then right id), so training is
//!    deterministic whatever the thread count.
//!
//! A merge whose byte string already exists as a token (two different pairs can spell the same
//! bytes) reuses that token's id instead of adding a duplicate, so the vocabulary maps bytes to
//! ids one-to-one, as tiktoken requires.
//!
//! The core is plain Rust (`cargo test` needs no Python); `py.rs` adapts it to Python.

mod split;
#[cfg(feature = "python")]
mod py;

pub use split::{Splitter, DEFAULT_PATTERN};

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub type Pair = (u32, u32);

/// Counts of distinct chunks, filled buffer by buffer.
pub struct ChunkCounter {
    splitter: Splitter,
    counts: FxHashMap<Box<str>, u64>,
}

impl ChunkCounter {
    pub fn new(pattern: &str) -> Result<Self, String> {
        Ok(ChunkCounter { splitter: Splitter::new(pattern)?, counts: FxHashMap::default() })
    }

    /// Split and count a buffer of documents, in parallel.
    pub fn add<S: AsRef<str> + Sync>(&mut self, docs: &[S]) -> Result<(), String> {
        let splitter = &self.splitter;
        let local: FxHashMap<&str, u64> = docs
            .par_iter()
            .try_fold(FxHashMap::default, |mut m: FxHashMap<&str, u64>, doc| {
                splitter.for_each(doc.as_ref(), |chunk| *m.entry(chunk).or_insert(0) += 1)?;
                Ok::<_, String>(m)
            })
            .try_reduce(FxHashMap::default, |mut a, b| {
                let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                for (k, v) in small {
                    *big.entry(k).or_insert(0) += v;
                }
                a = big;
                Ok(a)
            })?;
        for (chunk, n) in local {
            match self.counts.get_mut(chunk) {
                Some(c) => *c += n,
                None => {
                    self.counts.insert(chunk.into(), n);
                }
            }
        }
        Ok(())
    }

    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    pub fn into_counts(self) -> FxHashMap<Box<str>, u64> {
        self.counts
    }
}

/// Result of training: merges in order, as (left id, right id) -> new id.
pub struct Trained {
    pub merges: Vec<(Pair, u32)>,
    /// token id -> bytes, ids 0..255 are the bytes themselves
    pub vocab: Vec<Vec<u8>>,
}

/// Learn merges until the vocabulary has `vocab_size` tokens or no pair is left.
pub fn train_merges(counts: &FxHashMap<Box<str>, u64>, vocab_size: u32) -> Trained {
    assert!(vocab_size >= 256, "vocab_size must be at least 256");
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut id_of: FxHashMap<Vec<u8>, u32> = vocab.iter().enumerate().map(|(i, b)| (b.clone(), i as u32)).collect();
    let mut merges = Vec::new();

    // words: the distinct chunks of two or more bytes (a single byte has no pair to merge)
    let mut entries: Vec<(&[u8], i64)> =
        counts.iter().filter(|(k, _)| k.len() >= 2).map(|(k, &v)| (k.as_bytes(), v as i64)).collect();
    entries.sort_unstable(); // word order must not depend on hashing
    let mut words: Vec<Vec<u32>> = entries.iter().map(|(b, _)| b.iter().map(|&x| x as u32).collect()).collect();
    let freq: Vec<i64> = entries.iter().map(|&(_, v)| v).collect();
    drop(entries);

    // initial pair counts and where each pair occurs, in parallel over words
    let (mut pair_count, mut where_): (FxHashMap<Pair, i64>, FxHashMap<Pair, Vec<u32>>) = words
        .par_iter()
        .enumerate()
        .fold(
            || (FxHashMap::default(), FxHashMap::default()),
            |(mut pc, mut wh): (FxHashMap<Pair, i64>, FxHashMap<Pair, Vec<u32>>), (w, ids)| {
                for p in ids.windows(2) {
                    let pair = (p[0], p[1]);
                    *pc.entry(pair).or_insert(0) += freq[w];
                    let list = wh.entry(pair).or_insert_with(Vec::new);
                    if list.last() != Some(&(w as u32)) {
                        list.push(w as u32);
                    }
                }
                (pc, wh)
            },
        )
        .reduce(
            || (FxHashMap::default(), FxHashMap::default()),
            |(mut pa, mut wa), (pb, wb)| {
                for (k, v) in pb {
                    *pa.entry(k).or_insert(0) += v;
                }
                for (k, mut v) in wb {
                    wa.entry(k).or_insert_with(Vec::new).append(&mut v);
                }
                (pa, wa)
            },
        );

    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> =
        pair_count.iter().filter(|(_, &c)| c > 0).map(|(&p, &c)| (c, Reverse(p))).collect();

    // `seen[w] == stamp` marks words already rewritten in the current merge (lists may repeat)
    let mut seen: Vec<u32> = vec![u32::MAX; words.len()];
    let mut old_pairs: Vec<Pair> = Vec::new();
    let mut new_pairs: Vec<Pair> = Vec::new();
    let mut grown: FxHashSet<Pair> = FxHashSet::default();

    while (vocab.len() as u32) < vocab_size {
        let Some((count, Reverse(pair))) = heap.pop() else { break };
        let current = *pair_count.get(&pair).unwrap_or(&0);
        if count != current {
            // stale: counts only shrink between pushes, so re-queue with the true count
            if current > 0 {
                heap.push((current, Reverse(pair)));
            }
            continue;
        }
        let mut bytes = vocab[pair.0 as usize].clone();
        bytes.extend_from_slice(&vocab[pair.1 as usize]);
        let new_id = match id_of.get(&bytes) {
            Some(&id) => id,
            None => {
                let id = vocab.len() as u32;
                id_of.insert(bytes.clone(), id);
                vocab.push(bytes);
                id
            }
        };
        merges.push((pair, new_id));

        let stamp = merges.len() as u32;
        let occurrences = where_.remove(&pair).unwrap_or_default();
        grown.clear();
        for &w in &occurrences {
            let w = w as usize;
            if seen[w] == stamp {
                continue;
            }
            seen[w] = stamp;
            let ids = &mut words[w];
            if !ids.windows(2).any(|p| (p[0], p[1]) == pair) {
                continue; // stale entry: an earlier merge already consumed this pair here
            }
            old_pairs.clear();
            old_pairs.extend(ids.windows(2).map(|p| (p[0], p[1])));
            // rewrite the word, merging left to right without overlap
            let mut out = Vec::with_capacity(ids.len());
            let mut i = 0;
            while i < ids.len() {
                if i + 1 < ids.len() && (ids[i], ids[i + 1]) == pair {
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(ids[i]);
                    i += 1;
                }
            }
            *ids = out;
            new_pairs.clear();
            new_pairs.extend(ids.windows(2).map(|p| (p[0], p[1])));
            // apply only the difference between the two pair multisets
            old_pairs.sort_unstable();
            new_pairs.sort_unstable();
            let f = freq[w];
            let (mut a, mut b) = (0, 0);
            while a < old_pairs.len() || b < new_pairs.len() {
                if b == new_pairs.len() || (a < old_pairs.len() && old_pairs[a] < new_pairs[b]) {
                    *pair_count.get_mut(&old_pairs[a]).expect("counted pair") -= f;
                    a += 1;
                } else if a == old_pairs.len() || new_pairs[b] < old_pairs[a] {
                    let p = new_pairs[b];
                    *pair_count.entry(p).or_insert(0) += f;
                    let list = where_.entry(p).or_insert_with(Vec::new);
                    if list.last() != Some(&(w as u32)) {
                        list.push(w as u32);
                    }
                    grown.insert(p);
                    b += 1;
                } else {
                    a += 1;
                    b += 1;
                }
            }
        }
        pair_count.remove(&pair);
        // pairs whose count grew need a fresh heap entry (the lazy refresh only handles shrinking)
        let mut fresh: Vec<Pair> = grown.iter().copied().collect();
        fresh.sort_unstable();
        for p in fresh {
            let c = pair_count[&p];
            if c > 0 {
                heap.push((c, Reverse(p)));
            }
        }
    }
    Trained { merges, vocab }
}

/// Encoder over the trained vocabulary with tiktoken's algorithm: within a chunk, repeatedly
/// merge the adjacent pair whose concatenated bytes have the lowest token id.
pub struct Encoder {
    splitter: Splitter,
    rank: FxHashMap<Vec<u8>, u32>,
}

impl Encoder {
    pub fn new(pattern: &str, vocab: &[Vec<u8>]) -> Result<Self, String> {
        let rank = vocab.iter().enumerate().map(|(i, b)| (b.clone(), i as u32)).collect();
        Ok(Encoder { splitter: Splitter::new(pattern)?, rank })
    }

    fn encode_chunk(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&id) = self.rank.get(piece) {
            out.push(id);
            return;
        }
        // boundaries of the current parts: part k is piece[bounds[k]..bounds[k+1]]
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for k in 0..bounds.len().saturating_sub(2) {
                if let Some(&r) = self.rank.get(&piece[bounds[k]..bounds[k + 2]]) {
                    if best.map_or(true, |(br, _)| r < br) {
                        best = Some((r, k));
                    }
                }
            }
            match best {
                Some((_, k)) => {
                    bounds.remove(k + 1);
                }
                None => break,
            }
        }
        for k in 0..bounds.len() - 1 {
            out.push(self.rank[&piece[bounds[k]..bounds[k + 1]]]);
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        self.splitter.for_each(text, |chunk| self.encode_chunk(chunk.as_bytes(), &mut out))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(texts: &[&str], vocab_size: u32) -> Trained {
        let mut c = ChunkCounter::new(DEFAULT_PATTERN).unwrap();
        c.add(texts).unwrap();
        train_merges(&c.into_counts(), vocab_size)
    }

    #[test]
    fn first_merge_is_most_frequent_pair() {
        let t = train(&["aaab aaab aaab xy"], 257);
        // chunks: "aaab" x1, " aaab" x2, " xy" x1; "aa" occurs 2 times in each aaab -> 6
        assert_eq!(t.merges[0], ((b'a' as u32, b'a' as u32), 256));
        assert_eq!(t.vocab[256], b"aa");
    }

    #[test]
    fn deterministic_and_thread_independent() {
        let texts: Vec<String> =
            (0..500).map(|i| format!("doc {i}: the quick brown fox {} jumps over {}", i * 7919 % 1000, i * i)).collect();
        let a = train(&texts.iter().map(|s| s.as_str()).collect::<Vec<_>>(), 400);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let b = pool.install(|| train(&texts.iter().map(|s| s.as_str()).collect::<Vec<_>>(), 400));
        assert_eq!(a.merges, b.merges);
        assert!(a.merges.len() > 100);
    }

    #[test]
    fn stops_when_no_pairs_left() {
        let t = train(&["ab"], 1000);
        assert_eq!(t.merges.len(), 1);
    }

    #[test]
    fn vocab_is_unique_and_encode_roundtrips() {
        let texts = ["hello hello world, wonderful world of words", "abcabc xabc abcx bcab"];
        let t = train(&texts, 320);
        let set: FxHashSet<&Vec<u8>> = t.vocab.iter().collect();
        assert_eq!(set.len(), t.vocab.len());
        let enc = Encoder::new(DEFAULT_PATTERN, &t.vocab).unwrap();
        for text in texts.iter().chain(["unseen text ünïcödé 😀"].iter()) {
            let ids = enc.encode(text).unwrap();
            let bytes: Vec<u8> = ids.iter().flat_map(|&i| t.vocab[i as usize].clone()).collect();
            assert_eq!(bytes, text.as_bytes());
        }
    }
}
