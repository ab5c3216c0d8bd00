//! Byte-level BPE (the GGUF `gpt2` tokenizer model): GPT-2's byte-to-unicode
//! alphabet and rank-ordered merges.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{EMPTY_SLOT, Index, Vocab};
use crate::Error;
use crate::compute::Texts;

/// The merges by rank, each `[left, right, merged]` ids (all `EMPTY_SLOT`
/// where the vocabulary lacks one of them), indexed by the halves' ids.
pub struct Bpe {
    merges: Vec<[u32; 3]>,
    index: Index,
    /// The token of each byte's GPT-2 character, for the initial symbols.
    byte_tokens: [Option<u32>; 256],
}

impl Bpe {
    pub fn new(vocab: &Vocab, merges: &Texts) -> Result<Self, Error> {
        let mut index = Index::with_capacity(merges.len());
        let mut table = Vec::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, merge) in merges.iter().enumerate() {
            // A merge is "left right"; the left half may itself begin with a space
            // character only at index 0, so split at the first space after it.
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
                .ok_or_else(|| Error::UnsupportedModel(format!("gguf: malformed merge `{merge}`")))?;
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let (Some(l), Some(r), Some(merged)) = (vocab.get(left), vocab.get(right), vocab.get(&joined)) else {
                table.push([EMPTY_SLOT; 3]);
                continue;
            };
            // The lowest rank of a repeated pair wins.
            let slot = index.slot_of(pair_hash(l, r), |e| table[e as usize][..2] == [l, r]);
            if index.slots[slot] == EMPTY_SLOT {
                index.slots[slot] = rank as u32;
            }
            table.push([l, r, merged]);
        }
        let mut byte_tokens = [None; 256];
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            let mut buf = [0; 4];
            *slot = vocab.get(byte_char(byte as u8).encode_utf8(&mut buf));
        }
        Ok(Self {
            merges: table,
            index,
            byte_tokens,
        })
    }

    /// The rank and merged id of the pair `(left, right)`, if it merges.
    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let rank = self.index.get(pair_hash(left, right), |e| {
            self.merges[e as usize][..2] == [left, right]
        })?;
        Some((rank, self.merges[rank as usize][2]))
    }

    /// Appends the ids of one pre-tokenized word.
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let ids: Vec<u32> = word
            .as_bytes()
            .iter()
            .filter_map(|&b| self.byte_tokens[b as usize])
            .collect();
        let n = ids.len();
        let mut symbols: Vec<Symbol> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| Symbol {
                id,
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
                alive: true,
            })
            .collect();

        // Lowest rank first, leftmost first on ties; stale entries are skipped.
        let mut queue = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<_>, symbols: &[Symbol], left: usize| {
            if let Some(right) = symbols[left].next
                && let Some((rank, merged)) = self.merge(symbols[left].id, symbols[right].id)
            {
                queue.push(Reverse((
                    rank,
                    left,
                    right,
                    symbols[left].id,
                    symbols[right].id,
                    merged,
                )));
            }
        };
        for i in 0..n {
            push(&mut queue, &symbols, i);
        }
        while let Some(Reverse((_, left, right, left_id, right_id, merged))) = queue.pop() {
            let (l, r) = (&symbols[left], &symbols[right]);
            if !l.alive || !r.alive || l.next != Some(right) || l.id != left_id || r.id != right_id {
                continue;
            }
            let after = r.next;
            symbols[right].alive = false;
            symbols[left].id = merged;
            symbols[left].next = after;
            if let Some(after) = after {
                symbols[after].prev = Some(left);
            }
            if let Some(prev) = symbols[left].prev {
                push(&mut queue, &symbols, prev);
            }
            push(&mut queue, &symbols, left);
        }
        out.extend(symbols.iter().filter(|s| s.alive).map(|s| s.id));
    }
}

/// A multiply-xorshift of the pair, as the vocabulary's hash finishes.
fn pair_hash(left: u32, right: u32) -> u64 {
    let h = (u64::from(left) << 32 | u64::from(right)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1
/// bytes map to themselves, the rest to U+0100 and up, in byte order.
fn byte_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or('\u{FFFD}')
}

/// The bytes behind a token's text in GPT-2's alphabet. Characters outside the
/// alphabet (added tokens) are kept as their own UTF-8.
pub fn decode_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn char_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 256 {
        let b = code as u8;
        return (byte_char(b) == c).then_some(b);
    }
    let index = code.checked_sub(256)?;
    (0..=255u8).filter(|&b| byte_char(b) as u32 >= 256).nth(index as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(char_byte(byte_char(b)), Some(b), "byte {b}");
        }
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
    }

    #[test]
    fn merges_apply_lowest_rank_first() {
        let vocab = ["a", "b", "c", "ab", "bc", "abc"];
        let vocab = Vocab::new(Texts::from_strings(vocab)).expect("vocabulary");
        let merges = Texts::from_strings(["b c", "a b", "a bc"]);
        let bpe = Bpe::new(&vocab, &merges).expect("valid merges");
        let mut out = Vec::new();
        bpe.encode_word("abc", &mut out);
        assert_eq!(out, vec![5], "b+c (rank 0) then a+bc (rank 2)");
        out.clear();
        bpe.encode_word("ab", &mut out);
        assert_eq!(out, vec![3]);
    }
}
