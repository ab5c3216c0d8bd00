//! The tokenizer against llama.cpp's goldens, natively, without the host: the
//! GGUF metadata is read here (a small reader of the header) and each model's
//! `tests/golden/<model>/tokenizer.json` compared id for id. Needs the model
//! files, so ignored by default:
//! `cargo test --release -p realm-guest golden -- --ignored --nocapture`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Tokenizer;
use crate::compute::{MetadataEntry, MetadataValue, Texts};
use crate::metadata::Metadata;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compares every golden string of `model`; returns (strings, failures).
fn check(model: &str) -> Option<(usize, Vec<String>)> {
    let gguf = root().join("models").join(format!("{model}.gguf"));
    if !gguf.exists() {
        eprintln!("skipped {model}: {} is absent", gguf.display());
        return None;
    }
    let mut meta = Metadata::new(read_gguf_metadata(&gguf)).expect("metadata");
    let started = Instant::now();
    let tokenizer = Tokenizer::from_metadata(&mut meta).expect("tokenizer");
    eprintln!(
        "{model}: {} tokens, tokenizer built in {:.1} ms",
        tokenizer.vocab_size(),
        started.elapsed().as_secs_f64() * 1e3
    );

    let golden = std::fs::read_to_string(root().join("tests/golden").join(model).join("tokenizer.json"))
        .expect("golden tokenizer.json");
    let Json::Array(cases) = Json::parse(&golden) else {
        panic!("golden is not an array")
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        let text = case.get("text").and_then(Json::as_str).expect("text");
        let ids = tokenizer.encode(text, true, true);
        let plain = tokenizer.encode(text, true, false);
        if ids != case.get("ids").map(Json::ids).expect("ids") {
            failures.push(format!("ids of {text:?}: {ids:?}"));
        }
        if plain != case.get("ids_no_parse_special").map(Json::ids).expect("ids") {
            failures.push(format!("ids_no_parse_special of {text:?}: {plain:?}"));
        }
        if let Some(decoded) = case.get("decoded").and_then(Json::as_str)
            && tokenizer.decode(&ids) != decoded
        {
            failures.push(format!("decoded of {text:?}: {:?}", tokenizer.decode(&ids)));
        }
    }
    eprintln!(
        "{model}: {} golden strings encoded twice in {:.2} ms, {} mismatches",
        cases.len(),
        started.elapsed().as_secs_f64() * 1e3,
        failures.len()
    );
    Some((cases.len(), failures))
}

fn assert_golden(model: &str) {
    if let Some((_, failures)) = check(model) {
        assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
    }
}

#[test]
#[ignore = "needs models/*.gguf"]
fn golden_gemma_spm() {
    assert_golden("gemma-3-270m-q4_k_m");
}

#[test]
#[ignore = "needs models/*.gguf"]
fn golden_smollm_bpe() {
    assert_golden("SmolLM2-135M-Instruct.Q4_1");
}

#[test]
#[ignore = "needs models/*.gguf"]
fn golden_qwen_bpe() {
    assert_golden("qwen2.5-coder-0.5b-instruct-q4_k_m");
}

#[test]
#[ignore = "needs models/*.gguf"]
fn golden_gemma_specials_and_long_text() {
    let gguf = root().join("models/gemma-3-270m-q4_k_m.gguf");
    if !gguf.exists() {
        return;
    }
    let tokenizer =
        Tokenizer::from_metadata(&mut Metadata::new(read_gguf_metadata(&gguf)).expect("metadata")).expect("tokenizer");
    // Control tokens split out only when parsing specials; `</s>` is one too
    // (llama.cpp makes it control as an end-of-generation text).
    let chat = "<start_of_turn>user\nhi</s><end_of_turn>\n";
    let ids = tokenizer.encode(chat, true, true);
    assert_eq!(&ids[..2], &[2, 105]);
    assert!(ids.contains(&106) && ids.contains(&212), "{ids:?}");
    let plain = tokenizer.encode(chat, true, false);
    assert!(!plain.contains(&105) && !plain.contains(&212), "{plain:?}");
    assert!(tokenizer.is_end_of_generation(1) && tokenizer.is_end_of_generation(106));
    assert_eq!(tokenizer.decode(&ids), "user\nhi\n");

    let long = "The quick brown fox jumps over the lazy dog. <b>bold</b> 1234\n".repeat(2000);
    let started = Instant::now();
    let ids = tokenizer.encode(&long, true, true);
    eprintln!(
        "gemma: {} bytes into {} tokens in {:.1} ms",
        long.len(),
        ids.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(tokenizer.decode(&ids), long);
}

// ---------------------------------------------------------------- GGUF header

/// The key/value metadata of a GGUF file, as the host hands it to the guest.
pub(crate) fn read_gguf_metadata(path: &Path) -> Vec<MetadataEntry> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path).expect("open gguf"));
    assert_eq!(&bytes(&mut r, 4), b"GGUF", "magic");
    let version = u32_of(&mut r);
    assert!(version >= 2, "gguf version {version}");
    let _tensors = u64_of(&mut r);
    let count = u64_of(&mut r);
    let mut entries = Vec::new();
    for _ in 0..count {
        let key = string(&mut r);
        let ty = u32_of(&mut r);
        if let Some(value) = value(&mut r, ty) {
            entries.push(MetadataEntry { key, value });
        }
    }
    entries
}

fn value(r: &mut impl Read, ty: u32) -> Option<MetadataValue> {
    Some(match ty {
        0 => MetadataValue::Uint(bytes(r, 1)[0].into()),
        1 => MetadataValue::Int((bytes(r, 1)[0] as i8).into()),
        2 => MetadataValue::Uint(u16::from_le_bytes(array(r)).into()),
        3 => MetadataValue::Int(i16::from_le_bytes(array(r)).into()),
        4 => MetadataValue::Uint(u32_of(r).into()),
        5 => MetadataValue::Int(i32::from_le_bytes(array(r)).into()),
        6 => MetadataValue::Float(f32::from_le_bytes(array(r)).into()),
        7 => MetadataValue::Boolean(bytes(r, 1)[0] != 0),
        8 => MetadataValue::Text(string(r)),
        10 => MetadataValue::Uint(u64_of(r)),
        11 => MetadataValue::Int(i64::from_le_bytes(array(r))),
        12 => MetadataValue::Float(f64::from_le_bytes(array(r))),
        9 => {
            let elem = u32_of(r);
            let n = u64_of(r) as usize;
            let items: Vec<Option<MetadataValue>> = (0..n).map(|_| value(r, elem)).collect();
            let items = items.into_iter().collect::<Option<Vec<_>>>()?;
            match elem {
                8 => MetadataValue::TextArray(Texts::from_strings(items.iter().map(|v| match v {
                    MetadataValue::Text(t) => t.as_str(),
                    _ => unreachable!(),
                }))),
                6 | 12 => MetadataValue::FloatArray(
                    items
                        .into_iter()
                        .map(|v| match v {
                            MetadataValue::Float(f) => f as f32,
                            _ => unreachable!(),
                        })
                        .collect(),
                ),
                7 => MetadataValue::BoolArray(
                    items
                        .into_iter()
                        .map(|v| matches!(v, MetadataValue::Boolean(true)))
                        .collect(),
                ),
                9 => return None,
                _ => MetadataValue::IntArray(
                    items
                        .into_iter()
                        .map(|v| match v {
                            MetadataValue::Uint(u) => u as i64,
                            MetadataValue::Int(i) => i,
                            _ => unreachable!(),
                        })
                        .collect(),
                ),
            }
        }
        other => panic!("gguf value type {other}"),
    })
}

fn bytes(r: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).expect("gguf truncated");
    buf
}

fn array<const N: usize>(r: &mut impl Read) -> [u8; N] {
    let mut buf = [0; N];
    r.read_exact(&mut buf).expect("gguf truncated");
    buf
}

fn u32_of(r: &mut impl Read) -> u32 {
    u32::from_le_bytes(array(r))
}

fn u64_of(r: &mut impl Read) -> u64 {
    u64::from_le_bytes(array(r))
}

fn string(r: &mut impl Read) -> String {
    let n = u64_of(r) as usize;
    String::from_utf8_lossy(&bytes(r, n)).into_owned()
}

// ---------------------------------------------------------------- JSON

/// Just enough JSON for the goldens (no serde_json in the guest).
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let mut p = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let value = p.value();
        p.space();
        assert_eq!(p.at, p.chars.len(), "trailing JSON");
        value
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Text(t) => Some(t),
            _ => None,
        }
    }

    fn ids(&self) -> Vec<u32> {
        match self {
            Json::Array(items) => items
                .iter()
                .map(|v| match v {
                    Json::Number(n) => *n as u32,
                    _ => panic!("not an id"),
                })
                .collect(),
            _ => panic!("not an id array"),
        }
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn next(&mut self) -> char {
        let c = self.chars[self.at];
        self.at += 1;
        c
    }

    fn value(&mut self) -> Json {
        self.space();
        match self.chars[self.at] {
            '[' => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.space();
                    if self.chars[self.at] == ']' {
                        self.at += 1;
                        return Json::Array(items);
                    }
                    items.push(self.value());
                    self.space();
                    if self.chars[self.at] == ',' {
                        self.at += 1;
                    }
                }
            }
            '{' => {
                self.at += 1;
                let mut fields = Vec::new();
                loop {
                    self.space();
                    match self.next() {
                        '}' => return Json::Object(fields),
                        ',' => continue,
                        '"' => {
                            let key = self.string();
                            self.space();
                            assert_eq!(self.next(), ':');
                            fields.push((key, self.value()));
                        }
                        c => panic!("JSON: unexpected {c:?}"),
                    }
                }
            }
            '"' => {
                self.at += 1;
                Json::Text(self.string())
            }
            't' | 'f' | 'n' => {
                let word: String = self.chars[self.at..].iter().take_while(|c| c.is_alphabetic()).collect();
                self.at += word.len();
                match word.as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    _ => Json::Null,
                }
            }
            _ => {
                let number: String = self.chars[self.at..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                    .collect();
                self.at += number.len();
                Json::Number(number.parse().expect("JSON number"))
            }
        }
    }

    /// The rest of a string whose opening quote is consumed.
    fn string(&mut self) -> String {
        let mut out = String::new();
        loop {
            match self.next() {
                '"' => return out,
                '\\' => match self.next() {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let mut code = self.hex4();
                        if (0xD800..0xDC00).contains(&code) {
                            assert_eq!((self.next(), self.next()), ('\\', 'u'), "JSON surrogate");
                            code = 0x10000 + ((code - 0xD800) << 10) + (self.hex4() - 0xDC00);
                        }
                        out.push(char::from_u32(code).expect("JSON code point"));
                    }
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> u32 {
        let digits: String = (0..4).map(|_| self.next()).collect();
        u32::from_str_radix(&digits, 16).expect("JSON \\u escape")
    }
}

#[test]
fn json_reader_reads_the_golden_shapes() {
    let json = Json::parse(r#"[{"text":"a\"\n\u00e9\ud83d\ude00","ids":[2,10],"x":null,"y":true}]"#);
    let Json::Array(items) = json else { panic!() };
    assert_eq!(items[0].get("text").and_then(Json::as_str), Some("a\"\né😀"));
    assert_eq!(items[0].get("ids").map(Json::ids), Some(vec![2, 10]));
    assert!(matches!(items[0].get("y"), Some(Json::Bool(true))));
    assert!(matches!(items[0].get("x"), Some(Json::Null)));
}
