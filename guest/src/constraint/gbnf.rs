//! llama.cpp's GBNF, as llama-server takes it in `grammar`, rewritten into
//! llguidance's Lark syntax, which has the same operators (`|`, `*`, `+`,
//! `?`, `{m,n}`, groups, `<[id]>` tokens) and differs in the spelling of
//! rules, literals and character classes. llguidance ships no GBNF reader in
//! Rust (llama.cpp converts with a Python script), so this is the one piece
//! of grammar handling written here; llguidance compiles the result.

use std::collections::HashMap;

#[derive(Debug, PartialEq)]
enum Item {
    Name(String),
    Defines,
    /// A literal, escapes decoded.
    Literal(String),
    /// A character class, as a Lark regex.
    Class(String),
    /// `.`, `|`, `(`, `)`, `*`, `+`, `?`, `{m,n}` and `<...>` tokens: the same in Lark.
    Same(String),
}

/// The Lark grammar of the GBNF `source`, whose start is its `root` rule.
pub fn to_lark(source: &str) -> Result<String, String> {
    let items = lex(source)?;
    let mut rules: Vec<(String, Vec<Item>)> = Vec::new();
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.next() {
        match (item, items.peek()) {
            (Item::Name(name), Some(Item::Defines)) => {
                items.next();
                rules.push((name, Vec::new()));
            }
            (Item::Defines, _) => return Err("`::=` without a rule name before it".into()),
            (item, _) => match rules.last_mut() {
                Some((_, body)) => body.push(item),
                None => return Err("the grammar must start with a rule (`name ::= ...`)".into()),
            },
        }
    }
    let mut names: HashMap<&str, String> = HashMap::new();
    for (i, (name, body)) in rules.iter().enumerate() {
        if body.is_empty() {
            return Err(format!("rule `{name}` is empty"));
        }
        let lark = format!("r{i}_{}", name.to_ascii_lowercase().replace('-', "_"));
        if names.insert(name, lark).is_some() {
            return Err(format!("rule `{name}` is defined twice"));
        }
    }
    let Some(root) = names.get("root") else {
        return Err("the grammar has no `root` rule".into());
    };
    let mut lark = format!("start: {root}\n");
    for (name, body) in &rules {
        lark.push_str(&names[name.as_str()]);
        lark.push(':');
        for item in body {
            lark.push(' ');
            match item {
                Item::Name(reference) => match names.get(reference.as_str()) {
                    Some(rule) => lark.push_str(rule),
                    None => return Err(format!("rule `{name}` refers to `{reference}`, which is not defined")),
                },
                Item::Literal(text) => lark.push_str(&serde_json::to_string(text).expect("a string serializes")),
                Item::Class(regex) => lark.push_str(regex),
                Item::Same(text) => lark.push_str(text),
                Item::Defines => unreachable!("taken above"),
            }
        }
        lark.push('\n');
    }
    Ok(lark)
}

fn lex(source: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            ':' if chars.next_if_eq(&':').is_some() && chars.next_if_eq(&'=').is_some() => items.push(Item::Defines),
            '"' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => return Err("a literal is not closed with `\"`".into()),
                        Some('"') => break,
                        Some('\\') => text.push(escape(&mut chars)?),
                        Some(c) => text.push(c),
                    }
                }
                items.push(Item::Literal(text));
            }
            '[' => items.push(Item::Class(class(&mut chars)?)),
            '.' => items.push(Item::Same("/(?s:.)/".into())),
            '|' | '(' | ')' | '*' | '+' | '?' => items.push(Item::Same(c.to_string())),
            '{' => {
                let mut repeat = String::from("{");
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c @ ('0'..='9' | ',' | ' ')) => repeat.push(c),
                        _ => return Err("a repetition must be `{m}`, `{m,}`, `{,n}` or `{m,n}`".into()),
                    }
                }
                repeat.push('}');
                items.push(Item::Same(repeat.replace(' ', "")));
            }
            '<' => {
                let mut token = String::from("<");
                loop {
                    match chars.next() {
                        Some('>') => break,
                        Some(c) if !c.is_whitespace() => token.push(c),
                        _ => return Err("a token must be `<[id]>` or `<text>`".into()),
                    }
                }
                token.push('>');
                items.push(Item::Same(token));
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let mut name = c.to_string();
                while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_') {
                    name.push(c);
                }
                items.push(Item::Name(name));
            }
            c => return Err(format!("unexpected `{c}`")),
        }
    }
    Ok(items)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// The character after a `\` in a literal or a class.
fn escape(chars: &mut Chars<'_>) -> Result<char, String> {
    let hex = |chars: &mut Chars<'_>, digits: usize| {
        let code: String = chars.take(digits).collect();
        u32::from_str_radix(&code, 16)
            .ok()
            .filter(|_| code.len() == digits)
            .and_then(char::from_u32)
            .ok_or_else(|| format!("`{code}` is not {digits} hex digits of a character"))
    };
    match chars.next() {
        Some('n') => Ok('\n'),
        Some('r') => Ok('\r'),
        Some('t') => Ok('\t'),
        Some('x') => hex(chars, 2),
        Some('u') => hex(chars, 4),
        Some('U') => hex(chars, 8),
        Some(c @ ('\\' | '"' | '[' | ']' | '-' | '^')) => Ok(c),
        Some(c) => Err(format!("unknown escape `\\{c}`")),
        None => Err("the grammar ends in `\\`".into()),
    }
}

/// A class after its `[`, as a Lark regex `/[...]/`.
fn class(chars: &mut Chars<'_>) -> Result<String, String> {
    let mut regex = String::from("/[");
    if chars.next_if_eq(&'^').is_some() {
        regex.push('^');
    }
    loop {
        let c = match chars.next() {
            None => return Err("a character class is not closed with `]`".into()),
            Some(']') => break,
            Some('-') if chars.peek() != Some(&']') && !regex.ends_with(['[', '^']) => {
                regex.push('-');
                continue;
            }
            Some('\\') => escape(chars)?,
            Some(c) => c,
        };
        if c.is_ascii_alphanumeric() {
            regex.push(c);
        } else if c.is_ascii_punctuation() {
            regex.push('\\');
            regex.push(c);
        } else if c.is_control() || c.is_whitespace() {
            regex.push_str(&format!("\\x{{{:X}}}", c as u32));
        } else {
            regex.push(c);
        }
    }
    regex.push_str("]/");
    Ok(regex)
}

#[cfg(test)]
mod tests {
    use super::to_lark;

    #[test]
    fn rules_literals_and_classes_become_lark() {
        let gbnf = r#"
            # a list of yes/no answers
            root   ::= answer ("," ws answer)* "\n"
            answer ::= "yes" | "no" | [0-9]{1,3}
            ws     ::= [ \t]*
        "#;
        assert_eq!(
            to_lark(gbnf).expect("valid"),
            "start: r0_root\n\
             r0_root: r1_answer ( \",\" r2_ws r1_answer ) * \"\\n\"\n\
             r1_answer: \"yes\" | \"no\" | /[0-9]/ {1,3}\n\
             r2_ws: /[\\x{20}\\x{9}]/ *\n"
        );
    }

    #[test]
    fn negated_classes_escapes_and_dashed_names() {
        let lark = to_lark(
            r#"root ::= my-string
my-string ::= "\"" [^"\\\x7F] * "\"""#,
        )
        .expect("valid");
        assert!(lark.contains(r#"r1_my_string: "\"" /[^\"\\\x{7F}]/ * "\"""#), "{lark}");
    }

    #[test]
    fn broken_grammars_say_what_is_wrong() {
        let error = |g| to_lark(g).expect_err("invalid");
        assert!(error("answer ::= \"x\"").contains("no `root`"));
        assert!(error("root ::= missing").contains("`missing`"));
        assert!(error("root ::= \"open").contains("not closed"));
        assert!(error("root ::= [a-z").contains("not closed"));
        assert!(error("root ::= \"a\"\nroot ::= \"b\"").contains("twice"));
        assert!(error("root ::= \"\\q\"").contains("unknown escape"));
    }
}
