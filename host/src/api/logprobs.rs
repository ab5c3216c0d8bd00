//! Log-probabilities in OpenAI's two shapes: chat's `logprobs.content` (one
//! entry per token, with its bytes and alternatives) and the legacy
//! completions' parallel lists (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`).

use serde_json::{Map, Value, json};

use super::request::Endpoint;
use crate::runtime::wit::{StepLogprobs, TokenLogprob};

/// Renders the log-probabilities of a response, or of each event of a
/// stream in turn: completions' `text_offset` counts on across events.
pub struct LogprobsJson {
    endpoint: Endpoint,
    /// The bytes of the tokens so far, for `text_offset` in characters (a
    /// token may hold part of one).
    bytes: Vec<u8>,
}

impl LogprobsJson {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            bytes: Vec::new(),
        }
    }

    pub fn render(&mut self, steps: &[StepLogprobs]) -> Value {
        match self.endpoint {
            Endpoint::ChatCompletions => {
                let content: Vec<Value> = steps
                    .iter()
                    .map(|s| {
                        let mut entry = chat_entry(&s.chosen);
                        entry["top_logprobs"] = s.top.iter().map(chat_entry).collect();
                        entry
                    })
                    .collect();
                json!({ "content": content, "refusal": null })
            }
            Endpoint::Completions => {
                let mut offsets = Vec::with_capacity(steps.len());
                for s in steps {
                    offsets.push(characters(&self.bytes));
                    self.bytes.extend_from_slice(&s.chosen.bytes);
                }
                // The sampled token and up to n alternatives, as OpenAI
                // lists them; of tokens with the same text, the most likely.
                let top: Vec<Value> = steps
                    .iter()
                    .map(|s| {
                        let mut alternatives = Map::new();
                        for t in s.top.iter().chain([&s.chosen]) {
                            alternatives.entry(text(t)).or_insert(number(t.logprob));
                        }
                        Value::Object(alternatives)
                    })
                    .collect();
                json!({
                    "tokens": steps.iter().map(|s| text(&s.chosen)).collect::<Vec<_>>(),
                    "token_logprobs": steps.iter().map(|s| number(s.chosen.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }
}

fn chat_entry(t: &TokenLogprob) -> Value {
    json!({ "token": text(t), "logprob": number(t.logprob), "bytes": t.bytes })
}

/// A token's text; a piece that holds part of a character shows U+FFFD.
fn text(t: &TokenLogprob) -> String {
    String::from_utf8_lossy(&t.bytes).into_owned()
}

/// An f32 as the shortest decimal that reads back as it (-0.1, not
/// -0.10000000149011612).
fn number(x: f32) -> Value {
    x.to_string().parse::<f64>().map_or(Value::Null, Value::from)
}

/// Characters in `bytes`, an incomplete last character not counted.
fn characters(bytes: &[u8]) -> usize {
    let whole = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    String::from_utf8_lossy(whole).chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(token: u32, text: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            token,
            bytes: text.as_bytes().to_vec(),
            logprob,
        }
    }

    fn steps() -> Vec<StepLogprobs> {
        vec![
            StepLogprobs {
                chosen: token(1, "Hé", -0.5),
                top: vec![token(1, "Hé", -0.5), token(2, " x", -1.0)],
            },
            StepLogprobs {
                chosen: token(3, "llo", -0.25),
                top: vec![token(3, "llo", -0.25)],
            },
        ]
    }

    #[test]
    fn chat_lists_each_token_with_its_bytes_and_alternatives() {
        let v = LogprobsJson::new(Endpoint::ChatCompletions).render(&steps());
        assert_eq!(v["content"][0]["token"], "Hé");
        assert_eq!(v["content"][0]["bytes"], json!([72, 195, 169]));
        assert_eq!(v["content"][0]["top_logprobs"][1]["token"], " x");
        assert_eq!(v["content"][1]["logprob"], json!(-0.25));
    }

    #[test]
    fn completions_offsets_count_on_across_a_stream() {
        let mut json = LogprobsJson::new(Endpoint::Completions);
        let first = json.render(&steps());
        assert_eq!(first["tokens"], json!(["Hé", "llo"]));
        assert_eq!(first["text_offset"], json!([0, 2]));
        assert_eq!(first["top_logprobs"][0][" x"], json!(-1.0));
        let next = json.render(&steps()[..1]);
        assert_eq!(next["text_offset"], json!([5]));
    }

    #[test]
    fn completions_list_the_sampled_token_and_the_likelier_of_equal_texts() {
        let split = StepLogprobs {
            chosen: TokenLogprob {
                token: 9,
                bytes: vec![0xe2, 0x82],
                logprob: -3.0,
            },
            top: vec![
                token(1, "a", -0.1),
                token(2, "\u{fffd}", -0.2),
                token(3, "\u{fffd}", -0.3),
            ],
        };
        let rest = StepLogprobs {
            chosen: TokenLogprob {
                token: 10,
                bytes: vec![0xac],
                logprob: -0.5,
            },
            top: Vec::new(),
        };
        let v = LogprobsJson::new(Endpoint::Completions).render(&[split, rest.clone(), rest]);
        assert_eq!(v["top_logprobs"][0], json!({ "a": -0.1, "\u{fffd}": -0.2 }));
        assert_eq!(
            v["top_logprobs"][1],
            json!({ "\u{fffd}": -0.5 }),
            "the sampled token, with no alternatives asked"
        );
        // "€" is split over the first two tokens: one character before the third.
        assert_eq!(v["text_offset"], json!([0, 0, 1]));
    }
}
