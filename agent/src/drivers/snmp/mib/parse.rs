//! The MIB parser: a module's tokens into what OID resolution and value
//! formatting need, the rest skipped. It reads SMIv1 and SMIv2 modules:
//! `IMPORTS`, `OBJECT IDENTIFIER` assignments, every macro invocation whose
//! value is an OID (`OBJECT-TYPE` with its `SYNTAX`, `UNITS`, `INDEX` and
//! `AUGMENTS`, `MODULE-IDENTITY`, `OBJECT-IDENTITY`, `NOTIFICATION-TYPE`,
//! groups, compliances), type assignments and `TEXTUAL-CONVENTION`s (with
//! enumerations and `DISPLAY-HINT`). Macro definitions (`MACRO ::= BEGIN ..
//! END`) are skipped; `TRAP-TYPE`s, whose value is a number, are skipped.

use super::lexer::{LexError, Tok, Token, tokenize};

/// One module as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Module {
    pub name: String,
    /// Line of the `DEFINITIONS` header.
    pub line: usize,
    /// (symbol, module it comes from).
    pub imports: Vec<(String, String)>,
    /// Every named OID the module defines, in file order.
    pub nodes: Vec<Node>,
    /// Type assignments and textual conventions.
    pub types: Vec<TypeDef>,
}

/// A named OID.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub line: usize,
    pub kind: NodeKind,
    /// The value `{ parent 1 2 }` as written.
    pub value: Vec<OidPart>,
    /// `SYNTAX` (OBJECT-TYPE).
    pub syntax: Option<Syntax>,
    pub units: Option<String>,
    /// `INDEX { .. }` names.
    pub index: Vec<String>,
    pub augments: Option<String>,
}

/// What defined a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    ObjectIdentifier,
    ObjectType,
    ModuleIdentity,
    ObjectIdentity,
    NotificationType,
    /// Another macro (OBJECT-GROUP, MODULE-COMPLIANCE, ...).
    Other(String),
}

/// One component of an OID value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidPart {
    Name(String),
    Number(u32),
    /// `org(3)`: a number that also names the node.
    Named(String, u32),
}

/// A type as written in a `SYNTAX` clause or a type assignment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Syntax {
    /// The named type it refers to (`DisplayString`, `Counter64`), or the
    /// builtin (`INTEGER`, `OCTET STRING`, `OBJECT IDENTIFIER`, `BITS`,
    /// `SEQUENCE`, `CHOICE`, `NULL`).
    pub base: String,
    /// Named numbers: `up(1), down(2)` (enumerations, or BITS positions).
    pub named: Vec<(i64, String)>,
}

/// A type assignment: `Name ::= type` or a `TEXTUAL-CONVENTION`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeDef {
    pub name: String,
    pub line: usize,
    pub syntax: Syntax,
    pub display_hint: Option<String>,
}

/// Why a module could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl From<LexError> for ParseError {
    fn from(e: LexError) -> Self {
        ParseError {
            line: e.line,
            message: e.message,
        }
    }
}

/// Parses every module in a file's text.
pub fn parse_modules(text: &str) -> Result<Vec<Module>, ParseError> {
    let tokens = tokenize(text)?;
    let mut p = Parser { tokens, pos: 0 };
    let mut modules = Vec::new();
    while p.peek().is_some() {
        modules.push(p.module()?);
    }
    Ok(modules)
}

/// Most tokens a nested `{ }` / `( )` may hold before a file is refused:
/// bounds the recursion of [`Parser::skip_balanced`] (it loops, but a type
/// nests through [`Parser::syntax`]).
const MAX_DEPTH: usize = 64;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.kind)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + ahead).map(|t| &t.kind)
    }

    /// The line of the next token (or of the last one at the end).
    fn line(&self) -> usize {
        self.tokens
            .get(self.pos)
            .or(self.tokens.last())
            .map_or(1, |t| t.line)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line(),
            message: message.into(),
        }
    }

    fn next(&mut self) -> Result<Tok, ParseError> {
        match self.tokens.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.kind.clone())
            }
            None => Err(self.error("unexpected end of file (missing END?)")),
        }
    }

    fn is_ident(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == word)
    }

    fn eat_ident(&mut self, word: &str) -> bool {
        let found = self.is_ident(word);
        if found {
            self.pos += 1;
        }
        found
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let found = self.peek() == Some(tok);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), ParseError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.error(format!("expected {what}, found {}", self.shown())))
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Ident(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.error(format!("expected {what}, found {}", self.shown()))),
        }
    }

    fn text(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Text(t)) => {
                let t = t.clone();
                self.pos += 1;
                Ok(t)
            }
            _ => Err(self.error(format!("expected {what}, found {}", self.shown()))),
        }
    }

    /// The next token, for messages.
    fn shown(&self) -> String {
        match self.peek() {
            None => "the end of the file".into(),
            Some(Tok::Ident(w)) => format!("`{}`", clip(w)),
            Some(Tok::Number(n)) => format!("`{}`", clip(n)),
            Some(Tok::Text(_)) => "a string".into(),
            Some(Tok::Binary(b)) => format!("`'{}'`", clip(b)),
            Some(Tok::Assign) => "`::=`".into(),
            Some(Tok::Range) => "`..`".into(),
            Some(Tok::Punct(c)) => format!("`{c}`"),
        }
    }

    /// Skips one token, or a whole `{ .. }` / `( .. )` / `[ .. ]` group.
    fn skip_balanced(&mut self) -> Result<(), ParseError> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                Tok::Punct('{' | '(' | '[') => depth += 1,
                Tok::Punct('}' | ')' | ']') => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| self.error("unbalanced closing bracket"))?;
                }
                _ => {}
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// `NAME DEFINITIONS ::= BEGIN ... END`.
    fn module(&mut self) -> Result<Module, ParseError> {
        let line = self.line();
        let name = self.ident("a module name")?;
        // `{ oid }` after the name (ASN.1 module identifier) is allowed.
        if self.peek() == Some(&Tok::Punct('{')) {
            self.skip_balanced()?;
        }
        if !self.eat_ident("DEFINITIONS") {
            return Err(self.error(format!(
                "expected `DEFINITIONS` after module name {name}, found {}",
                self.shown()
            )));
        }
        while !self.eat(&Tok::Assign) {
            self.next()?;
        }
        if !self.eat_ident("BEGIN") {
            return Err(self.error(format!("expected BEGIN, found {}", self.shown())));
        }
        let mut module = Module {
            name,
            line,
            ..Module::default()
        };
        loop {
            let line = self.line();
            match self.next()? {
                Tok::Ident(w) if w == "END" => return Ok(module),
                Tok::Ident(w) if w == "IMPORTS" => self.imports(&mut module)?,
                Tok::Ident(w) if w == "EXPORTS" => {
                    while !self.eat(&Tok::Punct(';')) {
                        self.next()?;
                    }
                }
                Tok::Ident(w) if self.is_ident("MACRO") => {
                    // A macro definition: its body is ASN.1 notation, not
                    // definitions.
                    let _ = w;
                    while !self.eat_ident("END") {
                        self.next()?;
                    }
                }
                Tok::Ident(w)
                    if w.starts_with(|c: char| c.is_ascii_uppercase())
                        && self.peek() == Some(&Tok::Assign) =>
                {
                    self.expect(&Tok::Assign, "`::=` after a type name")?;
                    let (syntax, display_hint) = self.type_assignment()?;
                    module.types.push(TypeDef {
                        name: w,
                        line,
                        syntax,
                        display_hint,
                    });
                }
                Tok::Ident(w) => {
                    if let Some(node) = self.value_assignment(w, line)? {
                        module.nodes.push(node);
                    }
                }
                Tok::Punct(';') => {}
                other => {
                    self.pos -= 1;
                    let _ = other;
                    return Err(self.error(format!(
                        "expected a definition or END, found {}",
                        self.shown()
                    )));
                }
            }
        }
    }

    /// `IMPORTS a, b FROM M1 c FROM M2 ;`
    fn imports(&mut self, module: &mut Module) -> Result<(), ParseError> {
        let mut pending = Vec::new();
        loop {
            match self.next()? {
                Tok::Punct(';') => break,
                Tok::Punct(',') => {}
                Tok::Ident(w) if w == "FROM" => {
                    let from = self.ident("a module name after FROM")?;
                    // An ASN.1 module OID after the name.
                    if self.peek() == Some(&Tok::Punct('{')) {
                        self.skip_balanced()?;
                    }
                    for symbol in pending.drain(..) {
                        module.imports.push((symbol, from.clone()));
                    }
                }
                Tok::Ident(w) => pending.push(w),
                // `{ }` after a symbol (parameterized types): ignored.
                Tok::Punct('{') => {
                    self.pos -= 1;
                    self.skip_balanced()?;
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.error(format!("in IMPORTS: unexpected {}", self.shown())));
                }
            }
        }
        if !pending.is_empty() {
            let shown: Vec<String> = pending.iter().take(8).map(|p| clip(p)).collect();
            let more = match pending.len() {
                n if n > 8 => format!(" and {} more", n - 8),
                _ => String::new(),
            };
            return Err(self.error(format!(
                "in IMPORTS: {}{more} without FROM",
                shown.join(", ")
            )));
        }
        Ok(())
    }

    /// After `Name ::=`: a textual convention (clauses, then SYNTAX) or a
    /// plain type.
    fn type_assignment(&mut self) -> Result<(Syntax, Option<String>), ParseError> {
        if !self.eat_ident("TEXTUAL-CONVENTION") {
            return Ok((self.syntax(0)?, None));
        }
        let mut hint = None;
        loop {
            if self.eat_ident("SYNTAX") {
                return Ok((self.syntax(0)?, hint));
            }
            if self.eat_ident("DISPLAY-HINT") {
                hint = Some(self.text("the DISPLAY-HINT string")?);
                continue;
            }
            if self.peek() == Some(&Tok::Assign) || self.is_ident("END") {
                return Err(self.error("TEXTUAL-CONVENTION without SYNTAX"));
            }
            self.skip_balanced()?;
        }
    }

    /// A type: `[APPLICATION n] IMPLICIT`, a builtin or a reference, named
    /// numbers, a constraint.
    fn syntax(&mut self, depth: usize) -> Result<Syntax, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("type nested too deeply"));
        }
        if self.peek() == Some(&Tok::Punct('[')) {
            self.skip_balanced()?;
        }
        let _ = self.eat_ident("IMPLICIT") || self.eat_ident("EXPLICIT");
        let first = self.ident("a type")?;
        let base = match first.as_str() {
            "OCTET" => {
                if !self.eat_ident("STRING") {
                    return Err(self.error("expected STRING after OCTET"));
                }
                "OCTET STRING".to_owned()
            }
            "OBJECT" => {
                if !self.eat_ident("IDENTIFIER") {
                    return Err(self.error("expected IDENTIFIER after OBJECT"));
                }
                "OBJECT IDENTIFIER".to_owned()
            }
            "SEQUENCE" | "SET" => {
                if self.eat_ident("OF") {
                    let inner = self.syntax(depth + 1)?;
                    return Ok(Syntax {
                        base: format!("SEQUENCE OF {}", inner.base),
                        named: Vec::new(),
                    });
                }
                self.skip_balanced()?;
                "SEQUENCE".to_owned()
            }
            "CHOICE" => {
                self.skip_balanced()?;
                "CHOICE".to_owned()
            }
            _ => {
                // `Module.Type`
                if self.peek() == Some(&Tok::Punct('.'))
                    && matches!(self.peek_at(1), Some(Tok::Ident(_)))
                {
                    self.pos += 1;
                    self.ident("a type name")?
                } else {
                    first
                }
            }
        };
        let mut named = Vec::new();
        if self.peek() == Some(&Tok::Punct('{')) {
            named = self.named_numbers()?;
        }
        while self.peek() == Some(&Tok::Punct('(')) {
            self.skip_balanced()?;
        }
        Ok(Syntax { base, named })
    }

    /// `{ up(1), down(2), weird(-1) }`
    fn named_numbers(&mut self) -> Result<Vec<(i64, String)>, ParseError> {
        self.expect(&Tok::Punct('{'), "`{`")?;
        let mut out = Vec::new();
        loop {
            if self.eat(&Tok::Punct('}')) {
                return Ok(out);
            }
            let name = self.ident("a named number")?;
            self.expect(&Tok::Punct('('), "`(` after a named number")?;
            let negative = self.eat(&Tok::Punct('-'));
            let n = match self.next()? {
                Tok::Number(n) => n
                    .parse::<i64>()
                    .map_err(|_| self.error(format!("number {} out of range", clip(&n))))?,
                _ => {
                    self.pos -= 1;
                    return Err(self.error(format!(
                        "expected the number of {}, found {}",
                        clip(&name),
                        self.shown()
                    )));
                }
            };
            self.expect(&Tok::Punct(')'), "`)`")?;
            out.push((if negative { -n } else { n }, name));
            if !self.eat(&Tok::Punct(',')) {
                self.expect(&Tok::Punct('}'), "`,` or `}` in named numbers")?;
                return Ok(out);
            }
        }
    }

    /// `name <type or macro with clauses> ::= value`: a [`Node`] when the
    /// value is an OID.
    fn value_assignment(&mut self, name: String, line: usize) -> Result<Option<Node>, ParseError> {
        let macro_name = match self.peek() {
            Some(Tok::Ident(w)) => w.clone(),
            _ => {
                return Err(self.error(format!(
                    "expected a type or macro after {name}, found {}",
                    self.shown()
                )));
            }
        };
        let kind = match macro_name.as_str() {
            "OBJECT" if matches!(self.peek_at(1), Some(Tok::Ident(w)) if w == "IDENTIFIER") => {
                NodeKind::ObjectIdentifier
            }
            "OBJECT-TYPE" => NodeKind::ObjectType,
            "MODULE-IDENTITY" => NodeKind::ModuleIdentity,
            "OBJECT-IDENTITY" => NodeKind::ObjectIdentity,
            "NOTIFICATION-TYPE" => NodeKind::NotificationType,
            other => NodeKind::Other(other.to_owned()),
        };
        let is_macro = kind != NodeKind::ObjectIdentifier
            && macro_name.contains('-')
            && macro_name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '-');
        let mut node = Node {
            name,
            line,
            kind,
            value: Vec::new(),
            syntax: None,
            units: None,
            index: Vec::new(),
            augments: None,
        };
        if node.kind == NodeKind::ObjectIdentifier {
            self.pos += 2;
        } else if is_macro {
            self.pos += 1;
            self.clauses(&mut node)?;
        } else {
            // `name SomeType ::= value`: not an OID.
            self.syntax(0)?;
        }
        self.expect(
            &Tok::Assign,
            &format!("`::=` in the definition of {}", clip(&node.name)),
        )?;
        let oid_valued = node.kind == NodeKind::ObjectIdentifier || is_macro;
        if oid_valued && self.peek() == Some(&Tok::Punct('{')) {
            node.value = self.oid_value()?;
            return Ok(Some(node));
        }
        // A number (TRAP-TYPE) or another value.
        self.skip_balanced()?;
        Ok(None)
    }

    /// A macro's clauses up to `::=`, keeping the ones resolution and
    /// formatting use.
    fn clauses(&mut self, node: &mut Node) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(Tok::Assign) => return Ok(()),
                None => return Err(self.error("unexpected end of file in a definition")),
                Some(Tok::Ident(w)) if w == "END" => {
                    return Err(
                        self.error(format!("definition of {} has no `::=`", clip(&node.name)))
                    );
                }
                Some(Tok::Ident(w)) if w == "SYNTAX" && node.syntax.is_none() => {
                    self.pos += 1;
                    node.syntax = Some(self.syntax(0)?);
                }
                Some(Tok::Ident(w)) if w == "SYNTAX" || w == "WRITE-SYNTAX" => {
                    self.pos += 1;
                    self.syntax(0)?;
                }
                Some(Tok::Ident(w)) if w == "UNITS" => {
                    self.pos += 1;
                    node.units = Some(self.text("the UNITS string")?);
                }
                Some(Tok::Ident(w)) if w == "INDEX" => {
                    self.pos += 1;
                    self.expect(&Tok::Punct('{'), "`{` after INDEX")?;
                    loop {
                        match self.next()? {
                            Tok::Punct('}') => break,
                            Tok::Punct(',') => {}
                            Tok::Ident(w) if w == "IMPLIED" => {}
                            Tok::Ident(w) => node.index.push(w),
                            _ => {
                                self.pos -= 1;
                                return Err(self.error(format!("in INDEX: {}", self.shown())));
                            }
                        }
                    }
                }
                Some(Tok::Ident(w)) if w == "AUGMENTS" => {
                    self.pos += 1;
                    self.expect(&Tok::Punct('{'), "`{` after AUGMENTS")?;
                    node.augments = Some(self.ident("the augmented row")?);
                    self.expect(&Tok::Punct('}'), "`}` after AUGMENTS")?;
                }
                _ => self.skip_balanced()?,
            }
        }
    }

    /// `{ parent 1 }`, `{ iso org(3) dod(6) 1 }`.
    fn oid_value(&mut self) -> Result<Vec<OidPart>, ParseError> {
        self.expect(&Tok::Punct('{'), "`{`")?;
        let mut parts = Vec::new();
        loop {
            match self.next()? {
                Tok::Punct('}') => break,
                Tok::Number(n) => parts.push(OidPart::Number(self.arc(&n)?)),
                Tok::Ident(w) => {
                    if self.eat(&Tok::Punct('(')) {
                        let n = match self.next()? {
                            Tok::Number(n) => self.arc(&n)?,
                            _ => {
                                return Err(
                                    self.error(format!("expected the number of {}", clip(&w)))
                                );
                            }
                        };
                        self.expect(&Tok::Punct(')'), "`)`")?;
                        parts.push(OidPart::Named(w, n));
                    } else if self.eat(&Tok::Punct('.')) {
                        // `Module.name`
                        parts.push(OidPart::Name(self.ident("a name after `.`")?));
                    } else {
                        parts.push(OidPart::Name(w));
                    }
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.error(format!("in an OID value: unexpected {}", self.shown())));
                }
            }
        }
        if parts.is_empty() {
            return Err(self.error("empty OID value"));
        }
        Ok(parts)
    }

    fn arc(&self, n: &str) -> Result<u32, ParseError> {
        n.parse()
            .map_err(|_| self.error(format!("OID arc {} is larger than 4294967295", clip(n))))
    }
}

/// Longest identifier or number an error message shows whole.
pub const SHOWN_MAX: usize = 64;

/// `text` for an error message: at most [`SHOWN_MAX`] characters, then
/// `...` and the full length (a garbled file can hold a megabyte-long
/// "identifier").
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(SHOWN_MAX) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
    }
}
