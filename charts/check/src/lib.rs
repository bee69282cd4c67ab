//! Renders the hami Helm chart without helm and splits the output into
//! documents, so tests can validate every object the chart installs.
//!
//! The chart is written in a subset of Go templates with Helm's functions
//! (see `parse` and `eval` for what the subset holds); a template using
//! anything else fails to render here, so the check and real Helm can never
//! quietly disagree.

pub mod eval;
pub mod parse;
pub mod semver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {message}")]
    Eval { file: String, message: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Yaml { path: PathBuf, message: String },
}

/// One rendered template file.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub file: String,
    pub text: String,
}

/// Deep-merges `over` into `base` (maps merge, everything else replaces),
/// as `helm install -f` does with value files.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub fn read_yaml(path: &Path) -> Result<Value, RenderError> {
    let text = std::fs::read_to_string(path).map_err(|source| RenderError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|e| RenderError::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn templates(dir: &Path) -> Result<Vec<(String, String)>, RenderError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| RenderError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "tpl") {
                let text = std::fs::read_to_string(&p).map_err(|source| RenderError::Io {
                    path: p.clone(),
                    source,
                })?;
                let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                out.push((rel, text));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The cluster version [`render`] renders for: the newest the chart knows.
pub const DEFAULT_KUBE_VERSION: &str = "v1.34.0";

/// Renders every template of the chart in `chart_dir` with its values.yaml
/// merged with `overrides`, for a release `name` in `namespace`, for a
/// cluster of [`DEFAULT_KUBE_VERSION`].
pub fn render(
    chart_dir: &Path,
    overrides: &Value,
    name: &str,
    namespace: &str,
) -> Result<Vec<Rendered>, RenderError> {
    render_for(chart_dir, overrides, name, namespace, DEFAULT_KUBE_VERSION)
}

/// [`render`] for a cluster that reports `kube_version` (`v1.20.2`), as
/// `helm template --kube-version` or `helm install` against that cluster:
/// `.Capabilities.KubeVersion` is set, and a version outside Chart.yaml's
/// `kubeVersion` fails the render.
pub fn render_for(
    chart_dir: &Path,
    overrides: &Value,
    name: &str,
    namespace: &str,
    kube_version: &str,
) -> Result<Vec<Rendered>, RenderError> {
    let chart = read_yaml(&chart_dir.join("Chart.yaml"))?;
    let refuse = |message: String| RenderError::Eval {
        file: "Chart.yaml".into(),
        message,
    };
    if let Some(range) = chart["kubeVersion"].as_str() {
        if !semver::satisfies(range, kube_version).map_err(refuse)? {
            return Err(refuse(format!(
                "chart requires kubeVersion: {range} which is incompatible with Kubernetes {kube_version}"
            )));
        }
    }
    let bare = kube_version.trim_start_matches('v');
    let mut numbers = bare.split(['.', '-', '+']);
    let major = numbers.next().unwrap_or_default();
    let minor = numbers.next().unwrap_or_default();
    let mut values = read_yaml(&chart_dir.join("values.yaml"))?;
    merge(&mut values, overrides);
    let root = json!({
        "Values": values,
        "Release": {"Name": name, "Namespace": namespace, "Service": "Helm", "IsInstall": true},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        "Capabilities": {"KubeVersion": {
            "Version": format!("v{bare}"), "GitVersion": format!("v{bare}"),
            "Major": major, "Minor": minor}},
    });
    let files = templates(&chart_dir.join("templates"))?;
    let mut parsed = Vec::new();
    let mut defines = BTreeMap::new();
    for (file, text) in &files {
        let nodes = parse::parse(text, file)?;
        for n in &nodes {
            if let parse::Node::Define { name, body } = n {
                defines.insert(name.clone(), body.clone());
            }
        }
        parsed.push((file.clone(), nodes));
    }
    let mut out = Vec::new();
    for (file, nodes) in &parsed {
        // Helm renders partials (`_*.tpl`) only through include.
        if Path::new(file)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with('_'))
        {
            continue;
        }
        let r = eval::Renderer {
            defines: &defines,
            root: &root,
            file,
        };
        let mut text = String::new();
        r.nodes(nodes, &root, &mut text)?;
        out.push(Rendered {
            file: file.clone(),
            text,
        });
    }
    Ok(out)
}

/// The YAML documents of the rendered output, as JSON, with the file each
/// came from; empty documents (a disabled template) are dropped.
pub fn documents(rendered: &[Rendered]) -> Result<Vec<(String, Value)>, RenderError> {
    let mut docs = Vec::new();
    for r in rendered {
        for doc in serde_yaml::Deserializer::from_str(&r.text) {
            let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| RenderError::Yaml {
                path: PathBuf::from(&r.file),
                message: format!("{e}\n--- rendered:\n{}", r.text),
            })?;
            if !v.is_null() {
                docs.push((r.file.clone(), v));
            }
        }
    }
    Ok(docs)
}

/// The `args` of container `container` in the first `kind` object the chart
/// renders for `overrides` (release `hami` in `hami-system`): what the
/// binaries' own tests hand to the real binary.
pub fn container_args(
    chart_dir: &Path,
    overrides: &Value,
    kind: &str,
    container: &str,
) -> Result<Vec<String>, RenderError> {
    let docs = documents(&render(chart_dir, overrides, "hami", "hami-system")?)?;
    let missing = |what: String| RenderError::Eval {
        file: kind.to_owned(),
        message: what,
    };
    let (_, object) = docs
        .iter()
        .find(|(_, d)| d["kind"] == kind)
        .ok_or_else(|| missing(format!("no {kind} rendered")))?;
    let c = object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .ok_or_else(|| missing(format!("no container {container}")))?;
    Ok(c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str, values: Value) -> String {
        let nodes = parse::parse(src, "t").unwrap();
        let mut defines = BTreeMap::new();
        for n in &nodes {
            if let parse::Node::Define { name, body } = n {
                defines.insert(name.clone(), body.clone());
            }
        }
        let root = json!({"Values": values, "Release": {"Name": "r", "Namespace": "ns"}});
        let r = eval::Renderer {
            defines: &defines,
            root: &root,
            file: "t",
        };
        let mut out = String::new();
        r.nodes(&nodes, &root, &mut out).unwrap();
        out
    }

    #[test]
    fn helm_functions_behave_as_in_helm() {
        let v = json!({"name": "gpu", "n": 3, "off": false, "list": ["a", "b"],
                       "map": {"z": 1, "a": {"k": "v"}}, "empty": ""});
        assert_eq!(run("{{ .Values.name | quote }}", v.clone()), "\"gpu\"");
        assert_eq!(run("{{ .Values.n | quote }}", v.clone()), "\"3\"");
        assert_eq!(run("{{ .Values.empty | default \"x\" }}", v.clone()), "x");
        assert_eq!(run("{{ .Values.off | default true }}", v.clone()), "true");
        assert_eq!(run("{{ .Values.missing.deep }}", v.clone()), "");
        assert_eq!(
            run("m:{{ .Values.map | toYaml | nindent 2 }}", v.clone()),
            "m:\n  a:\n    k: v\n  z: 1"
        );
        assert_eq!(
            run("{{ .Values.map | toJson }}", v.clone()),
            r#"{"a":{"k":"v"},"z":1}"#
        );
        assert_eq!(
            run("{{ range .Values.list }}[{{ . }}]{{ end }}", v.clone()),
            "[a][b]"
        );
        assert_eq!(
            run(
                "{{ if not .Values.off }}on{{ else }}off{{ end }}",
                v.clone()
            ),
            "on"
        );
        assert_eq!(
            run("{{ with .Values.map.a }}{{ .k }}{{ end }}", v.clone()),
            "v"
        );
        assert_eq!(
            run(
                "{{ define \"x\" }}<{{ .Release.Name }}>{{ end }}{{ include \"x\" . }}",
                v.clone()
            ),
            "<r>"
        );
        assert_eq!(
            run("{{ printf \"%s-%d\" .Release.Name .Values.n }}", v.clone()),
            "r-3"
        );
        assert_eq!(run("{{ \"ab\" | b64enc }}", v.clone()), "YWI=");
        assert_eq!(run("{{ index .Values.map \"z\" }}", v.clone()), "1");
        assert_eq!(run("{{ eq .Values.name \"gpu\" }}", v), "true");
    }

    #[test]
    fn unknown_functions_fail() {
        let nodes = parse::parse("{{ .Values | tpl }}", "t").unwrap();
        let root = json!({});
        let r = eval::Renderer {
            defines: &BTreeMap::new(),
            root: &root,
            file: "t",
        };
        let mut out = String::new();
        assert!(r.nodes(&nodes, &root, &mut out).is_err());
    }

    #[test]
    fn overrides_merge_deeply() {
        let mut base = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut base, &json!({"a": {"c": 3}, "l": [9]}));
        assert_eq!(base, json!({"a": {"b": 1, "c": 3}, "l": [9]}));
    }
}
