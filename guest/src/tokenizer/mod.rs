//! Tokenizers: an immutable vocabulary built once per realm from GGUF metadata,
//! with special-token handling as llama.cpp does it. This file holds what every
//! tokenizer model shares (the vocabulary, token types, special-token splitting,
//! BOS/EOS and decoding); the models themselves are byte-level BPE (`gpt2`, in
//! [`bpe`]) and SentencePiece (`llama`, in [`spm`]).

mod bpe;
#[cfg(test)]
pub(crate) mod golden_tests;
mod pretokenize;
mod spm;

use std::cmp::Reverse;

use crate::Error;
use crate::compute::{MetadataValue, Texts};
use crate::metadata::{Metadata, keys};

pub use pretokenize::PreTokenizer;

/// Tokenizer keys that only this module reads.
const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

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

    /// Split out of the text before the model tokenizes it (llama.cpp's special
    /// tokens cache: control, user-defined and unknown tokens).
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }
}

/// The tokenizer model, from `tokenizer.ggml.model`.
enum Model {
    /// `gpt2`: byte-level BPE over the words of a regex pre-tokenizer.
    Bpe { bpe: bpe::Bpe, pre: PreTokenizer },
    /// `llama`: SentencePiece, merging by score with byte fallback.
    Spm(spm::Spm),
}

/// A model's vocabulary and the rules for turning text into ids and back.
pub struct Tokenizer {
    vocab: Vocab,
    types: Vec<TokenType>,
    specials: Specials,
    model: Model,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a generation: EOS, EOT, EOM and the vocabulary's end-of-turn markers.
    pub end_of_generation: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece only: a space goes before text that starts the input or
    /// follows a special token, and decoding drops it again.
    add_space_prefix: bool,
}

impl Tokenizer {
    /// Takes the vocabulary out of `meta`, which keeps everything else.
    pub fn from_metadata(meta: &mut Metadata) -> Result<Self, Error> {
        let model_name = meta.text(keys::TOKENIZER_MODEL)?.unwrap_or("");
        let spm = match model_name {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(unsupported(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
                )));
            }
        };
        let tokens = match meta.take(keys::TOKENS) {
            Some(MetadataValue::TextArray(tokens)) if !tokens.is_empty() => tokens,
            _ => return Err(unsupported(format!("gguf: missing `{}`", keys::TOKENS))),
        };
        // The types first: their s64 list is freed before the index is made,
        // which can then reuse its memory (the instance keeps its peak).
        let mut types = match meta.take(keys::TOKEN_TYPES) {
            Some(MetadataValue::IntArray(types)) if types.len() == tokens.len() => {
                types.iter().map(|&t| TokenType::from_gguf(t)).collect()
            }
            Some(_) => {
                return Err(unsupported("gguf: token types do not match the vocabulary".into()));
            }
            None => vec![TokenType::Normal; tokens.len()],
        };
        let vocab = Vocab::new(tokens)?;
        let vocab_size = vocab.len() as u32;
        apply_llama_cpp_overrides(meta, &vocab, &mut types)?;

        let scores = meta.take(keys::SCORES);
        let token_id = |key: &str| -> Result<Option<u32>, Error> { Ok(meta.u32(key)?.filter(|&id| id < vocab_size)) };
        // llama.cpp's defaults for SentencePiece vocabularies: <unk> 0, <s> 1, </s> 2.
        let default = |id: u32| (spm && id < vocab_size).then_some(id);
        let bos = token_id(keys::BOS_ID)?.or(default(1));
        let eos = token_id(keys::EOS_ID)?.or(default(2));
        let unk = token_id(UNK_ID)?.or(default(0));

        let model = if spm {
            let n = vocab.len();
            let scores = match scores {
                None => vec![0.0; n],
                Some(MetadataValue::FloatArray(mut scores)) if scores.len() >= n => {
                    scores.truncate(n);
                    scores
                }
                Some(MetadataValue::IntArray(scores)) if scores.len() >= n => {
                    scores[..n].iter().map(|&s| s as f32).collect()
                }
                Some(_) => {
                    return Err(unsupported(format!(
                        "gguf: `{}` does not match the vocabulary",
                        keys::SCORES
                    )));
                }
            };
            Model::Spm(spm::Spm::new(&vocab, scores, unk))
        } else {
            let merges = match meta.get(keys::MERGES) {
                Some(MetadataValue::TextArray(merges)) => merges,
                _ => return Err(unsupported(format!("gguf: missing `{}`", keys::MERGES))),
            };
            Model::Bpe {
                bpe: bpe::Bpe::new(&vocab, merges)?,
                pre: PreTokenizer::from_name(meta.text(keys::TOKENIZER_PRE)?.unwrap_or("default"))?,
            }
        };

        let eot = token_id(keys::EOT_ID)?;
        let eom = token_id(EOM_ID)?;
        let mut end_of_generation: Vec<u32> = eos.into_iter().chain(eot).chain(eom).collect();
        end_of_generation.extend(END_OF_TURN_MARKERS.iter().filter_map(|marker| vocab.get(marker)));
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let specials = Specials::new(&vocab, &types);
        Ok(Self {
            add_bos: meta.bool(keys::ADD_BOS)?.unwrap_or(spm),
            add_eos: meta.bool(keys::ADD_EOS)?.unwrap_or(false),
            add_space_prefix: spm && meta.bool(ADD_SPACE_PREFIX)?.unwrap_or(true),
            vocab,
            types,
            specials,
            model,
            bos,
            eos,
            end_of_generation,
        })
    }

    pub fn vocab_size(&self) -> u32 {
        self.vocab.len() as u32
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS as the metadata says;
    /// `parse_special` turns control-token text into its id (user-defined tokens
    /// are always matched, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_from(text, add_special, parse_special, true)
    }

    /// Token ids of `text` as it would go on after earlier text: no BOS, no
    /// special tokens, and no SentencePiece space prefix (which only the
    /// start of an input gets).
    pub fn encode_continuation(&self, text: &str) -> Vec<u32> {
        self.encode_from(text, false, false, false)
    }

    fn encode_from(&self, text: &str, add_special: bool, parse_special: bool, starts_input: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let fragments = self.partition_specials(text, parse_special);
        match &self.model {
            Model::Bpe { bpe, pre } => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(text) => {
                            for word in pre.split(text) {
                                bpe.encode_word(word, &mut out);
                            }
                        }
                    }
                }
            }
            Model::Spm(spm) => {
                // The input's start counts as following a special token.
                let mut after_special = starts_input;
                let mut escaped = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Fragment::Text(text) => {
                            spm::escape_whitespace(text, self.add_space_prefix && after_special, &mut escaped);
                            spm.encode(&self.vocab, &escaped, &mut out);
                            after_special = false;
                        }
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
        if id >= self.vocab_size() {
            return Vec::new();
        }
        let text = self.vocab.text(id);
        match self.types[id as usize] {
            TokenType::Normal => match self.model {
                Model::Bpe { .. } => bpe::decode_bytes(text),
                Model::Spm(_) => spm::unescape_whitespace(text),
            },
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Byte => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
            TokenType::Control | TokenType::Unknown if special => text.as_bytes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// The text of `ids`, special tokens not rendered. With a space prefix the
    /// first token's leading space is dropped, as llama.cpp's detokenizer does.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.piece(id, false);
            let piece = match piece.strip_prefix(b" ") {
                Some(rest) if i == 0 && self.add_space_prefix => rest,
                _ => &piece,
            };
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The GGUF type of token `id` (`Unused` outside the vocabulary).
    pub fn token_type(&self, id: u32) -> TokenType {
        self.types.get(id as usize).copied().unwrap_or(TokenType::Unused)
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        (id < self.vocab_size()).then(|| self.vocab.text(id))
    }

    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.vocab.get(text)
    }

    /// Splits `text` around special-token text, longest special token first.
    fn partition_specials<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        for rank in self.specials.occurring(&self.vocab, text) {
            let id = self.specials.ids[rank];
            if !parse_special && matches!(self.types[id as usize], TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let special = self.vocab.text(id);
            let mut next = Vec::with_capacity(fragments.len() + 2);
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

/// The token texts, stored back to back as the host hands them over (a
/// 262k-token vocabulary is two allocations, not one per token), with a hash
/// index from text to id. Like llama.cpp's map, a repeated text resolves to
/// its last id.
struct Vocab {
    texts: Texts,
    index: Index,
}

impl Vocab {
    fn new(texts: Texts) -> Result<Self, Error> {
        if texts.len() >= EMPTY_SLOT as usize {
            return Err(unsupported("gguf: the vocabulary is too large".into()));
        }
        let mut vocab = Self {
            index: Index::with_capacity(texts.len()),
            texts,
        };
        for id in 0..vocab.len() as u32 {
            let text = vocab.text(id);
            let slot = vocab.index.slot_of(hash(text.as_bytes()), |id| vocab.text(id) == text);
            vocab.index.slots[slot] = id;
        }
        Ok(vocab)
    }

    fn len(&self) -> usize {
        self.texts.len()
    }

    /// The text of token `id`, which must be in the vocabulary.
    fn text(&self, id: u32) -> &str {
        self.texts.get(id as usize)
    }

    fn get(&self, text: &str) -> Option<u32> {
        self.index.get(hash(text.as_bytes()), |id| self.text(id) == text)
    }
}

const EMPTY_SLOT: u32 = u32::MAX;

/// Open addressing with linear probing over u32 entries (ids or ranks) whose
/// keys live elsewhere: 4 bytes a slot, at most three quarters full. A
/// `HashMap` keyed by text or pair would copy the keys and take 4 to 5 times
/// the memory, which every tenant's instance pays for its whole life.
struct Index {
    slots: Vec<u32>,
}

impl Index {
    fn with_capacity(entries: usize) -> Self {
        Self {
            slots: vec![EMPTY_SLOT; (entries * 4 / 3 + 1).next_power_of_two()],
        }
    }

    fn get(&self, hash: u64, is_key: impl Fn(u32) -> bool) -> Option<u32> {
        let entry = self.slots[self.slot_of(hash, is_key)];
        (entry != EMPTY_SLOT).then_some(entry)
    }

    /// The slot whose entry `is_key`, or the empty slot where it would go.
    fn slot_of(&self, hash: u64, is_key: impl Fn(u32) -> bool) -> usize {
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            let entry = self.slots[slot];
            if entry == EMPTY_SLOT || is_key(entry) {
                return slot;
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// FNV-1a, finished with a multiply-xorshift so that its low bits (the slot) mix well.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

/// Control, user-defined and unknown tokens, longest text first (the order
/// llama.cpp splits them out in), indexed by their first two bytes so that a
/// text is scanned once for the few that occur in it, not once per special
/// token (gemma has 6k of them).
struct Specials {
    ids: Vec<u32>,
    /// Ranks (positions in `ids`) of the one-byte specials, by byte.
    one_byte: Vec<Vec<usize>>,
    /// By two-byte prefix `(b0 << 8) | b1`: 1 + the index of its bucket, or 0.
    by_prefix: Vec<u32>,
    /// Ranks of the specials that start with a prefix.
    buckets: Vec<Vec<usize>>,
}

impl Specials {
    fn new(vocab: &Vocab, types: &[TokenType]) -> Self {
        let mut ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| types[id as usize].is_special() && !vocab.text(id).is_empty())
            .collect();
        ids.sort_by_key(|&id| Reverse(vocab.text(id).len()));
        let mut one_byte = vec![Vec::new(); 256];
        let mut by_prefix = vec![0u32; 1 << 16];
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        for (rank, &id) in ids.iter().enumerate() {
            match *vocab.text(id).as_bytes() {
                [b] => one_byte[b as usize].push(rank),
                [b0, b1, ..] => {
                    let prefix = usize::from(b0) << 8 | usize::from(b1);
                    if by_prefix[prefix] == 0 {
                        buckets.push(Vec::new());
                        by_prefix[prefix] = buckets.len() as u32;
                    }
                    buckets[by_prefix[prefix] as usize - 1].push(rank);
                }
                [] => {}
            }
        }
        Self {
            ids,
            one_byte,
            by_prefix,
            buckets,
        }
    }

    /// Ranks of the specials whose text occurs in `text`, in rank order. Only
    /// they can split it: every fragment is a substring of `text`.
    fn occurring(&self, vocab: &Vocab, text: &str) -> Vec<usize> {
        let bytes = text.as_bytes();
        let mut found = vec![false; self.ids.len()];
        for (i, &b0) in bytes.iter().enumerate() {
            for &rank in &self.one_byte[b0 as usize] {
                found[rank] = true;
            }
            let Some(&b1) = bytes.get(i + 1) else { break };
            let bucket = self.by_prefix[usize::from(b0) << 8 | usize::from(b1)];
            if bucket == 0 {
                continue;
            }
            for &rank in &self.buckets[bucket as usize - 1] {
                if !found[rank] && bytes[i..].starts_with(vocab.text(self.ids[rank]).as_bytes()) {
                    found[rank] = true;
                }
            }
        }
        (0..found.len()).filter(|&rank| found[rank]).collect()
    }
}

/// Vocabulary entries that end a generation, as llama.cpp recognises them by
/// text: end-of-turn markers of the chat formats, and code models' file and
/// repository separators.
const END_OF_TURN_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end|>",
    "</s>",
    "<reponame>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<file_sep>",
];

/// Texts that llama.cpp takes for end-of-generation tokens and so makes control
/// tokens whatever their GGUF type (e.g. gemma's user-defined `</s>`): they are
/// split out only when parsing specials, and render as nothing.
const CONTROL_BY_TEXT: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens llama.cpp finds by text, and makes control tokens,
/// when the GGUF does not name them (keys `tokenizer.ggml.fim_*_token_id`).
const FIM_BY_TEXT: &[(&[&str], &[&str])] = &[
    (
        &["tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"],
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        &["tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"],
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        &["tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"],
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        &["tokenizer.ggml.fim_pad_token_id"],
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        &["tokenizer.ggml.fim_rep_token_id"],
        &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    ),
    (&["tokenizer.ggml.fim_sep_token_id"], &["<|file_sep|>"]),
];

/// The token attributes llama.cpp derives from token text rather than from the
/// GGUF types (its `load` after reading the vocabulary). It sets no lstrip or
/// rstrip for the models realm runs (only for phi-3, jina and modern-bert).
fn apply_llama_cpp_overrides(meta: &Metadata, vocab: &Vocab, types: &mut [TokenType]) -> Result<(), Error> {
    let mut make_control = |text: &str| {
        if let Some(id) = vocab.get(text) {
            types[id as usize] = TokenType::Control;
        }
    };
    for (keys, texts) in FIM_BY_TEXT {
        let mut named = false;
        for key in *keys {
            named |= meta.u32(key)?.is_some_and(|id| (id as usize) < vocab.len());
        }
        if !named {
            texts.iter().for_each(|text| make_control(text));
        }
    }
    CONTROL_BY_TEXT.iter().for_each(|text| make_control(text));
    let has = |text: &str| vocab.get(text).is_some();
    // gpt-oss (harmony) and solar-open: `<|end|>` is an ordinary user-defined token.
    if let Some(end) = vocab.get("<|end|>")
        && ((has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")))
    {
        types[end as usize] = TokenType::UserDefined;
    }
    // gemma4: `</s>` is a normal token.
    if has("<|tool_response>")
        && let Some(id) = vocab.get("</s>")
    {
        types[id as usize] = TokenType::Normal;
    }
    // gpt-oss: channel markers always render.
    for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(id) = vocab.get(text) {
            types[id as usize] = TokenType::UserDefined;
        }
    }
    Ok(())
}

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

fn unsupported(message: String) -> Error {
    Error::UnsupportedModel(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::MetadataEntry;

    /// A SentencePiece vocabulary: (text, GGUF type, score).
    const SPM_VOCAB: &[(&str, i64, f32)] = &[
        ("<unk>", 2, 0.0),
        ("<s>", 3, 0.0),
        ("</s>", 3, 0.0),
        ("<0x41>", 6, 0.0),
        ("▁", 1, -1.0),
        ("h", 1, -1.0),
        ("i", 1, -1.0),
        ("▁h", 1, -2.0),
        ("▁hi", 1, -3.0),
        ("hi", 1, -4.0),
        ("<ctl>", 3, 0.0),
        ("<user>", 4, 0.0),
        // Normal in the GGUF; llama.cpp makes it control by its text.
        ("<end_of_turn>", 1, 0.0),
    ];

    fn spm(extra: Vec<(&str, MetadataValue)>) -> Tokenizer {
        let mut entries = vec![
            ("general.architecture", MetadataValue::Text("llama".into())),
            (keys::TOKENIZER_MODEL, MetadataValue::Text("llama".into())),
            (
                keys::TOKENS,
                MetadataValue::TextArray(Texts::from_strings(SPM_VOCAB.iter().map(|t| t.0))),
            ),
            (
                keys::TOKEN_TYPES,
                MetadataValue::IntArray(SPM_VOCAB.iter().map(|t| t.1).collect()),
            ),
            (
                keys::SCORES,
                MetadataValue::FloatArray(SPM_VOCAB.iter().map(|t| t.2).collect()),
            ),
        ];
        entries.extend(extra);
        let entries = entries
            .into_iter()
            .map(|(key, value)| MetadataEntry { key: key.into(), value })
            .collect();
        Tokenizer::from_metadata(&mut Metadata::new(entries).expect("metadata")).expect("tokenizer")
    }

    #[test]
    fn spm_defaults_add_bos_and_a_space_prefix() {
        let tok = spm(Vec::new());
        assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)), "llama.cpp's SPM defaults");
        // "hi" -> "▁hi": "▁h" (-2) merges before "hi" (-4), then "▁hi".
        assert_eq!(tok.encode("hi", true, true), vec![1, 8]);
        assert_eq!(tok.encode("hi", false, true), vec![8]);
        assert_eq!(tok.encode("", true, true), vec![1]);
        assert_eq!(tok.encode("", false, true), Vec::<u32>::new());
        // The prefix goes again after a special token, not after text.
        assert_eq!(tok.encode("hi<ctl>hi", false, true), vec![8, 10, 8]);
        assert_eq!(tok.encode("hi<user>hi", false, false), vec![8, 11, 8]);
        // Byte fallback: 'A' is no entry, its byte token is.
        assert_eq!(tok.encode("A", false, true), vec![4, 3]);
    }

    #[test]
    fn spm_decoding_drops_the_prefix_space_of_the_first_token_only() {
        let tok = spm(Vec::new());
        assert_eq!(tok.decode(&[8, 8]), "hi hi");
        // After BOS the space stays, as in llama.cpp (BOS takes the strip, rendering nothing).
        assert_eq!(tok.decode(&[1, 8]), " hi");
        assert_eq!(tok.decode(&[8, 10, 3, 11]), "hiA<user>");
        assert_eq!(tok.piece(8, false), b" hi".to_vec());
        assert_eq!(tok.piece(10, true), b"<ctl>".to_vec());
    }

    #[test]
    fn spm_metadata_turns_off_bos_and_the_space_prefix() {
        let tok = spm(vec![
            (ADD_SPACE_PREFIX, MetadataValue::Boolean(false)),
            (keys::ADD_BOS, MetadataValue::Boolean(false)),
            (keys::BOS_ID, MetadataValue::Uint(2)),
        ]);
        assert_eq!(tok.bos, Some(2));
        assert_eq!(tok.encode("hi", true, true), vec![9]);
        assert_eq!(tok.encode(" hi", true, true), vec![8]);
        assert_eq!(tok.decode(&[8]), " hi");
    }

    #[test]
    fn end_of_generation_texts_become_control_tokens() {
        let tok = spm(vec![(keys::EOT_ID, MetadataValue::Uint(10))]);
        assert_eq!(tok.encode("<end_of_turn>", false, true), vec![12]);
        assert!(!tok.encode("<end_of_turn>", false, false).contains(&12));
        assert_eq!(tok.piece(12, false), Vec::<u8>::new());
        assert_eq!(tok.end_of_generation, vec![2, 10, 12], "EOS, EOT and <end_of_turn>");
    }

    #[test]
    fn vocab_index_finds_every_token_and_the_last_of_a_repeated_text() {
        let texts: Vec<String> = (0..1000)
            .map(|i| format!("t{i}"))
            .chain(["t5".into(), String::new()])
            .collect();
        let vocab = Vocab::new(Texts::from_strings(&texts)).expect("vocabulary");
        assert_eq!(vocab.len(), 1002);
        for id in (0..1000).filter(|&id| id != 5) {
            assert_eq!(vocab.get(&format!("t{id}")), Some(id), "t{id}");
        }
        assert_eq!(vocab.get("t5"), Some(1000));
        assert_eq!(vocab.text(1000), "t5");
        assert_eq!(vocab.get(""), Some(1001));
        assert_eq!(vocab.get("t1000"), None);
    }

    #[test]
    fn specials_found_in_a_text_are_those_that_occur() {
        let texts = ["a", "<x>", "<xy>", "\n", "b"];
        let vocab = Vocab::new(Texts::from_strings(texts)).expect("vocabulary");
        let types = [
            TokenType::Normal,
            TokenType::Control,
            TokenType::Control,
            TokenType::UserDefined,
            TokenType::Normal,
        ];
        let specials = Specials::new(&vocab, &types);
        assert_eq!(specials.ids, vec![2, 1, 3], "longest first");
        assert_eq!(specials.occurring(&vocab, "a<x>\nb"), vec![1, 2]);
        assert_eq!(specials.occurring(&vocab, "<xy><x"), vec![0]);
        assert_eq!(specials.occurring(&vocab, "ab"), Vec::<usize>::new());
    }
}
