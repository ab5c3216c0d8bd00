//! Tokenizers: an immutable vocabulary built once per realm from GGUF metadata,
//! with special-token handling as llama.cpp does it.

mod bpe;
mod pretokenize;

use std::collections::HashMap;

use crate::Error;
use crate::compute::MetadataValue;
use crate::metadata::{Metadata, keys};

pub use pretokenize::PreTokenizer;

/// GGUF token types (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(value: i64) -> Self {
        match value {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

/// A model's vocabulary and the rules for turning text into ids and back.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    ids: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    bpe: bpe::Bpe,
    pre: PreTokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a generation: EOS, EOT and the vocabulary's end-of-turn markers.
    pub end_of_generation: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl Tokenizer {
    pub fn from_metadata(meta: &Metadata) -> Result<Self, Error> {
        let model = meta.text(keys::TOKENIZER_MODEL)?.unwrap_or("");
        if model != "gpt2" {
            return Err(Error::UnsupportedModel(format!(
                "tokenizer model `{model}` is not supported (supported: gpt2)"
            )));
        }
        let tokens = match meta.get(keys::TOKENS) {
            Some(MetadataValue::TextArray(tokens)) if !tokens.is_empty() => tokens.clone(),
            _ => return Err(unsupported(format!("gguf: missing `{}`", keys::TOKENS))),
        };
        let types = match meta.get(keys::TOKEN_TYPES) {
            Some(MetadataValue::IntArray(types)) if types.len() == tokens.len() => {
                types.iter().map(|&t| TokenType::from_gguf(t)).collect()
            }
            Some(_) => {
                return Err(unsupported("gguf: token types do not match the vocabulary".into()));
            }
            None => vec![TokenType::Normal; tokens.len()],
        };
        let merges = match meta.get(keys::MERGES) {
            Some(MetadataValue::TextArray(merges)) => merges.as_slice(),
            _ => return Err(unsupported(format!("gguf: missing `{}`", keys::MERGES))),
        };
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = bpe::Bpe::new(&ids, merges)?;
        let pre = PreTokenizer::from_name(meta.text(keys::TOKENIZER_PRE)?.unwrap_or("default"))?;

        let vocab_size = tokens.len() as u32;
        let token_id = |key: &str| -> Result<Option<u32>, Error> { Ok(meta.u32(key)?.filter(|&id| id < vocab_size)) };
        let bos = token_id(keys::BOS_ID)?;
        let eos = token_id(keys::EOS_ID)?;
        let eot = token_id(keys::EOT_ID)?;
        let mut end_of_generation: Vec<u32> = eos.into_iter().chain(eot).collect();
        for marker in END_OF_TURN_MARKERS {
            if let Some(&id) = ids.get(*marker) {
                end_of_generation.push(id);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let mut specials: Vec<u32> = (0..vocab_size)
            .filter(|&id| {
                matches!(
                    types[id as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tokens[id as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));

        Ok(Self {
            add_bos: meta.bool(keys::ADD_BOS)?.unwrap_or(false),
            add_eos: meta.bool(keys::ADD_EOS)?.unwrap_or(false),
            tokens,
            types,
            ids,
            specials,
            bpe,
            pre,
            bos,
            eos,
            end_of_generation,
        })
    }

    pub fn vocab_size(&self) -> u32 {
        self.tokens.len() as u32
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS as the metadata says;
    /// `parse_special` turns control-token text into its id (user-defined tokens
    /// are always matched, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        for fragment in self.partition_specials(text, parse_special) {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(text) => {
                    for word in self.pre.split(text) {
                        self.bpe.encode_word(word, &mut out);
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The bytes a token stands for. Control and unknown tokens render as nothing
    /// unless `special`; the result may be a partial UTF-8 sequence.
    pub fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TokenType::Normal => bpe::decode_bytes(text),
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Byte => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
            TokenType::Control | TokenType::Unknown if special => text.as_bytes().to_vec(),
            _ => Vec::new(),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.piece(id, false)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Splits `text` around special-token text, longest special token first.
    fn partition_specials<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let special = self.tokens[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Vocabulary entries that end an assistant turn in the chat formats realm knows.
const END_OF_TURN_MARKERS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"];

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

fn unsupported(message: String) -> Error {
    Error::UnsupportedModel(message)
}
