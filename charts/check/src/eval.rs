//! Evaluates parsed templates with Helm's semantics for the functions the
//! chart uses (sprig's `quote`, `default`, `toYaml`, `nindent`, … and Helm's
//! `include`, `required`).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};

use crate::parse::{Node, Pipeline, Term};
use crate::RenderError;

pub struct Renderer<'a> {
    pub defines: &'a BTreeMap<String, Vec<Node>>,
    pub root: &'a Value,
    pub file: &'a str,
}

/// Go template truth: false, 0, nil, and empty strings, lists and maps are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Go's `%v` of a scalar; `<nil>` printing is Helm's empty string.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Go's `encoding/json` writes map keys sorted.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let mut m = Map::new();
            for k in keys {
                m.insert(k.clone(), sorted(&o[k]));
            }
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Whether a string must be quoted to stay a string for a YAML 1.1 reader
/// (go-yaml v2, which Helm's `toYaml` writes for): booleans like `on`/`yes`,
/// nulls, numbers, and text that YAML would read as syntax.
fn needs_quotes(s: &str) -> bool {
    const WORDS: [&str; 13] = [
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", "", ".nan", ".inf",
    ];
    WORDS.contains(&s.to_ascii_lowercase().as_str())
        || s.parse::<f64>().is_ok()
        || s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@` ".contains(c))
        || s.ends_with(' ')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if needs_quotes(s) => {
            serde_json::to_string(s).expect("a string serialises")
        }
        Value::String(s) => s.clone(),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn emit(v: &Value, pad: usize, out: &mut Vec<String>) {
    let p = " ".repeat(pad);
    match v {
        Value::Object(o) if !o.is_empty() => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for k in keys {
                let key = scalar(&Value::String(k.clone()));
                match &o[k] {
                    Value::Object(m) if !m.is_empty() => {
                        out.push(format!("{p}{key}:"));
                        emit(&o[k], pad + 2, out);
                    }
                    // go-yaml v2 writes a map's list at the key's own indent.
                    Value::Array(a) if !a.is_empty() => {
                        out.push(format!("{p}{key}:"));
                        emit(&o[k], pad, out);
                    }
                    other => out.push(format!("{p}{key}: {}", scalar(other))),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut lines = Vec::new();
                        emit(item, pad + 2, &mut lines);
                        let first = lines.remove(0);
                        out.push(format!("{p}- {}", &first[pad + 2..]));
                        out.extend(lines);
                    }
                    Value::Array(inner) if !inner.is_empty() => {
                        out.push(format!("{p}-"));
                        emit(item, pad + 2, out);
                    }
                    other => out.push(format!("{p}- {}", scalar(other))),
                }
            }
        }
        other => out.push(format!("{p}{}", scalar(other))),
    }
}

/// Helm's `toYaml`: keys sorted, YAML 1.1-safe quoting, no trailing newline.
pub fn to_yaml(v: &Value) -> String {
    let mut lines = Vec::new();
    emit(v, 0, &mut lines);
    lines.join("\n")
}

fn indent(n: usize, s: &str) -> String {
    let pad = " ".repeat(n);
    s.split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Renderer<'_> {
    fn err(&self, message: String) -> RenderError {
        RenderError::Eval {
            file: self.file.into(),
            message,
        }
    }

    pub fn nodes(&self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), RenderError> {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Output(p) => out.push_str(&text(&self.pipeline(p, dot)?)),
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut done = false;
                    for (cond, body) in branches {
                        if truthy(&self.pipeline(cond, dot)?) {
                            self.nodes(body, dot, out)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.nodes(otherwise, dot, out)?;
                    }
                }
                Node::Range {
                    over,
                    body,
                    otherwise,
                } => {
                    let v = self.pipeline(over, dot)?;
                    let items: Vec<Value> = match &v {
                        Value::Array(a) => a.clone(),
                        // Maps range over values in key order, as Go does.
                        Value::Object(o) => {
                            let mut keys: Vec<&String> = o.keys().collect();
                            keys.sort();
                            keys.into_iter().map(|k| o[k].clone()).collect()
                        }
                        Value::Null => Vec::new(),
                        other => return Err(self.err(format!("range over {other}"))),
                    };
                    if items.is_empty() {
                        self.nodes(otherwise, dot, out)?;
                    }
                    for item in &items {
                        self.nodes(body, item, out)?;
                    }
                }
                Node::With {
                    value,
                    body,
                    otherwise,
                } => {
                    let v = self.pipeline(value, dot)?;
                    if truthy(&v) {
                        self.nodes(body, &v, out)?;
                    } else {
                        self.nodes(otherwise, dot, out)?;
                    }
                }
                Node::Define { .. } => {}
            }
        }
        Ok(())
    }

    fn field(&self, base: &Value, path: &[String]) -> Value {
        let mut at = base;
        for p in path {
            match at.get(p) {
                Some(v) => at = v,
                None => return Value::Null,
            }
        }
        at.clone()
    }

    fn term(&self, t: &Term, dot: &Value) -> Result<Value, RenderError> {
        Ok(match t {
            Term::Field { root, path } => self.field(if *root { self.root } else { dot }, path),
            Term::Str(s) => Value::String(s.clone()),
            Term::Int(i) => Value::from(*i),
            Term::Num(f) => Value::from(*f),
            Term::Bool(b) => Value::Bool(*b),
            Term::Sub(p) => self.pipeline(p, dot)?,
            Term::Ident(name) => self.call(name, &[], dot)?,
        })
    }

    pub fn pipeline(&self, p: &Pipeline, dot: &Value) -> Result<Value, RenderError> {
        let mut piped: Option<Value> = None;
        for cmd in p {
            let mut args = Vec::new();
            let value = match &cmd[0] {
                Term::Ident(name) => {
                    for t in &cmd[1..] {
                        args.push(self.term(t, dot)?);
                    }
                    if let Some(v) = piped.take() {
                        args.push(v);
                    }
                    self.call(name, &args, dot)?
                }
                single => {
                    if cmd.len() > 1 || piped.is_some() {
                        return Err(self.err("a value cannot take arguments".into()));
                    }
                    self.term(single, dot)?
                }
            };
            piped = Some(value);
        }
        Ok(piped.unwrap_or(Value::Null))
    }

    fn call(&self, name: &str, args: &[Value], dot: &Value) -> Result<Value, RenderError> {
        let want = |n: usize| -> Result<(), RenderError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.err(format!("{name} takes {n} arguments, got {}", args.len())))
            }
        };
        let int = |v: &Value| -> Result<usize, RenderError> {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.err(format!("{name}: {v} is not a count")))
        };
        Ok(match name {
            "quote" => Value::String(
                args.iter()
                    .filter(|a| !a.is_null())
                    .map(|a| serde_json::to_string(&text(a)).expect("string"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            "default" => {
                want(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "required" => {
                want(2)?;
                if truthy(&args[1]) || args[1].is_boolean() {
                    args[1].clone()
                } else {
                    return Err(self.err(text(&args[0])));
                }
            }
            "toYaml" => {
                want(1)?;
                let y = serde_yaml::to_string(&sorted(&args[0]))
                    .map_err(|e| self.err(e.to_string()))?;
                Value::String(y.trim_end_matches('\n').to_owned())
            }
            "toJson" => {
                want(1)?;
                Value::String(sorted(&args[0]).to_string())
            }
            "indent" | "nindent" => {
                want(2)?;
                let s = indent(int(&args[0])?, &text(&args[1]));
                Value::String(if name == "nindent" {
                    format!("\n{s}")
                } else {
                    s
                })
            }
            "b64enc" => {
                want(1)?;
                Value::String(base64::engine::general_purpose::STANDARD.encode(text(&args[0])))
            }
            "not" => {
                want(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "and" => Value::Bool(args.iter().all(truthy)),
            "or" => Value::Bool(args.iter().any(truthy)),
            "eq" => {
                want(2)?;
                Value::Bool(args[0] == args[1])
            }
            "ne" => {
                want(2)?;
                Value::Bool(args[0] != args[1])
            }
            "lower" => Value::String(text(&args[0]).to_lowercase()),
            "upper" => Value::String(text(&args[0]).to_uppercase()),
            "trunc" => {
                want(2)?;
                Value::String(text(&args[1]).chars().take(int(&args[0])?).collect())
            }
            "semverCompare" => {
                want(2)?;
                let (constraint, version) = (text(&args[0]), text(&args[1]));
                Value::Bool(
                    crate::semver::satisfies(&constraint, &version)
                        .map_err(|e| self.err(format!("semverCompare: {e}")))?,
                )
            }
            "trimSuffix" => {
                want(2)?;
                let (suffix, s) = (text(&args[0]), text(&args[1]));
                Value::String(s.strip_suffix(&suffix).unwrap_or(&s).to_owned())
            }
            "join" => {
                want(2)?;
                let list = args[1].as_array().cloned().unwrap_or_default();
                Value::String(
                    list.iter()
                        .map(text)
                        .collect::<Vec<_>>()
                        .join(&text(&args[0])),
                )
            }
            "index" => {
                let mut at = args.first().cloned().unwrap_or(Value::Null);
                for k in &args[1..] {
                    at = match k {
                        Value::Number(n) => at.get(n.as_u64().unwrap_or(0) as usize).cloned(),
                        other => at.get(text(other)).cloned(),
                    }
                    .unwrap_or(Value::Null);
                }
                at
            }
            "printf" => {
                let fmt = text(args.first().unwrap_or(&Value::Null));
                let mut rest = args.iter().skip(1);
                let mut out = String::new();
                let mut chars = fmt.chars();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('%') => out.push('%'),
                        Some('s' | 'd' | 'v') => {
                            out.push_str(&text(rest.next().unwrap_or(&Value::Null)))
                        }
                        other => {
                            return Err(
                                self.err(format!("printf verb {other:?} is not in the subset"))
                            )
                        }
                    }
                }
                Value::String(out)
            }
            "include" => {
                want(2)?;
                let name = text(&args[0]);
                let body = self
                    .defines
                    .get(&name)
                    .ok_or_else(|| self.err(format!("include: no template {name:?}")))?;
                let mut out = String::new();
                self.nodes(body, &args[1], &mut out)?;
                Value::String(out)
            }
            "list" => Value::Array(args.to_vec()),
            "dict" => {
                let mut m = Map::new();
                for pair in args.chunks(2) {
                    m.insert(text(&pair[0]), pair.get(1).cloned().unwrap_or(Value::Null));
                }
                Value::Object(m)
            }
            _ => {
                let _ = dot;
                return Err(self.err(format!("function {name:?} is not in the subset")));
            }
        })
    }
}
