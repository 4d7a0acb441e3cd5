//! A small CSV reader for inventories (RFC 4180: `,` separated, `"`
//! quoted fields with `""` for a quote, CRLF or LF line ends), which keeps
//! the line each record starts on for messages.

/// One record and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Parses `text` into records; blank lines are skipped. An error gives the
/// line and what is wrong.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_field = false;
        loop {
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('"') if field.is_empty() && !quoted_field => {
                    quoted_field = true;
                    loop {
                        match chars.next() {
                            None => {
                                return Err((start, "unterminated quoted field".to_owned()));
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                field.push(c);
                            }
                        }
                    }
                    match chars.peek() {
                        None | Some(',' | '\n' | '\r') => {}
                        Some(_) => {
                            return Err((line, "text after a closing quote".to_owned()));
                        }
                    }
                }
                Some(',') => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some('\n') => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('"') => return Err((line, "a quote inside an unquoted field".to_owned())),
                Some(c) => field.push(c),
            }
        }
        let blank = fields.len() == 1 && fields[0].trim().is_empty() && !quoted_field;
        if !blank {
            records.push(CsvRecord {
                line: start,
                fields,
            });
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_commas_and_lines() {
        let text = "name,address\r\na,\"10.0.0.1:161\"\n\n\"b, \"\"x\"\"\",\"two\nlines\"\nc,\n";
        let r = parse_csv(text).unwrap_or_default();
        let fields: Vec<(usize, Vec<&str>)> = r
            .iter()
            .map(|r| (r.line, r.fields.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            fields,
            vec![
                (1, vec!["name", "address"]),
                (2, vec!["a", "10.0.0.1:161"]),
                (4, vec!["b, \"x\"", "two\nlines"]),
                (6, vec!["c", ""]),
            ]
        );
        assert_eq!(
            parse_csv("a\n\"b\nc"),
            Err((2, "unterminated quoted field".to_owned()))
        );
        assert_eq!(
            parse_csv("a\nb\"c\n"),
            Err((2, "a quote inside an unquoted field".to_owned()))
        );
    }
}
