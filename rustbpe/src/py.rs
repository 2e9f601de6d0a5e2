//! Python binding: adapts the core to Python types, releases the GIL while Rust works and maps
//! errors to exceptions. Policy (special tokens, files, tiktoken export) lives in Python.

use crate::{train_merges, ChunkCounter, Encoder, DEFAULT_PATTERN};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

#[pyclass(module = "nanochat_rustbpe")]
pub struct Tokenizer {
    pattern: String,
    vocab: Vec<Vec<u8>>,
    merges: Vec<((u32, u32), u32)>,
    encoder: Option<Encoder>,
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new() -> Self {
        Tokenizer { pattern: DEFAULT_PATTERN.to_string(), vocab: Vec::new(), merges: Vec::new(), encoder: None }
    }

    /// Train on an iterator of str. Documents are pulled into buffers of `buffer_size`; each
    /// buffer is split and counted in parallel with the GIL released. `pattern` overrides the
    /// default GPT-4-style split regex.
    #[pyo3(signature = (iterator, vocab_size, buffer_size = 8192, pattern = None))]
    fn train_from_iterator(
        &mut self,
        py: Python<'_>,
        iterator: &Bound<'_, PyAny>,
        vocab_size: i64,
        buffer_size: usize,
        pattern: Option<String>,
    ) -> PyResult<()> {
        if vocab_size < 256 {
            return Err(PyValueError::new_err(format!(
                "vocab_size must be at least 256 (the byte alphabet), got {vocab_size}"
            )));
        }
        if vocab_size > u32::MAX as i64 {
            return Err(PyValueError::new_err(format!("vocab_size {vocab_size} is too large")));
        }
        if buffer_size == 0 {
            return Err(PyValueError::new_err("buffer_size must be positive"));
        }
        let pattern = pattern.unwrap_or_else(|| DEFAULT_PATTERN.to_string());
        let mut counter = ChunkCounter::new(&pattern).map_err(PyValueError::new_err)?;
        let iter = iterator.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "train_from_iterator needs an iterable of str, got {}",
                iterator.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        let mut buffer: Vec<String> = Vec::with_capacity(buffer_size);
        let mut index: usize = 0;
        let flush = |py: Python<'_>, counter: &mut ChunkCounter, buffer: &mut Vec<String>| -> PyResult<()> {
            let result = py.allow_threads(|| counter.add(buffer));
            buffer.clear();
            result.map_err(PyValueError::new_err)
        };
        for item in iter {
            let item = item?;
            let s = item.downcast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "train_from_iterator: item {index} is {}, expected str",
                    item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            // to_str fails on lone surrogates: an error, not silent loss
            let text = s.to_str().map_err(|e| {
                PyValueError::new_err(format!("train_from_iterator: item {index} is not valid UTF-8 text: {e}"))
            })?;
            buffer.push(text.to_owned());
            index += 1;
            if buffer.len() >= buffer_size {
                flush(py, &mut counter, &mut buffer)?;
            }
        }
        flush(py, &mut counter, &mut buffer)?;
        let counts = counter.into_counts();
        let trained = py.allow_threads(|| train_merges(&counts, vocab_size as u32));
        let encoder = Encoder::new(&pattern, &trained.vocab).map_err(PyRuntimeError::new_err)?;
        self.pattern = pattern;
        self.vocab = trained.vocab;
        self.merges = trained.merges;
        self.encoder = Some(encoder);
        Ok(())
    }

    /// The split regex used for training (and to be used for encoding).
    fn get_pattern(&self) -> String {
        self.pattern.clone()
    }

    /// [(token bytes, id)] for every token, ids 0..len-1, bytes first (tiktoken's format).
    fn get_mergeable_ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u32)> {
        self.vocab.iter().enumerate().map(|(i, b)| (PyBytes::new(py, b), i as u32)).collect()
    }

    /// [((left, right), new_id)] in training order.
    fn get_merges(&self) -> Vec<((u32, u32), u32)> {
        self.merges.clone()
    }

    /// Encode text with the trained vocabulary (tiktoken's algorithm; special tokens are not parsed).
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let encoder = self
            .encoder
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the tokenizer is not trained yet: call train_from_iterator first"))?;
        py.allow_threads(|| encoder.encode(text)).map_err(PyValueError::new_err)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
}

#[pymodule]
fn nanochat_rustbpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add("DEFAULT_PATTERN", DEFAULT_PATTERN)?;
    Ok(())
}
