//! The Alibaba GPU-sharing trace (openb) CSV files: nodes and pods.
//! Columns are found by header name (the multi-GPU files have no `gpu_spec`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("{file}: no header line")]
    Empty { file: String },
    #[error("{file}: no column {column:?} in the header")]
    MissingColumn { file: String, column: &'static str },
    #[error("{file} line {line}: {column} = {value:?} is not a number")]
    Number {
        file: String,
        line: usize,
        column: &'static str,
        value: String,
    },
    #[error("{file} line {line}: {found} fields, the header has {expected}")]
    Fields {
        file: String,
        line: usize,
        found: usize,
        expected: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub num_gpu: u32,
    /// Thousandths of each GPU.
    pub gpu_milli: u32,
    /// Accepted GPU models; empty = any.
    pub gpu_spec: Vec<String>,
}

impl PodRow {
    /// GPUs requested, in whole-GPU units.
    pub fn gpu_request(&self) -> f64 {
        f64::from(self.num_gpu) * f64::from(self.gpu_milli) / 1000.0
    }
}

struct Table<'a> {
    file: &'a str,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

fn table<'a>(file: &'a str, text: &'a str) -> Result<Table<'a>, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| TraceError::Empty { file: file.into() })?;
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut rows = Vec::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(TraceError::Fields {
                file: file.into(),
                line: i + 1,
                found: fields.len(),
                expected: header.len(),
            });
        }
        rows.push((i + 1, fields));
    }
    Ok(Table { file, header, rows })
}

impl Table<'_> {
    fn column(&self, name: &'static str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| TraceError::MissingColumn {
                file: self.file.into(),
                column: name,
            })
    }

    fn number<T: std::str::FromStr>(
        &self,
        line: usize,
        fields: &[&str],
        column: &'static str,
        at: usize,
    ) -> Result<T, TraceError> {
        fields[at].parse().map_err(|_| TraceError::Number {
            file: self.file.into(),
            line,
            column,
            value: fields[at].into(),
        })
    }
}

pub fn read_nodes(file: &str, text: &str) -> Result<Vec<NodeRow>, TraceError> {
    let t = table(file, text)?;
    let (sn, cpu, mem, gpu, model) = (
        t.column("sn")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("gpu")?,
        t.column("model")?,
    );
    t.rows
        .iter()
        .map(|(line, f)| {
            Ok(NodeRow {
                name: f[sn].into(),
                cpu_milli: t.number(*line, f, "cpu_milli", cpu)?,
                memory_mib: t.number(*line, f, "memory_mib", mem)?,
                gpus: t.number(*line, f, "gpu", gpu)?,
                model: f[model].into(),
            })
        })
        .collect()
}

pub fn read_pods(file: &str, text: &str) -> Result<Vec<PodRow>, TraceError> {
    let t = table(file, text)?;
    let (name, cpu, mem, num, milli) = (
        t.column("name")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("num_gpu")?,
        t.column("gpu_milli")?,
    );
    let spec = t.column("gpu_spec").ok();
    t.rows
        .iter()
        .map(|(line, f)| {
            Ok(PodRow {
                name: f[name].into(),
                cpu_milli: t.number(*line, f, "cpu_milli", cpu)?,
                memory_mib: t.number(*line, f, "memory_mib", mem)?,
                num_gpu: t.number(*line, f, "num_gpu", num)?,
                gpu_milli: t.number(*line, f, "gpu_milli", milli)?,
                gpu_spec: spec
                    .map(|s| {
                        f[s].split('|')
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_layouts_and_names_bad_fields() {
        let nodes = read_nodes(
            "n.csv",
            "sn,cpu_milli,memory_mib,gpu,model\nopenb-node-0000,64000,262144,2,P100\n",
        )
        .unwrap();
        assert_eq!(nodes[0].gpus, 2);
        assert_eq!(nodes[0].model, "P100");
        let pods = read_pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n\
             a,1000,2048,1,460,V100M16|V100M32,LS\nb,1000,2048,0,0,,BE\n",
        )
        .unwrap();
        assert_eq!(pods[0].gpu_spec, vec!["V100M16", "V100M32"]);
        assert!(pods[1].gpu_spec.is_empty());
        assert!((pods[0].gpu_request() - 0.46).abs() < 1e-9);
        let no_spec = read_pods(
            "m.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nc,1,1,8,1000\n",
        )
        .unwrap();
        assert_eq!(no_spec[0].num_gpu, 8);
        for (text, needle) in [
            ("", "no header"),
            ("name,cpu_milli\n", "no column \"memory_mib\""),
            (
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nc,x,1,1,1\n",
                "line 2: cpu_milli",
            ),
            (
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nc,1,1\n",
                "3 fields",
            ),
        ] {
            let err = read_pods("p.csv", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }
}
