//! docs/threat-model.md names, adversary by adversary, the tests that show each claim:
//! every row of its adversary table names at least one, and every test it names exists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_claim_in_the_threat_model_names_a_test_that_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/threat-model.md")).unwrap();
    let table: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| adversary |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table.len() >= 10, "the adversary table was not found");
    let mut problems = Vec::new();
    for row in &table {
        let refs: Vec<&str> = row.split('`').filter(|s| s.contains(".rs::") && !s.contains(' ')).collect();
        if refs.is_empty() {
            problems.push(format!("no test named: {}", &row[..row.len().min(80)]));
        }
        for r in refs {
            let (file, name) = r.split_once("::").unwrap();
            let name = name.rsplit("::").next().unwrap();
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            if !text.contains(&format!("fn {name}(")) {
                problems.push(format!("{r} does not exist"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
