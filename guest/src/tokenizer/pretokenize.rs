//! Pre-tokenizers: the regex splits that `tokenizer.ggml.pre` selects, applied in
//! sequence as llama.cpp does (each regex splits the pieces of the previous one,
//! and the text between matches stays a piece of its own).

use fancy_regex::Regex;

use crate::Error;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DIGIT: &str = r"\p{N}";

pub struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// The pre-tokenizer of a `tokenizer.ggml.pre` value.
    pub fn from_name(name: &str) -> Result<Self, Error> {
        let patterns: &[&str] = match name {
            "default" | "gpt2" | "gpt-2" => &[GPT2],
            "smollm" | "starcoder" | "refact" => &[DIGIT, GPT2],
            "llama3" | "llama-v3" | "llama-bpe" => &[LLAMA3],
            "qwen2" | "deepseek-r1-qwen" => &[QWEN2],
            other => {
                return Err(Error::UnsupportedModel(format!(
                    "pre-tokenizer `{other}` is not supported (supported: default, gpt2, smollm, llama3, qwen2)"
                )));
            }
        };
        let regexes = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| Error::Internal(format!("pre-tokenizer regex: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { regexes })
    }

    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for regex in &self.regexes {
            pieces = pieces
                .into_iter()
                .flat_map(|piece| split_keeping_gaps(regex, piece))
                .collect();
        }
        pieces
    }
}

fn split_keeping_gaps<'t>(regex: &Regex, text: &'t str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut last = 0;
    for m in regex.find_iter(text) {
        // A regex error (backtrack limit) leaves the rest of the text as one piece.
        let Ok(m) = m else { break };
        if m.start() > last {
            out.push(&text[last..m.start()]);
        }
        if m.end() > m.start() {
            out.push(m.as_str());
        }
        last = m.end();
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm_isolates_digits_and_keeps_leading_spaces() {
        let pre = PreTokenizer::from_name("smollm").expect("known");
        assert_eq!(
            pre.split("Hello world 123!"),
            vec!["Hello", " world", " ", "1", "2", "3", "!"]
        );
        assert_eq!(pre.split("a  b"), vec!["a", " ", " b"]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_a_typed_error() {
        assert!(matches!(
            PreTokenizer::from_name("nope"),
            Err(Error::UnsupportedModel(_))
        ));
    }
}
