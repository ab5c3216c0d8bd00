//! Structured outputs: a request's `constraint` compiled by llguidance into a
//! matcher that, at every step, names the tokens that keep the generated text
//! a prefix of some valid output. The host's top-k or draw then chooses among
//! those tokens only (`graph.run`'s `allowed`).
//!
//! Per realm, the vocabulary's trie is built on the first constrained
//! request, and the last compiled constraints are kept, so repeating a schema
//! costs a clone of its parser.

mod gbnf;
mod vocabulary;

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::compute::StepOutputKind;
use crate::tokenizer::Tokenizer;
use crate::{Constraint, Error};

/// Compiled constraints kept per realm.
const CACHED: usize = 32;

pub struct Constraints {
    tokenizer: Arc<Tokenizer>,
    factory: OnceCell<ParserFactory>,
    /// Fresh matchers by constraint, most recently used last.
    compiled: RefCell<VecDeque<(Key, Matcher)>>,
}

/// A constraint as a cache key: its kind and its text.
#[derive(PartialEq, Eq)]
struct Key(&'static str, String);

impl Constraints {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            factory: OnceCell::new(),
            compiled: RefCell::new(VecDeque::new()),
        }
    }

    /// A guide for one generation under `constraint`; a constraint that does
    /// not compile is `invalid-constraint`, with llguidance's reason.
    pub fn guide(&self, constraint: &Constraint) -> Result<Guide, Error> {
        let key = key(constraint);
        let mut compiled = self.compiled.borrow_mut();
        if let Some(at) = compiled.iter().position(|(k, _)| *k == key) {
            let entry = compiled.remove(at).expect("found above");
            let matcher = entry.1.clone();
            compiled.push_back(entry);
            return Guide::new(matcher);
        }
        let grammar = grammar(constraint)?;
        let factory = self.factory.get_or_init(|| {
            let environment = vocabulary::environment(self.tokenizer.clone());
            let mut factory = ParserFactory::new_simple(&environment).expect("the general slices are valid regexes");
            factory.quiet();
            factory
        });
        let parser = factory
            .create_parser(grammar)
            .map_err(|e| Error::InvalidConstraint(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        // The first mask is where a grammar meets the parser's limits (a row
        // of too many items, say): that is the constraint's fault, so it is
        // refused here, and only a constraint that got that far is cached.
        let guide = Guide::new(matcher.clone())?;
        if compiled.len() == CACHED {
            compiled.pop_front();
        }
        compiled.push_back((key, matcher));
        Ok(guide)
    }
}

fn key(constraint: &Constraint) -> Key {
    match constraint {
        Constraint::JsonObject => Key("json-object", String::new()),
        Constraint::JsonSchema(schema) => Key("json-schema", schema.clone()),
        Constraint::Regex(regex) => Key("regex", regex.clone()),
        Constraint::Choice(choices) => Key("choice", serde_json::to_string(choices).unwrap_or_default()),
        Constraint::Gbnf(grammar) => Key("gbnf", grammar.clone()),
        Constraint::Lark(grammar) => Key("lark", grammar.clone()),
    }
}

/// The llguidance grammar of `constraint`.
fn grammar(constraint: &Constraint) -> Result<TopLevelGrammar, Error> {
    let invalid = |message: String| Error::InvalidConstraint(message);
    Ok(match constraint {
        Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
        Constraint::JsonSchema(text) => {
            let schema: Value =
                serde_json::from_str(text).map_err(|e| invalid(format!("the schema is not JSON: {e}")))?;
            TopLevelGrammar::from_json_schema(compact(schema))
        }
        Constraint::Regex(regex) => TopLevelGrammar::from_regex(regex),
        // One regex alternation: a lexeme, however many choices (as grammar
        // alternatives, thousands would exceed the parser's row limit).
        Constraint::Choice(choices) => {
            if choices.is_empty() {
                return Err(invalid("`choice` needs at least one string".into()));
            }
            let alternatives: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
            TopLevelGrammar::from_regex(&alternatives.join("|"))
        }
        Constraint::Gbnf(grammar) => TopLevelGrammar::from_lark(gbnf::to_lark(grammar).map_err(invalid)?),
        Constraint::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
    })
}

/// `text` as a regex that matches exactly it.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// JSON as `json.dumps` writes it, on one line: a schema says nothing of
/// whitespace, and free whitespace lets a small model pad forever. A schema's
/// own `x-guidance` options win.
pub(crate) fn compact(mut schema: Value) -> Value {
    if let Value::Object(fields) = &mut schema {
        fields.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// One generation's place in its constraint.
pub struct Guide {
    matcher: Matcher,
    /// The first step's mask, computed when the guide is made.
    first: Option<Vec<u32>>,
}

impl Guide {
    fn new(mut matcher: Matcher) -> Result<Self, Error> {
        let mask = matcher
            .compute_mask()
            .map_err(|e| Error::InvalidConstraint(e.to_string()))?;
        if mask.is_zero() {
            return Err(Error::InvalidConstraint("the constraint allows no output".into()));
        }
        let first = Some(mask.as_slice().to_vec());
        Ok(Self { matcher, first })
    }

    /// The tokens that may come next, as `graph.run`'s bitset.
    pub fn allowed(&mut self) -> Result<Vec<u32>, Error> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        let mask = self.matcher.compute_mask().map_err(|e| self.failed(e))?;
        if mask.is_zero() {
            return Err(Error::Internal("the constraint allows no token".into()));
        }
        Ok(mask.as_slice().to_vec())
    }

    /// Moves past `token`, which `allowed` allowed.
    pub fn accept(&mut self, token: u32) -> Result<(), Error> {
        self.matcher.consume_token(token).map_err(|e| self.failed(e))
    }

    /// The tokens the constraint forces next (the rest of a fixed key, say),
    /// at most `most`, taken as if they had been sampled. Each saves a
    /// decode step: they join the next step's tokens, as a prompt does.
    pub fn forced(&mut self, most: usize) -> Result<Vec<u32>, Error> {
        let mut tokens = self.matcher.compute_ff_tokens();
        tokens.truncate(most);
        self.matcher.consume_tokens(&tokens).map_err(|e| self.failed(e))?;
        Ok(tokens)
    }

    /// The text is complete and admits nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// A matcher fails where the grammar outgrows llguidance's limits (too
    /// many items in a parser row, too much lexer work for one mask): the
    /// constraint's fault, as a compile error would be.
    fn failed(&self, error: impl std::fmt::Display) -> Error {
        Error::InvalidConstraint(format!("the constraint failed during generation: {error}"))
    }
}

/// Whether `allowed` (a `Guide::allowed` bitset) allows `token`.
pub fn allows(allowed: &[u32], token: u32) -> bool {
    allowed
        .get(token as usize / 32)
        .is_some_and(|word| word >> (token % 32) & 1 == 1)
}

/// Whether the host can apply the mask to a step that outputs `kind`.
pub fn host_masks(kind: &StepOutputKind) -> bool {
    !matches!(kind, StepOutputKind::Logits)
}

/// Against the real vocabularies, natively: needs the model files, so
/// ignored by default (`cargo test --release -p realm-guest constraint -- --ignored --nocapture`).
#[cfg(test)]
mod model_tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::{Constraints, allows};
    use crate::Constraint;
    use crate::metadata::Metadata;
    use crate::tokenizer::Tokenizer;
    use crate::tokenizer::golden_tests::{read_gguf_metadata, root};

    /// A document valid against `scripts/data/bench-schema.json` with
    /// `minItems` 2 instead of 12.
    const DOCUMENT: &str = r#"{"people": [{"name": "Ada Lovelace", "city": "London", "age": 36, "email": "ada@example.org", "tags": ["math", "engines"]}, {"name": "Alan Turing", "city": "Wilmslow", "age": 41, "email": "alan@example.org", "tags": []}]}"#;

    /// Feeds the tokens of a valid document through the guide: each must be
    /// allowed where it comes, and a wrong one must not. Prints mask times.
    fn walk(model: &str) {
        let gguf = root().join("models").join(format!("{model}.gguf"));
        if !gguf.exists() {
            eprintln!("skipped {model}: {} is absent", gguf.display());
            return;
        }
        let mut meta = Metadata::new(read_gguf_metadata(&gguf)).expect("metadata");
        let tokenizer = Arc::new(Tokenizer::from_metadata(&mut meta).expect("tokenizer"));
        let constraints = Constraints::new(tokenizer.clone());
        let schema = std::fs::read_to_string(root().join("scripts/data/bench-schema.json"))
            .expect("schema")
            .replace(r#""minItems": 12"#, r#""minItems": 2"#);
        let started = Instant::now();
        let mut guide = constraints
            .guide(&Constraint::JsonSchema(schema.clone()))
            .expect("compiles");
        let first = started.elapsed();
        let started = Instant::now();
        constraints.guide(&Constraint::JsonSchema(schema)).expect("compiles");
        let again = started.elapsed();
        let tokens = tokenizer.encode(DOCUMENT, false, false);
        let mut times = Vec::new();
        for (i, &token) in tokens.iter().enumerate() {
            let started = Instant::now();
            let allowed = guide.allowed().expect("a mask");
            times.push(started.elapsed().as_secs_f64() * 1e6);
            let before = tokenizer.decode(&tokens[..i]);
            let piece = tokenizer.decode(&tokens[i..=i]);
            assert!(
                allows(&allowed, token),
                "{model}: `{piece}` after `{before}` is refused"
            );
            if i == 0 {
                let letter = tokenizer.encode("x", false, false)[0];
                assert!(!allows(&allowed, letter), "{model}: a document cannot start with `x`");
            }
            guide.accept(token).expect("accepted");
        }
        assert!(guide.is_finished(), "{model}: the document is complete");
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{model}: first guide {:.1} ms (trie and grammar), cached {:.3} ms; mask over {} tokens: p50 {:.0} µs, p99 {:.0} µs",
            first.as_secs_f64() * 1e3,
            again.as_secs_f64() * 1e3,
            times.len(),
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }

    #[test]
    #[ignore]
    fn constraint_masks_of_the_real_vocabularies() {
        for model in [
            "SmolLM2-135M-Instruct.Q4_1",
            "gemma-3-270m-q4_k_m",
            "qwen2.5-coder-0.5b-instruct-q4_k_m",
        ] {
            walk(model);
        }
    }
}
