//! The MIB lexer: SMI text into tokens with their line numbers. ASN.1
//! comments (`--` to the next `--` or the end of the line) are skipped,
//! quoted strings may span lines, `'0f'H` and `'01'B` are one token.

/// One token and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: Tok,
    pub line: usize,
}

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword: letters, digits, `-` and `_`, starting
    /// with a letter (`ifHCInOctets`, `OBJECT-TYPE`, `IF-MIB`).
    Ident(String),
    /// A non-negative decimal number, as written (it may exceed `u64`).
    Number(String),
    /// A quoted string, without its quotes.
    Text(String),
    /// `'..'H` or `'..'B`.
    Binary(String),
    /// `::=`
    Assign,
    /// `..`
    Range,
    /// Any other single punctuation character: `{ } ( ) [ ] , ; | . - < >`.
    Punct(char),
}

/// Why a text is not a sequence of SMI tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LexError {
    pub line: usize,
    pub message: String,
}

/// Splits `text` into tokens.
pub fn tokenize(text: &str) -> Result<Vec<Token>, LexError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                // A comment ends at the next `--` or at the end of the line.
                i += 2;
                while i < bytes.len() && bytes[i] != b'\n' {
                    if bytes[i] == b'-' && bytes.get(i + 1) == Some(&b'-') {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
            }
            b'"' => {
                let start_line = line;
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(LexError {
                        line: start_line,
                        message: "unterminated string".into(),
                    });
                }
                tokens.push(Token {
                    kind: Tok::Text(String::from_utf8_lossy(&bytes[start..i]).into_owned()),
                    line: start_line,
                });
                i += 1;
            }
            b'\'' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' && bytes[i] != b'\n' {
                    i += 1;
                }
                let radix = bytes.get(i + 1).copied();
                if i >= bytes.len()
                    || bytes[i] != b'\''
                    || !matches!(radix, Some(b'H' | b'h' | b'B' | b'b'))
                {
                    return Err(LexError {
                        line,
                        message: "a quoted number must look like '0a'H or '01'B".into(),
                    });
                }
                tokens.push(Token {
                    kind: Tok::Binary(String::from_utf8_lossy(&bytes[start..i]).into_owned()),
                    line,
                });
                i += 2;
            }
            b':' if bytes.get(i + 1) == Some(&b':') && bytes.get(i + 2) == Some(&b'=') => {
                tokens.push(Token {
                    kind: Tok::Assign,
                    line,
                });
                i += 3;
            }
            b'.' if bytes.get(i + 1) == Some(&b'.') => {
                tokens.push(Token {
                    kind: Tok::Range,
                    line,
                });
                i += 2;
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                tokens.push(Token {
                    kind: Tok::Number(String::from_utf8_lossy(&bytes[start..i]).into_owned()),
                    line,
                });
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || bytes[i] == b'_'
                        // A hyphen belongs to the name unless a comment starts.
                        || (bytes[i] == b'-' && bytes.get(i + 1) != Some(&b'-')))
                {
                    i += 1;
                }
                tokens.push(Token {
                    kind: Tok::Ident(String::from_utf8_lossy(&bytes[start..i]).into_owned()),
                    line,
                });
            }
            b'{' | b'}' | b'(' | b')' | b'[' | b']' | b',' | b';' | b'|' | b'.' | b'-' | b'<'
            | b'>' | b':' | b'@' | b'!' | b'*' | b'&' | b'^' | b'+' => {
                tokens.push(Token {
                    kind: Tok::Punct(char::from(c)),
                    line,
                });
                i += 1;
            }
            _ => {
                // A stray byte (non-ASCII in a DESCRIPTION is inside a
                // string; elsewhere it is an error).
                let shown = text
                    .get(i..)
                    .and_then(|s| s.chars().next())
                    .map_or_else(|| format!("byte 0x{c:02x}"), |ch| format!("{ch:?}"));
                return Err(LexError {
                    line,
                    message: format!("unexpected character {shown}"),
                });
            }
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Tok> {
        tokenize(text)
            .expect("lexes")
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn tokens_comments_and_lines() {
        assert_eq!(
            kinds("ifName OBJECT-TYPE -- a comment\n ::= { ifXEntry 1 } -- x -- y"),
            vec![
                Tok::Ident("ifName".into()),
                Tok::Ident("OBJECT-TYPE".into()),
                Tok::Assign,
                Tok::Punct('{'),
                Tok::Ident("ifXEntry".into()),
                Tok::Number("1".into()),
                Tok::Punct('}'),
                Tok::Ident("y".into()),
            ]
        );
        let t = tokenize("a\n\"two\nlines\"\nb (0..255) 'ff'H").expect("lexes");
        assert_eq!(t[1].kind, Tok::Text("two\nlines".into()));
        assert_eq!((t[1].line, t[2].line), (2, 4));
        assert_eq!(t[5].kind, Tok::Range);
        assert_eq!(t[8].kind, Tok::Binary("ff".into()));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(tokenize("a\n\"open").expect_err("unterminated").line, 2);
        assert!(tokenize("a\n\n 'zz'Q").is_err());
        assert_eq!(tokenize("x\n~").expect_err("stray").line, 2);
    }
}
