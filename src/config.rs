//! Validation of task, service, queue and default options.
//!
//! `define_task`, `set_queue`, `set_defaults` and `apply_config` (sql/config.sql) hand each
//! entry's options here as JSON. [`check`] returns either the normalized options, keyed by the
//! column names of the tables (durations as ISO 8601 text, which PostgreSQL's interval input
//! reads exactly), or every problem found, each naming the entry and the option. Nothing is
//! stored unless every entry is clean.

use crate::{cron, duration};
use pgrx::prelude::*;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Task,
    Service,
    Queue,
    Defaults,
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "task" => Some(Kind::Task),
            "service" => Some(Kind::Service),
            "queue" => Some(Kind::Queue),
            "defaults" => Some(Kind::Defaults),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Service => "service",
            Kind::Queue => "queue",
            Kind::Defaults => "defaults",
        }
    }

    /// Options this kind accepts, in the order the error message lists them.
    fn accepts(self) -> &'static [&'static str] {
        match self {
            Kind::Task => &[
                "queue", "priority", "enabled", "max_attempts", "retry_attempts", "backoff", "delays",
                "delay", "max_delay", "jitter", "timeout", "lease", "log_max_size", "log_on_full",
                "schedule", "timezone", "on_overlap", "catch_up", "parallelism", "payload",
            ],
            Kind::Service => &[
                "queue", "priority", "enabled", "replicas", "restart_delay", "restart_backoff",
                "restart_max_delay", "lease", "log_max_size", "log_on_full", "payload",
            ],
            Kind::Queue => &["concurrency", "paused", "notify", "delivery_outbox"],
            Kind::Defaults => &[
                "queue", "priority", "max_attempts", "retry_attempts", "backoff", "delays", "delay",
                "max_delay", "jitter", "timeout", "lease", "max_lease", "log_max_size", "log_on_full",
                "retention", "restart_delay", "restart_backoff", "restart_max_delay",
            ],
        }
    }
}

const RETRY_OPTIONS: &[&str] = &["max_attempts", "retry_attempts", "backoff", "delays", "delay", "max_delay", "jitter"];
const RESTART_OPTIONS: &[&str] = &["replicas", "restart_delay", "restart_backoff", "restart_max_delay"];

/// Names: tasks may use dots, colons, dashes and slashes (`emails.send`); queue names also
/// name a NOTIFY channel (`conveyor.<queue>`, at most 63 bytes), so they are shorter.
pub fn check_name(kind: Kind, name: &str) -> Result<(), String> {
    let (max, extra): (usize, &str) = match kind {
        Kind::Queue => (54, "_.:-"),
        _ => (128, "_.:-/"),
    };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {} name \"{name}\": use 1 to {max} letters, digits or {extra}, starting with a letter, digit or _",
            if kind == Kind::Queue { "queue" } else { "task" }
        ))
    }
}

struct Checker<'a> {
    kind: Kind,
    entry: &'a str,
    options: &'a Map<String, Value>,
    out: Map<String, Value>,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    fn problem(&mut self, option: &str, msg: impl std::fmt::Display) {
        let entry = match self.kind {
            Kind::Defaults => "defaults".to_string(),
            kind => format!("{} \"{}\"", kind.label(), self.entry),
        };
        self.problems.push(format!("{entry}: option \"{option}\": {msg}"));
    }

    fn get(&self, option: &str) -> Option<&'a Value> {
        self.options.get(option).filter(|v| !v.is_null())
    }

    fn duration(&mut self, option: &str, column: &str, positive: bool) -> Option<i64> {
        let value = self.get(option)?;
        let micros = match value {
            Value::String(s) => duration::parse(s).map_err(|e| e.to_string()),
            // a bare number is ambiguous (seconds? milliseconds?): ask for a unit
            other => Err(format!("expected a duration string such as \"30s\", got {other}")),
        };
        match micros {
            Ok(us) if positive && us == 0 => {
                self.problem(option, "must be greater than 0s");
                None
            }
            Ok(us) => {
                self.out.insert(column.into(), json!(duration::to_iso8601(us)));
                Some(us)
            }
            Err(e) => {
                self.problem(option, e);
                None
            }
        }
    }

    fn int(&mut self, option: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.get(option)?;
        match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => {
                self.out.insert(option.into(), json!(n));
                Some(n)
            }
            _ => {
                self.problem(option, format!("expected an integer from {min} to {max}, got {value}"));
                None
            }
        }
    }

    fn boolean(&mut self, option: &str) {
        if let Some(value) = self.get(option) {
            match value.as_bool() {
                Some(b) => {
                    self.out.insert(option.into(), json!(b));
                }
                None => self.problem(option, format!("expected true or false, got {value}")),
            }
        }
    }

    fn choice(&mut self, option: &str, accepted: &[&str]) -> Option<&'a str> {
        let value = self.get(option)?;
        match value.as_str() {
            Some(s) if accepted.contains(&s) => {
                self.out.insert(option.into(), json!(s));
                Some(s)
            }
            _ => {
                self.problem(option, format!("expected one of {}, got {value}", accepted.join(", ")));
                None
            }
        }
    }

    fn size(&mut self, option: &str) {
        let Some(value) = self.get(option) else { return };
        let bytes = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => parse_size(s),
            _ => None,
        };
        match bytes {
            Some(b) if (0..=1 << 30).contains(&b) => {
                self.out.insert(option.into(), json!(b));
            }
            _ => self.problem(option, format!("expected a size in bytes (e.g. 65536, \"64kB\", \"1MB\"; at most 1GB), got {value}")),
        }
    }

    fn queue(&mut self) {
        if let Some(value) = self.get("queue") {
            match value.as_str().map(|q| check_name(Kind::Queue, q).map(|_| q)) {
                Some(Ok(q)) => {
                    self.out.insert("queue".into(), json!(q));
                }
                Some(Err(e)) => self.problem("queue", e),
                None => self.problem("queue", format!("expected a queue name, got {value}")),
            }
        }
    }

    /// max_attempts / retry_attempts, backoff (+ delays), delay, max_delay, jitter.
    fn retry_policy(&mut self) {
        let max = self.int("max_attempts", 1, 1000);
        if let Some(r) = self.get("retry_attempts") {
            if max.is_some() || self.get("max_attempts").is_some() {
                self.problem("retry_attempts", "give max_attempts or retry_attempts, not both (retry_attempts = R means max_attempts = R + 1)");
            } else {
                match r.as_i64() {
                    Some(r) if (0..1000).contains(&r) => {
                        self.out.insert("max_attempts".into(), json!(r + 1));
                    }
                    _ => self.problem("retry_attempts", format!("expected an integer from 0 to 999, got {r}")),
                }
            }
        }
        self.backoff();
        let delay = self.duration("delay", "delay", false);
        let max_delay = self.duration("max_delay", "max_delay", false);
        if let (Some(d), Some(m)) = (delay, max_delay) {
            if m < d {
                self.problem(
                    "max_delay",
                    format!("must be at least delay ({} < {})", duration::format(m), duration::format(d)),
                );
            }
        }
        self.choice("jitter", &["none", "full", "equal"]);
    }

    /// `backoff` is a curve name, or a list of delays (an array, or text separated by commas),
    /// which means a custom curve; `backoff: "custom"` takes its list from `delays`.
    fn backoff(&mut self) {
        let backoff = self.get("backoff");
        let delays = self.get("delays");
        let list_value = match (backoff, delays) {
            (Some(Value::String(s)), None) if ["constant", "linear", "exponential"].contains(&s.as_str()) => {
                self.out.insert("backoff".into(), json!(s));
                return;
            }
            (Some(Value::String(s)), Some(list)) if s == "custom" => list,
            (Some(Value::String(s)), None) if s == "custom" => {
                self.problem("backoff", "custom backoff needs its list of delays, e.g. backoff: \"30s, 1m16s, 2m32s\"");
                return;
            }
            (Some(v @ Value::Array(_)), None) => v,
            (Some(Value::String(s)), None) if s.contains(',') || duration::parse(s).is_ok() => backoff.unwrap(),
            (None, Some(list)) => list,
            (None, None) => return,
            (Some(v), _) => {
                self.problem(
                    "backoff",
                    format!("expected constant, linear, exponential, or a list of delays such as \"30s, 1m16s\", got {v}"),
                );
                return;
            }
        };
        let items: Vec<Value> = match list_value {
            Value::Array(items) => items.clone(),
            Value::String(s) => s.split(',').map(|p| json!(p.trim())).collect(),
            other => {
                self.problem("delays", format!("expected a list of durations, got {other}"));
                return;
            }
        };
        let mut out = Vec::new();
        for item in &items {
            match item.as_str().map(duration::parse) {
                Some(Ok(us)) => out.push(json!(duration::to_iso8601(us))),
                Some(Err(e)) => self.problem("backoff", e),
                None => self.problem("backoff", format!("expected a duration string, got {item}")),
            }
        }
        if items.is_empty() {
            self.problem("backoff", "the list of delays is empty");
        }
        self.out.insert("backoff".into(), json!("custom"));
        self.out.insert("backoff_custom".into(), Value::Array(out));
    }

    fn restart_policy(&mut self) {
        self.duration("restart_delay", "restart_delay", false);
        self.choice("restart_backoff", &["constant", "linear", "exponential"]);
        self.duration("restart_max_delay", "restart_max_delay", false);
    }

    fn schedule(&mut self) {
        let tz = match self.get("timezone") {
            Some(Value::String(tz)) => Some(tz.as_str()),
            Some(other) => {
                self.problem("timezone", format!("expected a time zone name such as \"Europe/Paris\", got {other}"));
                return;
            }
            None => None,
        };
        match self.get("schedule") {
            Some(Value::String(expr)) => match cron::parse(expr, tz) {
                Ok(_) => {
                    self.out.insert("schedule".into(), json!(expr));
                    if let Some(tz) = tz {
                        self.out.insert("timezone".into(), json!(tz));
                    }
                }
                Err(e) => self.problem("schedule", e),
            },
            Some(other) => self.problem("schedule", format!("expected a cron expression such as \"*/5 * * * *\", got {other}")),
            None => {
                if tz.is_some() {
                    self.problem("timezone", "a time zone needs a schedule");
                }
                for option in ["on_overlap", "catch_up"] {
                    if self.get(option).is_some() {
                        self.problem(option, "only applies to a task with a schedule");
                    }
                }
            }
        }
        self.choice("on_overlap", &["allow", "skip", "terminate"]);
        self.boolean("catch_up");
    }

    fn payload(&mut self) {
        if let Some(value) = self.get("payload") {
            if value.is_object() {
                self.out.insert("payload".into(), value.clone());
            } else {
                self.problem("payload", format!("expected a JSON object, got {value}"));
            }
        }
    }
}

fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    let per = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" => 1024,
        "MB" | "M" => 1024 * 1024,
        "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Validate one entry; `Ok` holds the normalized options keyed by column name.
pub fn check(kind: Kind, name: &str, options: &Value) -> Result<Map<String, Value>, Vec<String>> {
    let empty = Map::new();
    let options = match options {
        Value::Object(map) => map,
        Value::Null => &empty,
        other => {
            return Err(vec![format!("{} \"{name}\": expected an object of options, got {other}", kind.label())]);
        }
    };
    let mut c = Checker { kind, entry: name, options, out: Map::new(), problems: Vec::new() };
    if kind != Kind::Defaults {
        let as_kind = if kind == Kind::Queue { Kind::Queue } else { Kind::Task };
        if let Err(e) = check_name(as_kind, name) {
            c.problems.push(e);
        }
    }
    let accepted = kind.accepts();
    for key in options.keys() {
        if accepted.contains(&key.as_str()) {
            continue;
        }
        let why = if kind == Kind::Service && RETRY_OPTIONS.contains(&key.as_str()) {
            "services restart instead of retrying: use restart_delay, restart_backoff, restart_max_delay".to_string()
        } else if kind == Kind::Task && RESTART_OPTIONS.contains(&key.as_str()) {
            "restart options are for services (define it with kind => 'service'); tasks retry with max_attempts, backoff, delay".to_string()
        } else {
            format!("unknown option; a {} accepts {}", kind.label(), accepted.join(", "))
        };
        c.problem(key, why);
    }
    match kind {
        Kind::Task => {
            c.queue();
            c.int("priority", 0, 9);
            c.boolean("enabled");
            c.retry_policy();
            c.duration("timeout", "timeout", true);
            c.duration("lease", "lease", true);
            c.size("log_max_size");
            c.choice("log_on_full", &["truncate", "kill_task"]);
            c.schedule();
            c.int("parallelism", 1, 100_000);
            c.payload();
        }
        Kind::Service => {
            c.queue();
            c.int("priority", 0, 9);
            c.boolean("enabled");
            c.int("replicas", 1, 1000);
            c.restart_policy();
            c.duration("lease", "lease", true);
            c.size("log_max_size");
            c.choice("log_on_full", &["truncate", "kill_task"]);
            c.payload();
        }
        Kind::Queue => {
            c.int("concurrency", 1, 1_000_000);
            c.boolean("paused");
            c.boolean("notify");
            c.boolean("delivery_outbox");
        }
        Kind::Defaults => {
            c.queue();
            c.int("priority", 0, 9);
            c.retry_policy();
            c.duration("timeout", "timeout", true);
            c.duration("lease", "lease", true);
            c.duration("max_lease", "max_lease", true);
            c.size("log_max_size");
            c.choice("log_on_full", &["truncate", "kill_task"]);
            c.duration("retention", "retention", false);
            c.restart_policy();
        }
    }
    if c.problems.is_empty() {
        Ok(c.out)
    } else {
        Err(c.problems)
    }
}

/// SQL: `{"options": {...normalized...}}` or `{"problems": ["...", ...]}`.
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _check_options(kind: &str, name: &str, options: Option<pgrx::JsonB>) -> pgrx::JsonB {
    let kind = Kind::from_name(kind).unwrap_or_else(|| panic!("unknown option kind {kind:?}"));
    let value = options.map(|j| j.0).unwrap_or(Value::Null);
    pgrx::JsonB(match check(kind, name, &value) {
        Ok(options) => json!({ "options": options }),
        Err(problems) => json!({ "problems": problems }),
    })
}

/// SQL: check a name alone (used by enqueue's queue override and set_queue).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _check_name(kind: &str, name: &str) -> Option<String> {
    let kind = Kind::from_name(kind).unwrap_or_else(|| panic!("unknown name kind {kind:?}"));
    check_name(kind, name).err()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn ok(kind: Kind, options: Value) -> Map<String, Value> {
        check(kind, "emails.send", &options).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn problems(kind: Kind, options: Value) -> Vec<String> {
        check(kind, "emails.send", &options).expect_err("should be refused")
    }

    #[test]
    fn a_full_task_normalizes() {
        let out = ok(
            Kind::Task,
            json!({"queue": "emails", "max_attempts": 5, "backoff": "exponential", "delay": "10s",
                   "max_delay": "5m", "jitter": "full", "timeout": "1m30s", "priority": 3,
                   "schedule": "*/5 * * * *", "timezone": "Europe/Paris", "on_overlap": "skip"}),
        );
        assert_eq!(out["delay"], json!("PT10S"));
        assert_eq!(out["max_delay"], json!("PT300S"));
        assert_eq!(out["timeout"], json!("PT90S"));
        assert_eq!(out["backoff"], json!("exponential"));
        assert_eq!(out["on_overlap"], json!("skip"));
    }

    #[test]
    fn retry_attempts_is_an_alias_and_both_are_refused() {
        assert_eq!(ok(Kind::Task, json!({"retry_attempts": 3}))["max_attempts"], json!(4));
        let p = problems(Kind::Task, json!({"retry_attempts": 3, "max_attempts": 4}));
        assert!(p[0].contains("not both"), "{p:?}");
    }

    #[test]
    fn custom_backoff_from_a_list_or_text() {
        let from_text = ok(Kind::Task, json!({"backoff": "30s, 1m16s, 2m32s, 5m8s"}));
        assert_eq!(from_text["backoff"], json!("custom"));
        assert_eq!(from_text["backoff_custom"], json!(["PT30S", "PT76S", "PT152S", "PT308S"]));
        let from_list = ok(Kind::Task, json!({"backoff": ["30s", "1m16s"]}));
        assert_eq!(from_list["backoff_custom"], json!(["PT30S", "PT76S"]));
        let named = ok(Kind::Task, json!({"backoff": "custom", "delays": ["1s"]}));
        assert_eq!(named["backoff_custom"], json!(["PT1S"]));
        assert!(problems(Kind::Task, json!({"backoff": "custom"}))[0].contains("needs its list"));
        assert!(problems(Kind::Task, json!({"backoff": "fibonacci"}))[0].contains("expected constant"));
        assert!(problems(Kind::Task, json!({"backoff": "30s, soon"}))[0].contains("\"soon\""));
    }

    #[test]
    fn max_delay_below_delay_is_refused() {
        let p = problems(Kind::Task, json!({"delay": "10m", "max_delay": "5m"}));
        assert_eq!(p, vec!["task \"emails.send\": option \"max_delay\": must be at least delay (5m < 10m)"]);
    }

    #[test]
    fn every_problem_is_listed_with_entry_and_option() {
        let p = problems(
            Kind::Task,
            json!({"delay": "5 minits", "jitter": "some", "priority": 12, "max_attemps": 3, "schedule": "* * *"}),
        );
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|m| m.contains("option \"delay\": invalid duration \"5 minits\"")));
        assert!(p.iter().any(|m| m.contains("option \"max_attemps\": unknown option")));
        assert!(p.iter().any(|m| m.contains("option \"priority\": expected an integer from 0 to 9, got 12")));
        assert!(p.iter().any(|m| m.contains("option \"schedule\": invalid schedule")));
        assert!(p.iter().all(|m| m.starts_with("task \"emails.send\"")));
    }

    #[test]
    fn services_refuse_retry_options_and_tasks_refuse_restart_options() {
        let p = problems(Kind::Service, json!({"max_attempts": 3, "replicas": 2}));
        assert!(p[0].contains("services restart instead of retrying"), "{p:?}");
        let p = problems(Kind::Task, json!({"restart_delay": "1s"}));
        assert!(p[0].contains("restart options are for services"), "{p:?}");
        assert_eq!(ok(Kind::Service, json!({"replicas": 2, "restart_delay": "2s"}))["replicas"], json!(2));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(Kind::Task, "emails.send").is_ok());
        assert!(check_name(Kind::Task, "x'; drop table conveyor.runs; --").is_err());
        assert!(check_name(Kind::Queue, "").is_err());
        assert!(check_name(Kind::Queue, &"q".repeat(55)).is_err());
        assert!(check(Kind::Task, "bad name", &json!({})).is_err());
    }

    #[test]
    fn queues_and_defaults() {
        assert_eq!(ok(Kind::Queue, json!({"concurrency": 5, "paused": false}))["concurrency"], json!(5));
        assert!(problems(Kind::Queue, json!({"concurrency": 0}))[0].contains("from 1"));
        let d = check(Kind::Defaults, "", &json!({"retention": "3d", "lease": "1m", "log_max_size": "64kB"})).unwrap();
        assert_eq!(d["retention"], json!("PT259200S"));
        assert_eq!(d["log_max_size"], json!(65536));
    }

    #[test]
    fn timeouts_must_be_positive_and_bare_numbers_need_a_unit() {
        assert!(problems(Kind::Task, json!({"timeout": "0s"}))[0].contains("greater than 0s"));
        assert!(problems(Kind::Task, json!({"delay": 30}))[0].contains("duration string"));
    }
}
