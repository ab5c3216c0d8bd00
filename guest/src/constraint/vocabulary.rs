//! The model's vocabulary as llguidance sees it: a token trie over each
//! token's bytes, and the tokenizer for the text a grammar forces.

use std::sync::Arc;

use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use crate::tokenizer::{TokenType, Tokenizer};

struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The tokens of text that continues a reply (llguidance forces them
    /// where the grammar leaves one choice): no SentencePiece space prefix.
    /// Forced bytes may end inside a character (choices that share a first
    /// byte); that tail goes through the trie byte for byte, since the
    /// tokenizer would turn it into U+FFFD.
    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let valid = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut tokens = self.tokenizer.encode_continuation(valid);
        tokens.extend(self.trie.greedy_tokenize(&bytes[valid.len()..]));
        tokens
    }
}

/// The trie of `tokenizer`'s vocabulary. Control, unknown and unused tokens
/// are named by llguidance's special-token marker and their text (so a Lark
/// grammar can ask for `<|im_end|>`), never by bytes of generated text; every
/// end-of-generation token ends a grammar that is complete.
pub fn environment(tokenizer: Arc<Tokenizer>) -> TokEnv {
    let words: Vec<Vec<u8>> = (0..tokenizer.vocab_size())
        .map(|id| match tokenizer.token_type(id) {
            TokenType::Normal | TokenType::Byte | TokenType::UserDefined => tokenizer.piece(id, false),
            TokenType::Control | TokenType::Unknown | TokenType::Unused => {
                let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                word.extend_from_slice(tokenizer.token_text(id).unwrap_or_default().as_bytes());
                word
            }
        })
        .collect();
    let ends = &tokenizer.end_of_generation;
    let info = TokRxInfo {
        vocab_size: tokenizer.vocab_size(),
        tok_eos: tokenizer.eos.or(ends.first().copied()).unwrap_or(0),
        tok_bos: tokenizer.bos,
        tok_pad: None,
        tok_unk: None,
        tok_end_of_turn: None,
    };
    let mut trie = TokTrie::from(&info, &words);
    if !ends.is_empty() {
        trie = trie.with_eos_tokens(ends);
    }
    Arc::new(Vocabulary { trie, tokenizer })
}
