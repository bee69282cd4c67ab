//! The Go text/template subset the chart is written in: text, `{{ pipeline }}`,
//! `if`/`else if`/`else`, `range`, `with`, `define`, comments, and `{{-`/`-}}`
//! trimming. Anything else is an error, so a template that would need real
//! Helm fails the check instead of rendering differently.

use crate::RenderError;

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// `.A.B`, or `$.A.B` when `root`; empty path is `.` / `$`.
    Field {
        root: bool,
        path: Vec<String>,
    },
    Str(String),
    Num(f64),
    Int(i64),
    Bool(bool),
    Sub(Pipeline),
    /// A function name (only valid at the head of a command).
    Ident(String),
}

pub type Command = Vec<Term>;
pub type Pipeline = Vec<Command>;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Text(String),
    Output(Pipeline),
    If {
        branches: Vec<(Pipeline, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Range {
        over: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    With {
        value: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Define {
        name: String,
        body: Vec<Node>,
    },
}

enum Piece {
    Text(String),
    Action(String),
}

/// Splits `src` into text and action bodies, applying the trim markers.
fn lex(src: &str, file: &str) -> Result<Vec<Piece>, RenderError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_owned();
        if trim_next {
            text = text.trim_start().to_owned();
        }
        let after = &rest[start + 2..];
        let trim_prev = after.starts_with("- ") || after.starts_with("-\n");
        if trim_prev {
            text = text.trim_end().to_owned();
        }
        out.push(Piece::Text(text));
        let body_start = if trim_prev { 2 } else { 0 };
        // The action ends at the first `}}` outside a string literal.
        let bytes = after.as_bytes();
        let (mut i, mut in_str) = (body_start, false);
        let end = loop {
            if i + 1 >= bytes.len() {
                return Err(RenderError::Syntax {
                    file: file.into(),
                    message: "unclosed action".into(),
                });
            }
            match bytes[i] {
                b'\\' if in_str => i += 1,
                b'"' => in_str = !in_str,
                b'}' if !in_str && bytes[i + 1] == b'}' => break i,
                _ => {}
            }
            i += 1;
        };
        let mut body = &after[body_start..end];
        trim_next = body.ends_with(" -") || body.ends_with("\n-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        out.push(Piece::Action(body.trim().to_owned()));
        rest = &after[end + 2..];
    }
    let mut text = rest.to_owned();
    if trim_next {
        text = text.trim_start().to_owned();
    }
    out.push(Piece::Text(text));
    Ok(out)
}

struct Tokens<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

fn parse_pipeline_str(src: &str, file: &str) -> Result<Pipeline, RenderError> {
    let mut t = Tokens {
        chars: src.chars().peekable(),
    };
    let p = t.pipeline(file)?;
    if t.chars.peek().is_some() {
        return Err(syntax(
            file,
            format!("unexpected text after pipeline in {src:?}"),
        ));
    }
    Ok(p)
}

fn syntax(file: &str, message: String) -> RenderError {
    RenderError::Syntax {
        file: file.into(),
        message,
    }
}

impl Tokens<'_> {
    fn skip_ws(&mut self) {
        while self.chars.peek().is_some_and(|c| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn pipeline(&mut self, file: &str) -> Result<Pipeline, RenderError> {
        let mut cmds = vec![self.command(file)?];
        loop {
            self.skip_ws();
            if self.chars.peek() == Some(&'|') {
                self.chars.next();
                cmds.push(self.command(file)?);
            } else {
                return Ok(cmds);
            }
        }
    }

    fn command(&mut self, file: &str) -> Result<Command, RenderError> {
        let mut terms = Vec::new();
        loop {
            self.skip_ws();
            match self.chars.peek() {
                None | Some('|') | Some(')') => break,
                _ => terms.push(self.term(file)?),
            }
        }
        if terms.is_empty() {
            return Err(syntax(file, "empty command".into()));
        }
        Ok(terms)
    }

    fn word(&mut self) -> String {
        let mut w = String::new();
        while let Some(c) = self.chars.peek() {
            if c.is_alphanumeric() || matches!(c, '_' | '.' | '$' | '-' | '+') {
                w.push(*c);
                self.chars.next();
            } else {
                break;
            }
        }
        w
    }

    fn term(&mut self, file: &str) -> Result<Term, RenderError> {
        match self.chars.peek().copied() {
            Some('"') => {
                self.chars.next();
                let mut s = String::new();
                loop {
                    match self.chars.next() {
                        None => return Err(syntax(file, "unterminated string".into())),
                        Some('"') => break,
                        Some('\\') => match self.chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c) => s.push(c),
                            None => return Err(syntax(file, "bad escape".into())),
                        },
                        Some(c) => s.push(c),
                    }
                }
                Ok(Term::Str(s))
            }
            Some('(') => {
                self.chars.next();
                let p = self.pipeline(file)?;
                self.skip_ws();
                if self.chars.next() != Some(')') {
                    return Err(syntax(file, "missing )".into()));
                }
                Ok(Term::Sub(p))
            }
            _ => {
                let w = self.word();
                if w.is_empty() {
                    return Err(syntax(
                        file,
                        format!("unexpected character {:?}", self.chars.peek()),
                    ));
                }
                Ok(match w.as_str() {
                    "true" => Term::Bool(true),
                    "false" => Term::Bool(false),
                    "." => Term::Field {
                        root: false,
                        path: vec![],
                    },
                    "$" => Term::Field {
                        root: true,
                        path: vec![],
                    },
                    _ if w.starts_with('.') || w.starts_with("$.") => {
                        let root = w.starts_with('$');
                        let path = w
                            .trim_start_matches('$')
                            .split('.')
                            .skip(1)
                            .map(str::to_owned)
                            .collect::<Vec<_>>();
                        if path.iter().any(String::is_empty) {
                            return Err(syntax(file, format!("bad field {w:?}")));
                        }
                        Term::Field { root, path }
                    }
                    _ if w.starts_with('$') => {
                        return Err(syntax(
                            file,
                            format!("variables ({w}) are not in the subset"),
                        ))
                    }
                    _ if w.parse::<i64>().is_ok() => Term::Int(w.parse().expect("checked")),
                    _ if w.parse::<f64>().is_ok() => Term::Num(w.parse().expect("checked")),
                    _ => Term::Ident(w),
                })
            }
        }
    }
}

/// Parses one template file into nodes.
pub fn parse(src: &str, file: &str) -> Result<Vec<Node>, RenderError> {
    let pieces = lex(src, file)?;
    let mut iter = pieces.into_iter();
    let (nodes, end) = block(&mut iter, file)?;
    if let Some(e) = end {
        return Err(syntax(file, format!("unexpected {{{{ {e} }}}}")));
    }
    Ok(nodes)
}

/// Nodes until `end`/`else` (returned) or the end of input (`None`).
fn block(
    iter: &mut impl Iterator<Item = Piece>,
    file: &str,
) -> Result<(Vec<Node>, Option<String>), RenderError> {
    let mut nodes = Vec::new();
    while let Some(piece) = iter.next() {
        let action = match piece {
            Piece::Text(t) => {
                if !t.is_empty() {
                    nodes.push(Node::Text(t));
                }
                continue;
            }
            Piece::Action(a) => a,
        };
        if action.starts_with("/*") {
            if !action.ends_with("*/") {
                return Err(syntax(file, "unterminated comment".into()));
            }
            continue;
        }
        let (keyword, rest) = match action.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (action.as_str(), ""),
        };
        match keyword {
            "end" | "else" => return Ok((nodes, Some(action.clone()))),
            "if" => {
                let mut branches = vec![];
                let mut cond = parse_pipeline_str(rest, file)?;
                let otherwise = loop {
                    let (body, end) = block(iter, file)?;
                    branches.push((cond, body));
                    match end.as_deref() {
                        Some("end") => break Vec::new(),
                        Some("else") => {
                            let (body, end) = block(iter, file)?;
                            if end.as_deref() != Some("end") {
                                return Err(syntax(file, "if/else without end".into()));
                            }
                            break body;
                        }
                        Some(e) if e.starts_with("else if ") => {
                            cond = parse_pipeline_str(&e["else if ".len()..], file)?;
                        }
                        other => return Err(syntax(file, format!("if ended by {other:?}"))),
                    }
                };
                nodes.push(Node::If {
                    branches,
                    otherwise,
                });
            }
            "range" | "with" => {
                if rest.contains(":=") {
                    return Err(syntax(file, "variables are not in the subset".into()));
                }
                let value = parse_pipeline_str(rest, file)?;
                let (body, end) = block(iter, file)?;
                let otherwise = match end.as_deref() {
                    Some("end") => Vec::new(),
                    Some("else") => {
                        let (o, end) = block(iter, file)?;
                        if end.as_deref() != Some("end") {
                            return Err(syntax(file, format!("{keyword}/else without end")));
                        }
                        o
                    }
                    other => return Err(syntax(file, format!("{keyword} ended by {other:?}"))),
                };
                nodes.push(if keyword == "range" {
                    Node::Range {
                        over: value,
                        body,
                        otherwise,
                    }
                } else {
                    Node::With {
                        value,
                        body,
                        otherwise,
                    }
                });
            }
            "define" => {
                let name = rest.trim_matches('"').to_owned();
                let (body, end) = block(iter, file)?;
                if end.as_deref() != Some("end") {
                    return Err(syntax(file, "define without end".into()));
                }
                nodes.push(Node::Define { name, body });
            }
            "template" | "block" | "break" | "continue" => {
                return Err(syntax(
                    file,
                    format!("`{keyword}` is not in the subset (use include)"),
                ))
            }
            _ => nodes.push(Node::Output(parse_pipeline_str(&action, file)?)),
        }
    }
    Ok((nodes, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_follows_go() {
        let n = parse("a  \n  {{- .X -}}  \n b", "t").unwrap();
        assert_eq!(n[0], Node::Text("a".into()));
        assert_eq!(n[2], Node::Text("b".into()));
        // `{{-3}}` is not a trim marker (no space): it is a number.
        assert!(matches!(parse("{{-3}}", "t").unwrap()[0], Node::Output(_)));
    }

    #[test]
    fn structure_and_errors() {
        let n = parse("{{ if .A }}x{{ else if .B }}y{{ else }}z{{ end }}", "t").unwrap();
        let Node::If {
            branches,
            otherwise,
        } = &n[0]
        else {
            panic!()
        };
        assert_eq!((branches.len(), otherwise.len()), (2, 1));
        for bad in [
            "{{ if .A }}",
            "{{ end }}",
            "{{ $x := 1 }}",
            "{{ range $i, $v := .L }}{{ end }}",
            "{{ template \"x\" . }}",
            "{{ .A ",
            "{{ \"open }}",
        ] {
            assert!(parse(bad, "t").is_err(), "{bad}");
        }
        assert!(parse("{{/* note */}}", "t").unwrap().is_empty());
    }
}
