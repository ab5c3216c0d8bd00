//! Typed access to a model's GGUF metadata, as the host hands it over.

use std::collections::HashMap;

use crate::Error;
use crate::compute::{MetadataEntry, MetadataValue, Texts};

/// GGUF metadata keys realm reads. Architecture-scoped keys are `{arch}.{suffix}`.
pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const KEY_LENGTH: &str = "attention.key_length";
    pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
    pub const ROPE_BASE: &str = "rope.freq_base";
    pub const ROPE_DIMS: &str = "rope.dimension_count";
    pub const VOCAB_SIZE: &str = "vocab_size";
    pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPES: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// The metadata of one model file, keyed by GGUF key.
pub struct Metadata {
    entries: HashMap<String, MetadataValue>,
    architecture: String,
}

impl Metadata {
    pub fn new(entries: Vec<MetadataEntry>) -> Result<Self, Error> {
        let entries: HashMap<_, _> = entries.into_iter().map(|e| (e.key, e.value)).collect();
        for (key, value) in &entries {
            if let MetadataValue::TextArray(texts) = value
                && !texts.is_well_formed()
            {
                return Err(Error::UnsupportedModel(format!(
                    "gguf: metadata `{key}` is a malformed string array"
                )));
            }
        }
        let architecture = match entries.get(keys::ARCHITECTURE) {
            Some(MetadataValue::Text(arch)) => arch.clone(),
            _ => {
                return Err(Error::UnsupportedModel(format!(
                    "gguf: missing `{}`",
                    keys::ARCHITECTURE
                )));
            }
        };
        Ok(Self { entries, architecture })
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entries.get(key)
    }

    /// Moves a value out (a vocabulary is kept, not copied).
    pub fn take(&mut self, key: &str) -> Option<MetadataValue> {
        self.entries.remove(key)
    }

    /// `{architecture}.{suffix}`, the key of an architecture hyper-parameter.
    fn arch_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.architecture)
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Uint(v)) => Ok(Some(*v)),
            Some(MetadataValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(_) => Err(bad_type(key, "an unsigned integer")),
        }
    }

    pub fn f32(&self, key: &str) -> Result<Option<f32>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Float(v)) => Ok(Some(*v as f32)),
            Some(MetadataValue::Uint(v)) => Ok(Some(*v as f32)),
            Some(MetadataValue::Int(v)) => Ok(Some(*v as f32)),
            Some(_) => Err(bad_type(key, "a number")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Boolean(v)) => Ok(Some(*v)),
            Some(_) => Err(bad_type(key, "a bool")),
        }
    }

    pub fn text(&self, key: &str) -> Result<Option<&str>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Text(v)) => Ok(Some(v)),
            Some(_) => Err(bad_type(key, "a string")),
        }
    }

    pub fn u32(&self, key: &str) -> Result<Option<u32>, Error> {
        self.u64(key)?
            .map(|v| u32::try_from(v).map_err(|_| bad_type(key, "a 32-bit integer")))
            .transpose()
    }

    /// A required architecture hyper-parameter, e.g. `llama.block_count`.
    pub fn arch_u32(&self, suffix: &str) -> Result<u32, Error> {
        let key = self.arch_key(suffix);
        self.u32(&key)?.ok_or_else(|| missing(&key))
    }

    pub fn arch_u32_or(&self, suffix: &str, default: u32) -> Result<u32, Error> {
        Ok(self.u32(&self.arch_key(suffix))?.unwrap_or(default))
    }

    pub fn arch_f32_or(&self, suffix: &str, default: f32) -> Result<f32, Error> {
        Ok(self.f32(&self.arch_key(suffix))?.unwrap_or(default))
    }

    pub fn arch_f32(&self, suffix: &str) -> Result<f32, Error> {
        let key = self.arch_key(suffix);
        self.f32(&key)?.ok_or_else(|| missing(&key))
    }
}

impl Texts {
    pub fn from_strings<S: AsRef<str>>(strings: impl IntoIterator<Item = S>) -> Self {
        let mut texts = Self {
            text: String::new(),
            ends: Vec::new(),
        };
        for s in strings {
            texts.text.push_str(s.as_ref());
            texts.ends.push(texts.text.len() as u32);
        }
        texts
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, which must be below `len()`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Whether every end is a char boundary of `text`, none before the last.
    fn is_well_formed(&self) -> bool {
        let mut start = 0;
        self.ends.iter().all(|&end| {
            let ok = end >= start && self.text.is_char_boundary(end as usize);
            start = end;
            ok
        })
    }
}

fn missing(key: &str) -> Error {
    Error::UnsupportedModel(format!("gguf: missing metadata `{key}`"))
}

fn bad_type(key: &str, expected: &str) -> Error {
    Error::UnsupportedModel(format!("gguf: metadata `{key}` is not {expected}"))
}
