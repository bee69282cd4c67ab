//! GPU pair link scores (`hami.io/node-nvidia-score`), written by the node
//! agent for topology-aware placement.
//!
//! HAMi's device plugin publishes a JSON list, one entry per GPU:
//! `[{"uuid":"GPU-a","score":{"GPU-b":200,"GPU-c":10}}]`. A higher score is a
//! faster path: 10 for a link across CPUs up to 60 on one board, 100 per
//! NVLink lane. The matrix should be symmetric; where the two directions
//! disagree the lower one is kept, since a transfer is as fast as its slower
//! direction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkScoresError {
    #[error("link scores annotation is not a JSON list of {{uuid, score}} objects: {0}")]
    Json(String),
    #[error("link scores annotation: entry {entry} has an empty uuid")]
    EmptyUuid { entry: usize },
    #[error("link scores annotation: GPU {uuid} is listed twice")]
    Duplicate { uuid: String },
    #[error("link scores annotation: GPU {uuid} scores its link to itself")]
    SelfLink { uuid: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    uuid: String,
    #[serde(default)]
    score: BTreeMap<String, i64>,
}

/// Pair scores keyed by UUID; a pair not listed scores 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkScores {
    pairs: BTreeMap<(String, String), u32>,
    gpus: Vec<String>,
}

impl LinkScores {
    pub fn decode(value: &str) -> Result<Self, LinkScoresError> {
        let entries: Vec<Entry> =
            serde_json::from_str(value).map_err(|e| LinkScoresError::Json(e.to_string()))?;
        let mut scores = Self::default();
        for (i, e) in entries.iter().enumerate() {
            if e.uuid.is_empty() {
                return Err(LinkScoresError::EmptyUuid { entry: i });
            }
            if scores.gpus.contains(&e.uuid) {
                return Err(LinkScoresError::Duplicate {
                    uuid: e.uuid.clone(),
                });
            }
            scores.gpus.push(e.uuid.clone());
        }
        for e in &entries {
            for (other, score) in &e.score {
                if *other == e.uuid {
                    return Err(LinkScoresError::SelfLink {
                        uuid: e.uuid.clone(),
                    });
                }
                // Negative or absurd values are clamped rather than refused:
                // a bad score only makes placement less clever, never wrong.
                let score = u32::try_from((*score).max(0)).unwrap_or(u32::MAX);
                let key = Self::key(&e.uuid, other);
                let kept = scores.pairs.entry(key).or_insert(score);
                *kept = (*kept).min(score);
            }
        }
        Ok(scores)
    }

    /// The annotation value, in the node agent's listing order.
    pub fn encode(&self) -> String {
        let entries: Vec<Entry> = self
            .gpus
            .iter()
            .map(|g| Entry {
                uuid: g.clone(),
                score: self
                    .gpus
                    .iter()
                    .filter(|o| *o != g)
                    .map(|o| (o.clone(), i64::from(self.score(g, o))))
                    .collect(),
            })
            .collect();
        serde_json::to_string(&entries).expect("link scores serialise")
    }

    /// Builds the scores from `(a, b, score)` triples, GPUs in first-seen order.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str, u32)>) -> Self {
        let mut scores = Self::default();
        for (a, b, s) in pairs {
            for g in [a, b] {
                if !scores.gpus.iter().any(|x| x == g) {
                    scores.gpus.push(g.to_owned());
                }
            }
            if a != b {
                scores.pairs.insert(Self::key(a, b), s);
            }
        }
        scores
    }

    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        }
    }

    pub fn score(&self, a: &str, b: &str) -> u32 {
        if a == b {
            return 0;
        }
        let key = if a <= b { (a, b) } else { (b, a) };
        // BTreeMap<(String, String)> cannot be queried by (&str, &str)
        // without allocating; the matrix is tiny, so a scan is fine.
        self.pairs
            .iter()
            .find(|((x, y), _)| x == key.0 && y == key.1)
            .map_or(0, |(_, s)| *s)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EIGHT_A100: &str = r#"[{"uuid":"GPU-0","score":{"GPU-1":1200,"GPU-2":10}},{"uuid":"GPU-1","score":{"GPU-0":1200,"GPU-2":20}},{"uuid":"GPU-2","score":{"GPU-0":10,"GPU-1":20}}]"#;

    #[test]
    fn decodes_hami_node_agent_output() {
        let s = LinkScores::decode(EIGHT_A100).unwrap();
        assert_eq!(s.score("GPU-0", "GPU-1"), 1200);
        assert_eq!(s.score("GPU-1", "GPU-0"), 1200);
        assert_eq!(s.score("GPU-2", "GPU-1"), 20);
        assert_eq!(s.score("GPU-0", "GPU-0"), 0);
        assert_eq!(s.score("GPU-0", "GPU-9"), 0);
        assert_eq!(LinkScores::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn asymmetric_pairs_keep_the_slower_direction() {
        let s = LinkScores::decode(
            r#"[{"uuid":"a","score":{"b":300}},{"uuid":"b","score":{"a":100}}]"#,
        )
        .unwrap();
        assert_eq!(s.score("a", "b"), 100);
    }

    #[test]
    fn malformed_values_name_the_problem() {
        let cases = [
            ("{}", "JSON list"),
            ("[{\"score\":{}}]", "JSON list"),
            (
                "[{\"uuid\":\"\",\"score\":{}}]",
                "entry 0 has an empty uuid",
            ),
            (
                "[{\"uuid\":\"a\"},{\"uuid\":\"a\"}]",
                "GPU a is listed twice",
            ),
            ("[{\"uuid\":\"a\",\"score\":{\"a\":5}}]", "to itself"),
            ("[{\"uuid\":\"a\",\"score\":{\"b\":\"fast\"}}]", "JSON list"),
        ];
        for (value, want) in cases {
            let e = LinkScores::decode(value).unwrap_err().to_string();
            assert!(e.contains(want), "{value}: {e}");
        }
        let negative = LinkScores::decode(r#"[{"uuid":"a","score":{"b":-4}}]"#).unwrap();
        assert_eq!(negative.score("a", "b"), 0);
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = LinkScores::decode(&s);
        }

        #[test]
        fn round_trips(scores in proptest::collection::vec((0u8..6, 0u8..6, 0u32..2000), 0..20)) {
            let names: Vec<(String, String, u32)> = scores
                .iter()
                .map(|(a, b, s)| (format!("GPU-{a}"), format!("GPU-{b}"), *s))
                .collect();
            let built = LinkScores::from_pairs(names.iter().map(|(a, b, s)| (a.as_str(), b.as_str(), *s)));
            let back = LinkScores::decode(&built.encode()).unwrap();
            for (a, b, _) in &names {
                prop_assert_eq!(back.score(a, b), built.score(a, b));
            }
        }
    }
}
