//! Lexer of the instruction language: source text to tokens with byte spans, plus comments.
//! Never panics; unknown characters and malformed numbers become diagnostics and are skipped.

use super::diagnostic::{Code, Diagnostic, Span};

/// A token kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// Identifier, keyword or unit atom (`P1`, `set_rate`, `recipe`, `uL`, `°C`, `%`).
    Word(String),
    /// `$name`.
    Var(String),
    /// Number literal.
    Number(f64),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `,`
    Comma,
    /// `;`
    Semi,
    /// `:`
    Colon,
    /// `=`
    Eq,
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*` or `×`
    Star,
    /// `/`
    Slash,
    /// `.` or `·`
    Dot,
    /// `..`
    DotDot,
    /// `->` or `→`
    Arrow,
    /// `|`
    Pipe,
    /// End of input.
    Eof,
}

impl Tok {
    /// How the token reads in a message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Var(v) => format!("`${v}`"),
            Tok::Number(n) => format!("number `{n}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Semi => "`;`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Plus => "`+`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Star => "`*`".into(),
            Tok::Slash => "`/`".into(),
            Tok::Dot => "`.`".into(),
            Tok::DotDot => "`..`".into(),
            Tok::Arrow => "`->`".into(),
            Tok::Pipe => "`|`".into(),
            Tok::Eof => "the end of the text".into(),
        }
    }
}

/// A token with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// Kind.
    pub tok: Tok,
    /// Byte span.
    pub span: Span,
}

/// A `# ...` comment (text without the `#`, right-trimmed).
#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    /// Text after `#`.
    pub text: String,
    /// Byte span including `#`.
    pub span: Span,
}

/// Result of lexing.
#[derive(Debug, Default)]
pub struct Lexed {
    /// Tokens, ending with [`Tok::Eof`].
    pub tokens: Vec<Token>,
    /// Comments in source order.
    pub comments: Vec<Comment>,
    /// Lexical errors.
    pub diagnostics: Vec<Diagnostic>,
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '°' || c == '%' || c == 'µ'
}

fn is_word_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '°' || c == '%' || c == 'µ'
}

/// Split source text into tokens.
pub fn lex(src: &str) -> Lexed {
    let mut out = Lexed::default();
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let n = chars.len();
    let end_of = |k: usize| if k < n { chars[k].0 } else { src.len() };
    let mut i = 0;
    while i < n {
        let (start, c) = chars[i];
        let next = chars.get(i + 1).map(|x| x.1);
        let single = |tok: Tok, len: usize| Token {
            tok,
            span: Span::new(start, end_of(i + len)),
        };
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                let mut j = i + 1;
                while j < n && chars[j].1 != '\n' {
                    j += 1;
                }
                let text = src[end_of(i + 1)..end_of(j)].trim_end().to_string();
                out.comments.push(Comment {
                    text,
                    span: Span::new(start, end_of(j)),
                });
                i = j;
            }
            '$' => {
                let mut j = i + 1;
                if j < n && is_word_start(chars[j].1) {
                    while j < n && is_word_continue(chars[j].1) {
                        j += 1;
                    }
                    let name = src[end_of(i + 1)..end_of(j)].to_string();
                    out.tokens.push(Token {
                        tok: Tok::Var(name),
                        span: Span::new(start, end_of(j)),
                    });
                } else {
                    out.diagnostics.push(
                        Diagnostic::error(
                            Code::InvalidCharacter,
                            Span::new(start, end_of(i + 1)),
                            "`$` must be followed by a variable name",
                        )
                        .with_hint("variables look like `$T` or `$C`"),
                    );
                }
                i = j;
            }
            c if c.is_ascii_digit() => {
                let mut j = i;
                while j < n && chars[j].1.is_ascii_digit() {
                    j += 1;
                }
                if j + 1 < n && chars[j].1 == '.' && chars[j + 1].1.is_ascii_digit() {
                    j += 1;
                    while j < n && chars[j].1.is_ascii_digit() {
                        j += 1;
                    }
                }
                if j < n && (chars[j].1 == 'e' || chars[j].1 == 'E') {
                    let mut k = j + 1;
                    if k < n && (chars[k].1 == '+' || chars[k].1 == '-') {
                        k += 1;
                    }
                    if k < n && chars[k].1.is_ascii_digit() {
                        while k < n && chars[k].1.is_ascii_digit() {
                            k += 1;
                        }
                        j = k;
                    }
                }
                let span = Span::new(start, end_of(j));
                match src[span.start..span.end].parse::<f64>() {
                    Ok(v) if v.is_finite() => out.tokens.push(Token {
                        tok: Tok::Number(v),
                        span,
                    }),
                    _ => {
                        out.diagnostics.push(
                            Diagnostic::error(
                                Code::InvalidNumber,
                                span,
                                "this number is too large",
                            )
                            .with_hint("numbers must be finite; use a larger unit instead"),
                        );
                        out.tokens.push(Token {
                            tok: Tok::Number(0.0),
                            span,
                        });
                    }
                }
                i = j;
            }
            c if is_word_start(c) => {
                let mut j = i + 1;
                while j < n && is_word_continue(chars[j].1) {
                    j += 1;
                }
                let span = Span::new(start, end_of(j));
                out.tokens.push(Token {
                    tok: Tok::Word(src[span.start..span.end].to_string()),
                    span,
                });
                i = j;
            }
            '-' if next == Some('>') => {
                out.tokens.push(single(Tok::Arrow, 2));
                i += 2;
            }
            '.' if next == Some('.') => {
                out.tokens.push(single(Tok::DotDot, 2));
                i += 2;
            }
            _ => {
                let tok = match c {
                    '(' => Some(Tok::LParen),
                    ')' => Some(Tok::RParen),
                    '[' => Some(Tok::LBracket),
                    ']' => Some(Tok::RBracket),
                    '{' => Some(Tok::LBrace),
                    '}' => Some(Tok::RBrace),
                    ',' => Some(Tok::Comma),
                    ';' => Some(Tok::Semi),
                    ':' => Some(Tok::Colon),
                    '=' => Some(Tok::Eq),
                    '+' => Some(Tok::Plus),
                    '-' => Some(Tok::Minus),
                    '*' | '×' => Some(Tok::Star),
                    '/' => Some(Tok::Slash),
                    '.' | '·' => Some(Tok::Dot),
                    '→' => Some(Tok::Arrow),
                    '|' => Some(Tok::Pipe),
                    _ => None,
                };
                match tok {
                    Some(t) => out.tokens.push(single(t, 1)),
                    None => out.diagnostics.push(
                        Diagnostic::error(
                            Code::InvalidCharacter,
                            Span::new(start, end_of(i + 1)),
                            format!("the character `{}` has no meaning here", c.escape_debug()),
                        )
                        .with_hint(
                            "operators are `+` (join streams), `->` (flow through), `.` (then), `|` (at the same time) and `n*` (repeat); comments start with `#`",
                        ),
                    ),
                }
                i += 1;
            }
        }
    }
    out.tokens.push(Token {
        tok: Tok::Eof,
        span: Span::new(src.len(), src.len()),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).tokens.into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn numbers_ranges_units_and_operators() {
        assert_eq!(
            toks("90..180 step 0.5"),
            vec![
                Tok::Number(90.0),
                Tok::DotDot,
                Tok::Number(180.0),
                Tok::Word("step".into()),
                Tok::Number(0.5),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("P1[rate = 12.5 uL/min] -> H·UV → S × 2e3 °C"),
            vec![
                Tok::Word("P1".into()),
                Tok::LBracket,
                Tok::Word("rate".into()),
                Tok::Eq,
                Tok::Number(12.5),
                Tok::Word("uL".into()),
                Tok::Slash,
                Tok::Word("min".into()),
                Tok::RBracket,
                Tok::Arrow,
                Tok::Word("H".into()),
                Tok::Dot,
                Tok::Word("UV".into()),
                Tok::Arrow,
                Tok::Word("S".into()),
                Tok::Star,
                Tok::Number(2000.0),
                Tok::Word("°C".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn comments_and_bad_characters() {
        let l = lex("A # hello\n ~ $ 1e999");
        assert_eq!(l.comments.len(), 1);
        assert_eq!(l.comments[0].text, " hello");
        let codes: Vec<_> = l.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            vec![
                Code::InvalidCharacter,
                Code::InvalidCharacter,
                Code::InvalidNumber
            ]
        );
    }
}
