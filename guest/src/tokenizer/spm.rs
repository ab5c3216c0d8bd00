//! SentencePiece (the GGUF `llama` tokenizer model) as llama.cpp runs it:
//! spaces become `▁` (U+2581), the text starts as one symbol per character, and
//! the adjacent pair whose concatenation is the highest-scoring vocabulary entry
//! merges first, until no pair forms an entry. Symbols left outside the
//! vocabulary fall back to their bytes' `<0xXX>` tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vocab;

/// SentencePiece's stand-in for a space.
const SPACE: char = '\u{2581}';

pub struct Spm {
    /// Merge priority of each token (`tokenizer.ggml.scores`), higher first.
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte (or the byte's own one-character token).
    byte_tokens: [Option<u32>; 256],
    /// For a byte with no token of its own.
    unk: Option<u32>,
}

impl Spm {
    pub fn new(vocab: &Vocab, mut scores: Vec<f32>, unk: Option<u32>) -> Self {
        for score in &mut scores {
            // A total order that agrees with `<` on the scores that occur:
            // -0.0 equals 0.0, and a NaN never wins.
            *score = if score.is_nan() {
                f32::NEG_INFINITY
            } else {
                *score + 0.0
            };
        }
        let mut byte_tokens = [None; 256];
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = vocab.get(&format!("<0x{byte:02X}>")).or_else(|| {
                let single = [byte as u8];
                std::str::from_utf8(&single).ok().and_then(|text| vocab.get(text))
            });
        }
        Self {
            scores,
            byte_tokens,
            unk,
        }
    }

    /// Appends the ids of `text`, already escaped (see [`escape_whitespace`]).
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = (i + 1 < n).then_some(i + 1);
        }

        let mut queue = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize| {
            let Some(right) = symbols[left].next else { return };
            let start = symbols[left].start;
            let size = symbols[left].len + symbols[right].len;
            if let Some(id) = vocab.get(&text[start..start + size]) {
                queue.push(Bigram {
                    score: self.scores[id as usize],
                    left,
                    right,
                    size,
                });
            }
        };
        for left in 0..n {
            push(&mut queue, &symbols, left);
        }
        while let Some(Bigram { left, right, size, .. }) = queue.pop() {
            // Stale when either side has merged since: a merged-away symbol has
            // length 0, a grown one no longer adds up to the pair's size.
            let (l, r) = (&symbols[left], &symbols[right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != size {
                continue;
            }
            let after = r.next;
            symbols[left].len = size;
            symbols[left].next = after;
            symbols[right].len = 0;
            if let Some(after) = after {
                symbols[after].prev = Some(left);
            }
            if let Some(prev) = symbols[left].prev {
                push(&mut queue, &symbols, prev);
            }
            push(&mut queue, &symbols, left);
        }

        // Every merged symbol is a vocabulary entry; a single character may not be.
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            let symbol = &symbols[i];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match vocab.get(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize].or(self.unk))),
            }
            at = symbol.next;
        }
    }
}

/// A run of the text: one character at first, grown by merges.
struct Symbol {
    start: usize,
    /// In bytes; 0 once merged into the symbol on its left.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols into a vocabulary entry.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// The merged length in bytes, to recognise a stale candidate.
    size: usize,
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// Writes `text` into `out` with each space as `▁`, after a `▁` if `prefix`.
pub fn escape_whitespace(text: &str, prefix: bool, out: &mut String) {
    out.clear();
    out.reserve(text.len() + 3);
    if prefix {
        out.push(SPACE);
    }
    for c in text.chars() {
        out.push(if c == ' ' { SPACE } else { c });
    }
}

/// The bytes of a normal token: its text with each `▁` back to a space.
pub fn unescape_whitespace(text: &str) -> Vec<u8> {
    text.replace(SPACE, " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary with byte tokens for 'x' and 0xC3/0xA9 (é) only.
    fn tiny() -> (Vocab, Spm) {
        let entries: &[(&str, f32)] = &[
            ("<unk>", 0.0),
            ("<0x78>", 0.0),
            ("<0xC3>", 0.0),
            ("<0xA9>", 0.0),
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("▁", -1.0),
            ("ab", -5.0),
            ("bc", -2.0),
            ("abc", -3.0),
            ("▁a", -4.0),
            ("▁ab", -6.0),
        ];
        let texts: Vec<&str> = entries.iter().map(|e| e.0).collect();
        let vocab = Vocab::new(crate::compute::Texts::from_strings(&texts)).expect("vocabulary");
        let spm = Spm::new(&vocab, entries.iter().map(|e| e.1).collect(), Some(0));
        (vocab, spm)
    }

    fn encode(text: &str) -> Vec<u32> {
        let (vocab, spm) = tiny();
        let mut escaped = String::new();
        escape_whitespace(text, false, &mut escaped);
        let mut out = Vec::new();
        spm.encode(&vocab, &escaped, &mut out);
        out
    }

    #[test]
    fn the_highest_scoring_pair_merges_first() {
        // "bc" (-2) beats "ab" (-5); then "a"+"bc" forms "abc" (-3).
        assert_eq!(encode("abc"), vec![10]);
        // "ab" alone: nothing better competes.
        assert_eq!(encode("ab"), vec![8]);
        // "abab": both "ab" pairs merge, leftmost first; "abab" is no entry.
        assert_eq!(encode("abab"), vec![8, 8]);
    }

    #[test]
    fn equal_scores_merge_the_leftmost_pair() {
        let (vocab, spm) = {
            let texts = ["a", "aa"];
            let vocab = Vocab::new(crate::compute::Texts::from_strings(texts)).expect("vocabulary");
            let spm = Spm::new(&vocab, vec![0.0, -1.0], None);
            (vocab, spm)
        };
        let mut out = Vec::new();
        spm.encode(&vocab, "aaa", &mut out);
        assert_eq!(out, vec![1, 0], "(aa)a, not a(aa)");
    }

    #[test]
    fn spaces_are_escaped_and_merge_with_the_next_word() {
        // " ab": "▁a" (-4) beats "ab" (-5), then "▁a"+"b" forms "▁ab".
        assert_eq!(encode(" ab"), vec![12]);
        assert_eq!(encode("a b"), vec![4, 7, 5]);
        let mut escaped = String::new();
        escape_whitespace("a b", true, &mut escaped);
        assert_eq!(escaped, "▁a▁b");
        assert_eq!(unescape_whitespace("▁ab▁"), b" ab ".to_vec());
    }

    #[test]
    fn unknown_characters_fall_back_to_byte_tokens() {
        // 'x' has its byte token; 'é' is two bytes with tokens of their own.
        assert_eq!(encode("xé"), vec![1, 2, 3]);
        // 'y' has no byte token: <unk>.
        assert_eq!(encode("ya"), vec![0, 4]);
    }

    #[test]
    fn empty_text_has_no_tokens() {
        assert_eq!(encode(""), Vec::<u32>::new());
    }
}
