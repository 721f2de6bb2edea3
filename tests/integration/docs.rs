//! The README's reference tables agree with the definitions they describe: the error table
//! with conveyor.error_codes (sql/functions/errors.sql), the option table with the option
//! registry (src/config.rs, shown by conveyor.options).

use crate::common::{connect, repo};
use std::collections::{BTreeMap, BTreeSet};

/// The rows of the first Markdown table after `heading`, as cells without backticks.
fn table_after(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"));
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().replace('`', "")).collect())
        .collect()
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

#[test]
fn readme_error_table_lists_exactly_the_error_codes() {
    let mut client = connect();
    let defined: BTreeSet<String> =
        client.query("select sqlstate from conveyor.error_codes", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let documented: BTreeSet<String> =
        table_after(&readme(), "### Errors").into_iter().map(|row| row[0].clone()).collect();
    assert_eq!(documented, defined, "README's error table vs conveyor.error_codes");
}

#[test]
fn readme_option_table_names_every_task_and_service_option_with_its_default() {
    let mut client = connect();
    let registry: BTreeMap<String, Option<String>> = client
        .query("select name, \"default\" from conveyor.options where kinds && array['task', 'service']", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut documented = BTreeMap::new();
    for row in table_after(&readme(), "### Task options") {
        // a row may document several options ("log_max_size, log_on_full" | "1MB, truncate");
        // a services row is prefixed with "services:"
        let names: Vec<String> =
            row[0].trim_start_matches("services:").split(',').map(|n| n.trim().to_string()).collect();
        let defaults: Vec<String> = row[1].split(", ").map(|d| d.trim().to_string()).collect();
        for (i, name) in names.iter().enumerate() {
            let default = if names.len() == defaults.len() { defaults[i].clone() } else { row[1].clone() };
            documented.insert(name.clone(), default);
        }
    }
    let undocumented: Vec<_> = registry
        .keys()
        .filter(|n| !documented.contains_key(*n) && !["delays", "retry_attempts"].contains(&n.as_str()))
        .collect();
    assert!(undocumented.is_empty(), "options missing from the README's table: {undocumented:?}");
    for (name, default) in &documented {
        let Some(defined) = registry.get(name) else {
            panic!("the README documents an option that does not exist: {name}");
        };
        let expected = defined.clone().unwrap_or_else(|| "none".into());
        assert!(
            default == &expected || (name == "retry_attempts" || name == "delays"),
            "README says option {name} defaults to {default:?}, the registry says {expected:?}"
        );
    }
}
